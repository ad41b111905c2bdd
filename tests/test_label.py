"""Labelling on Ray: exactly one row per (image, window, estimator), resume, incremental, failures."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pyarrow.dataset as ds
import pytest
from click.testing import CliRunner

from goodregions.cli import main
from kernels_gpu import estimators
from pipeline.labels import done_images, label_summaries, plan_labels, read_labels
from pipeline.ray.cluster import RayOptions
from pipeline.ray.labelling import run_labels
from pipeline.store import Store
from pipeline.synth import SynthConfig, run_synth
from tests.levin import LEVIN_SHARP
from tests.raytools import local_ray

WINDOWS_PER_IMAGE = 4  # 160 px images, 96 px windows at stride 32: 2 x 2


@pytest.fixture(scope="module")
def ray_local():
    ray = local_ray()
    yield ray
    ray.shutdown()


def _config(**kw) -> SynthConfig:
    base = dict(
        sharp=str(LEVIN_SHARP),
        kernels="trajectory",
        num_kernels=2,
        kernel_sizes=(11, 21),
        size=160,
        margin=16,
        fit="resize",
        window=96,
        stride=32,
        seed=3,
    )
    return SynthConfig(**{**base, **kw})


def _label(store, estimator, shard_images=2, **opts):
    plan = plan_labels(store, estimator, shard_images)
    return plan, run_labels(store, estimator, plan, RayOptions(**{"workers": 2, **opts}))


def _files(root: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _keys(table):
    return list(zip(table["image_id"].to_pylist(), table["window_id"].to_pylist(), strict=True))


@pytest.fixture
def store(tmp_path):
    target = Store(str(tmp_path / "store"))
    run_synth(target, _config())  # 4 sharp x 2 kernels = 8 images
    return target


def test_every_window_labelled_exactly_once(ray_local, store, tmp_path):
    l0 = estimators.get("l0grad")
    plan, run = _label(store, l0)
    assert run.failed == {} and run.done_windows == 8 * WINDOWS_PER_IMAGE
    # read with plain pyarrow.dataset, as a user would
    table = ds.dataset(store.path("labels"), format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 8 * WINDOWS_PER_IMAGE
    assert set(table["estimator"].to_pylist()) == {l0.id}
    assert len(set(_keys(table))) == table.num_rows
    sims = table["similarity"].to_numpy()
    assert np.all((sims >= 0) & (sims <= 1 + 1e-6))
    assert np.median(sims) > 0.5  # real estimates, not noise: a delta scores ~0.4-0.5 on these kernels
    assert set(table["device"].to_pylist()) == {"cpu"}
    assert len(set(table["worker"].to_pylist())) == 2  # both workers of the pool took images
    # the kernels are in zarr, one (windows, ks, ks) block per image, each a valid kernel
    images = store.images().to_pylist()
    for row in images:
        ks = row["kernel_size"] + 4
        block = store.array(f"estimates/{l0.id}/160x160_k{ks}")[row["blurred_index"]]
        assert block.shape == (WINDOWS_PER_IMAGE, ks, ks)
        np.testing.assert_allclose(block.sum(axis=(-2, -1)), 1, atol=1e-4)
    # one marker per shard, no temp file left behind
    markers = list(pathlib.Path(store.path("labels", f"estimator={l0.id}", "_done")).glob("*.json"))
    assert len(markers) == len(plan.shards) == 4
    assert not [p for p in pathlib.Path(store.url).rglob(".tmp-*")]


def test_rerun_computes_nothing_and_changes_nothing(ray_local, store):
    l0 = estimators.get("l0grad")
    _label(store, l0)
    before = _files(pathlib.Path(store.url))
    assert plan_labels(store, l0, 2).shards == []
    result = CliRunner().invoke(main, ["label", store.url, "-q"])
    assert result.exit_code == 0 and "nothing to do" in result.output
    assert _files(pathlib.Path(store.url)) == before


def test_new_estimator_and_new_images_compute_only_their_rows(ray_local, store):
    l0 = estimators.get("l0grad")
    _label(store, l0)
    root = pathlib.Path(store.url)
    l0_files = {k: v for k, v in _files(root).items() if l0.id in k}

    variant = estimators.get("l0grad", gamma=30.0)
    assert variant.id != l0.id
    _, run = _label(store, variant)
    assert run.done_windows == 8 * WINDOWS_PER_IMAGE
    assert {k: v for k, v in _files(root).items() if l0.id in k} == l0_files  # untouched

    run_synth(store, _config(num_kernels=3))  # + 4 images (the third kernel with every sharp image)
    plan = plan_labels(store, l0, 2)
    assert sorted(j.image_id for _, s in plan.shards for j in s) == [8, 9, 10, 11]
    _, run = _label(store, l0)
    assert run.done_windows == 4 * WINDOWS_PER_IMAGE
    table = read_labels(store, l0.id)
    assert table.num_rows == 12 * WINDOWS_PER_IMAGE and len(set(_keys(table))) == table.num_rows
    assert {k: v for k, v in _files(root).items() if k in l0_files} == l0_files  # old shards unchanged


def test_failed_image_is_reported_listed_and_retried(ray_local, store):
    l0 = estimators.get("l0grad")
    images = store.images().to_pylist()
    victim = images[5]
    chunk = pathlib.Path(store.url) / victim["blurred_array"] / "c" / str(victim["blurred_index"]) / "0" / "0"
    good = chunk.read_bytes()
    chunk.write_bytes(b"this is not a zstd chunk")
    _, run = _label(store, l0)
    assert list(run.failed) == [victim["image_id"]]
    assert read_labels(store, l0.id).num_rows == 7 * WINDOWS_PER_IMAGE
    summary = label_summaries(store)[0]
    assert list(summary["failed_images"]) == [str(victim["image_id"])]
    status = CliRunner().invoke(main, ["status", store.url])
    assert f"failed image {victim['image_id']}" in status.output

    chunk.write_bytes(good)
    plan, run = _label(store, l0)
    assert [j.image_id for _, s in plan.shards for j in s] == [victim["image_id"]] and run.failed == {}
    table = read_labels(store, l0.id)
    assert table.num_rows == 8 * WINDOWS_PER_IMAGE and len(set(_keys(table))) == table.num_rows
    assert label_summaries(store)[0]["failed_images"] == {}


def test_shard_without_marker_is_adopted_not_recomputed(ray_local, store):
    l0 = estimators.get("l0grad")
    _label(store, l0)
    marker = sorted(pathlib.Path(store.path("labels", f"estimator={l0.id}", "_done")).glob("*.json"))[0]
    marker.unlink()  # as if the driver died between the Parquet rename and the marker
    done, _ = done_images(store, l0.id)
    assert len(done) == 8 and marker.exists()
    assert plan_labels(store, l0, 2).shards == []


def test_label_is_derived_at_read_time(ray_local, store):
    l0 = estimators.get("l0grad")
    _label(store, l0)
    for threshold in (0.5, 0.75):
        table = read_labels(store, l0.id, threshold=threshold)
        assert table["label"].to_pylist() == [s > threshold for s in table["similarity"].to_pylist()]
    result = CliRunner().invoke(main, ["status", store.url, "--json", "--threshold", "0.5"])
    summary = json.loads(result.output)[0]
    assert summary["done"] == summary["total"] == 8 * WINDOWS_PER_IMAGE
    sims = read_labels(store, l0.id)["similarity"].to_numpy()
    assert summary["positive_rate"] == pytest.approx(np.mean(sims > 0.5))


def test_label_cli_and_bad_options(ray_local, store):
    runner = CliRunner()
    result = runner.invoke(main, ["label", store.url, "-q", "--workers", "2", "--param", "iterations=3"])
    assert result.exit_code == 0, result.output
    assert "labelled 32 windows of 8 images" in result.output
    for args, needle in [
        (["--estimator", "nope"], "--estimator"),
        (["--param", "gamma"], "--param"),
        (["--param", "gamma=abc"], "--param"),
        (["--param", "scale_factor=3"], "--param"),
        (["--shard-images", "0"], "--shard-images"),
    ]:
        result = runner.invoke(main, ["label", store.url, "-q", *args])
        assert result.exit_code != 0 and result.output.startswith("Error:") and needle in result.output
    result = runner.invoke(main, ["label", store.url + "-missing", "-q"])
    assert result.exit_code != 0 and "not a goodregions store" in result.output
