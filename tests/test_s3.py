"""The store on object storage: synth, label (with a resume) and train against a real S3 server on loopback.

The server is moto's standalone S3 (``moto_server``), started on 127.0.0.1 by the
test; nothing leaves the machine.  Skipped when moto or s3fs is not installed.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto")

from kernels_gpu import estimators
from pipeline.distributed import RayOptions, run_labels
from pipeline.labels import plan_labels, read_labels
from pipeline.store import Store
from pipeline.synth import SynthConfig, run_synth
from tests.levin import LEVIN_SHARP
from tests.raytools import ROOT, local_ray

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server():
    port = _free_port()
    server = shutil.which("moto_server") or str(pathlib.Path(sys.executable).with_name("moto_server"))
    proc = subprocess.Popen(
        [server, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://127.0.0.1:{port}"
    saved = {
        k: os.environ.get(k)
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")
    }
    os.environ.update(
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem().mkdir("goodregions-test")
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


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
