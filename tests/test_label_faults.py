"""Labelling survives faults: a lost worker node, a SIGKILLed driver.

Both end with exactly images x windows rows for the estimator and no duplicate key.
"""

from __future__ import annotations

import logging
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import pyarrow.dataset as ds
import pytest

from kernels_gpu import estimators
from pipeline.labels import plan_labels, read_labels
from pipeline.ray.cluster import RayOptions
from pipeline.ray.labelling import run_labels
from pipeline.store import Store
from pipeline.synth import SynthConfig, run_synth
from tests.levin import LEVIN_SHARP
from tests.raytools import ROOT

WINDOWS_PER_IMAGE = 9  # 200 px images, 128 px windows at stride 24: 3 x 3


def _store(tmp_path, kernels=4) -> Store:
    store = Store(str(tmp_path / "store"))
    run_synth(
        store,
        SynthConfig(
            sharp=str(LEVIN_SHARP),
            kernels="trajectory",
            num_kernels=kernels,
            kernel_sizes=(11, 25),
            size=200,
            margin=16,
            fit="resize",
            window=128,
            stride=24,
            seed=5,
        ),
    )
    return store


def _assert_complete(store: Store, estimator_id: str, images: int) -> None:
    table = read_labels(store, estimator_id)
    keys = list(zip(table["image_id"].to_pylist(), table["window_id"].to_pylist(), strict=True))
    assert table.num_rows == images * WINDOWS_PER_IMAGE
    assert len(set(keys)) == len(keys)
    # what a plain reader sees is the same: no partial or temporary file is ever part of the dataset
    plain = ds.dataset(store.path("labels"), format="parquet", partitioning="hive").to_table()
    assert plain.num_rows == table.num_rows


@pytest.fixture
def cluster():
    """A head (no CPUs: the driver only) and two worker nodes with one CPU each; the second advertises a GPU."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "include_dashboard": False, "object_store_memory": 256 * 2**20},
    )
    nodes = [c.add_node(num_cpus=1, num_gpus=gpus, object_store_memory=256 * 2**20) for gpus in (0, 1)]
    ray.init(address=c.address, logging_level=logging.WARNING, log_to_driver=False)
    c.wait_for_nodes()
    yield c, nodes
    ray.shutdown()
    c.shutdown()


def test_losing_a_worker_node_mid_run(tmp_path, cluster):
    c, nodes = cluster
    store = _store(tmp_path, kernels=4)  # 16 images
    l0 = estimators.get("l0grad")
    plan = plan_labels(store, l0, 1)
    outcome = {}

    def work():
        outcome["run"] = run_labels(store, l0, plan, RayOptions(workers=2, device="cpu"))

    thread = threading.Thread(target=work)
    thread.start()
    done_dir = pathlib.Path(store.path("labels", f"estimator={l0.id}", "_done"))
    deadline = time.time() + 120
    while time.time() < deadline and len(list(done_dir.glob("*.json"))) < 2:
        time.sleep(0.2)
    assert len(list(done_dir.glob("*.json"))) < 16, "the run finished before the node could be lost"
    c.remove_node(nodes[0])  # its actor dies mid-image; the other node carries on
    thread.join(timeout=600)
    assert not thread.is_alive()
    run = outcome["run"]
    assert run.failed == {} and run.device == "cpu"
    _assert_complete(store, l0.id, 16)
    nodes_seen = set(read_labels(store, l0.id)["node"].to_pylist())
    assert len(nodes_seen) == 2  # both worker nodes did work before one was lost


def test_gpu_workers_are_placed_on_gpu_nodes(cluster):
    """A GPU pool asks Ray for one GPU per worker, so its actors land on the GPU node (a fake one here)."""
    import ray

    from pipeline.ray.cluster import _pool_size
    from pipeline.ray.labelling import LabelWorker

    _, nodes = cluster
    workers, device, request = _pool_size(RayOptions(device="auto"))
    assert (workers, device, request["num_gpus"]) == (1, "gpu", 1.0)
    actor = ray.remote(**request)(LabelWorker).remote("l0grad", {}, "cpu", 1)
    where = ray.get(actor.where.remote())
    assert nodes[1].node_id[:8] in where and nodes[0].node_id[:8] not in where
    ray.kill(actor)
    workers, device, request = _pool_size(RayOptions(device="cpu"))
    assert (workers, device, request) == (2, "cpu", {"num_cpus": 1.0})


def test_driver_killed_mid_run_then_rerun(tmp_path):
    import ray

    ray.shutdown()
    store = _store(tmp_path, kernels=4)  # 16 images
    l0 = estimators.get("l0grad")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}
    cmd = [
        sys.executable,
        "-c",
        "from goodregions.cli import main; main()",
        "label",
        store.url,
        "-q",
        "--shard-images",
        "1",
        "--workers",
        "2",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    done_dir = pathlib.Path(store.path("labels", f"estimator={l0.id}", "_done"))
    deadline = time.time() + 120
    while time.time() < deadline and len(list(done_dir.glob("*.json"))) < 3 and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, proc.stdout.read().decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(2)  # let the orphaned Ray processes notice their driver is gone
    partial = len(list(done_dir.glob("*.json")))
    assert 3 <= partial < 16
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"({partial * WINDOWS_PER_IMAGE} already done)" in rerun.stdout
    _assert_complete(store, l0.id, 16)
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "nothing to do" in again.stdout
