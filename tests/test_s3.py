"""The store on object storage: synth, label (with a resume) and train against a real S3 server on loopback.

The server is moto's standalone S3 (``moto_server``), started on 127.0.0.1 by the
test; nothing leaves the machine.  Skipped when moto or s3fs is not installed.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto")

from kernels_gpu import estimators
from pipeline.labels import plan_labels, read_labels
from pipeline.ray.cluster import RayOptions
from pipeline.ray.labelling import run_labels
from pipeline.store import Store
from pipeline.synth import SynthConfig, run_synth
from tests.levin import LEVIN_SHARP
from tests.raytools import ROOT, local_ray
from tests.s3server import moto_s3

CONFIG = SynthConfig(
    sharp=str(LEVIN_SHARP),
    num_kernels=3,
    kernel_sizes=(7, 13),
    size=96,
    margin=8,
    fit="resize",
    window=64,
    stride=16,
    seed=6,
)  # 12 images of 96 px, 4 windows each


@pytest.fixture(scope="module")
def s3_server():
    with moto_s3("goodregions-test") as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def s3_store(s3_server):
    store = Store("s3://goodregions-test/ds")
    result = run_synth(store, CONFIG)
    assert result.added == 12
    return store


def test_synth_on_s3_is_readable_and_append_only(s3_store):
    assert s3_store.fs.exists("goodregions-test/ds/manifest.json")
    assert s3_store.images().num_rows == 12 and s3_store.windows().num_rows == 12 * 4
    again = run_synth(s3_store, CONFIG)
    assert again.added == 0


def test_label_on_s3_with_resume(s3_store):
    ray = local_ray()  # workers inherit the S3 endpoint from this process's environment
    try:
        l0 = estimators.get("l0grad")
        plan = plan_labels(s3_store, l0, 3)
        first, rest = plan.shards[:2], plan.shards[2:]
        plan.shards = first  # an interrupted run: only two shards got done
        run_labels(s3_store, l0, plan, RayOptions(workers=2))
        resumed = plan_labels(s3_store, l0, 3)
        assert [name for name, _ in resumed.shards] == [name for name, _ in rest]
        run_labels(s3_store, l0, resumed, RayOptions(workers=2))
        table = read_labels(s3_store, l0.id)
        keys = set(zip(table["image_id"].to_pylist(), table["window_id"].to_pylist(), strict=True))
        assert table.num_rows == len(keys) == 12 * 4
        assert plan_labels(s3_store, l0, 3).shards == []
    finally:
        ray.shutdown()


def test_train_streams_from_s3(s3_store, tmp_path):
    l0 = estimators.get("l0grad")
    assert read_labels(s3_store, l0.id).num_rows == 48  # labelled by the test above
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}
    out = tmp_path / "model"
    cmd = [
        sys.executable,
        "-c",
        "from goodregions.cli import main; main()",
        "train",
        s3_store.url,
        "-e",
        l0.id,
        "--threshold",
        "0.6",
        "--out",
        str(out),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--val-fraction",
        "0.25",
    ]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert (out / "model.pt").is_file() and (out / "metrics.csv").read_text().count("\n") == 2
