"""Relabelling a store with a new estimator computes only its own rows and leaves the others untouched."""

from __future__ import annotations

import pathlib

import pytest

from kernels_gpu import estimators
from pipeline.labels import plan_labels, read_labels
from pipeline.ray.cluster import RayOptions
from pipeline.ray.labelling import run_labels
from pipeline.store import Store
from pipeline.synth import SynthConfig, run_synth
from tests.levin import LEVIN_SHARP
from tests.raytools import local_ray


@pytest.fixture(scope="module")
def ray_local():
    ray = local_ray()
    yield ray
    ray.shutdown()


def _files(root: pathlib.Path, part: str) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and part in str(p)}


@pytest.mark.parametrize("new", ["pan-l0", "dark-channel"])
def test_relabel_with_new_estimator_adds_only_its_rows(ray_local, tmp_path, new):
    store = Store(str(tmp_path / "store"))
    run_synth(
        store,
        SynthConfig(
            sharp=str(LEVIN_SHARP),
            num_kernels=2,
            kernel_sizes=(9, 15),
            size=128,
            margin=8,
            fit="resize",
            window=96,
            stride=32,
            seed=4,
        ),
    )  # 8 images x 1 window
    l0 = estimators.get("l0grad")
    run_labels(store, l0, plan_labels(store, l0, 4), RayOptions(workers=2))
    root = pathlib.Path(store.url)
    before = _files(root, l0.id)
    before_rows = read_labels(store, l0.id)

    other = estimators.get(new)
    plan = plan_labels(store, other, 4)
    assert sum(len(s) for _, s in plan.shards) == 8  # every image, for the new estimator only
    run = run_labels(store, other, plan, RayOptions(workers=2))
    assert run.failed == {}

    assert _files(root, l0.id) == before  # not one byte of l0grad's rows or kernels changed
    assert read_labels(store, l0.id).equals(before_rows)
    rows = read_labels(store, other.id)
    keys = set(zip(rows["image_id"].to_pylist(), rows["window_id"].to_pylist(), strict=True))
    assert rows.num_rows == len(keys) == 8 * 1
    assert set(read_labels(store)["estimator"].to_pylist()) == {l0.id, other.id}
    assert plan_labels(store, other, 4).shards == [] and plan_labels(store, l0, 4).shards == []
