"""Inputs of the scaling model for distributed labelling: what the driver and the store pay per image.

Measured on this machine (all on one image of the paper's size, 450x450 with 121
windows of 228 px, kernels estimated at 31 px):

* the worker's store I/O per image: read the blurred chunk, write the 121
  estimated kernels to Zarr (local disk, and S3 through moto on loopback if
  ``--s3`` and moto/s3fs are installed);
* the driver's cost per image: a Ray actor round trip carrying one image's
  result (121 similarities) and the driver-side share of publishing a shard
  (Parquet rows + done marker, 8 images per shard), locally and on S3;

then the model: with G windows/s per GPU worker, N workers ask the driver for
N*G/121 image results per second; the driver's result loop saturates at one
actor call per image, its shard publishing (a thread pool) at PUBLISH_THREADS
shard writes in parallel, and the store sees N*G/121 chunk reads and estimate
writes per second from the workers themselves.

Usage::

    python benchmarks/scaling.py [--s3]
"""

from __future__ import annotations

import argparse
import contextlib
import pathlib
import sys
import tempfile
import time

import numpy as np

from pipeline.labels import write_shard
from pipeline.store import Store
from pipeline.synth import SynthConfig, run_synth

WINDOWS = 121
KS = 31


def _median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def store_costs(store: Store, label: str) -> dict[str, float]:
    run_synth(store, SynthConfig(num_kernels=1, pairs=8, seed=0, workers=1))
    images = store.images().to_pylist()
    blurred = store.array("blurred/450x450")
    store.ensure_array(
        "estimates/bench/450x450_k31", len(images), (WINDOWS, KS, KS), ("blurred_index", "window_id", "ky", "kx")
    )
    estimates = store.array("estimates/bench/450x450_k31", "r+")
    kernels = np.random.default_rng(0).random((WINDOWS, KS, KS)).astype(np.float32)
    kernels /= kernels.sum(axis=(-2, -1), keepdims=True)
    read = _median_time(lambda: np.asarray(blurred[3]), 7)
    write = _median_time(lambda: estimates.__setitem__(2, kernels), 7)
    results = [
        {
            "image_id": r["image_id"],
            "similarity": np.random.default_rng(1).random(WINDOWS),
            "seconds": 1.0,
            "worker": "w",
            "node": "n",
            "device": "gpu",
        }
        for r in images
    ]
    counter = iter(range(100))
    shard = _median_time(lambda: write_shard(store, "bench@1-0", f"shard-{next(counter):06d}-x", results, {}), 5)
    print(f"| {label} | {1000 * read:.1f} | {1000 * write:.1f} | {1000 * shard / len(images):.1f} |")
    return {"read": read, "write": write, "shard_per_image": shard / len(images)}


def actor_round_trip() -> float:
    import ray

    from pipeline.ray.cluster import init_ray

    init_ray()  # as the labelling driver starts it

    @ray.remote(num_cpus=0.5)
    class Echo:
        def result(self, n: int) -> dict:
            return {
                "image_id": 1,
                "similarity": np.zeros(n, np.float32),
                "seconds": 0.1,
                "worker": "w",
                "node": "n",
                "device": "gpu",
            }

    actor = Echo.remote()
    ray.get(actor.result.remote(WINDOWS))
    per_call = _median_time(lambda: ray.get([actor.result.remote(WINDOWS) for _ in range(200)]), 5) / 200
    single = _median_time(lambda: ray.get(actor.result.remote(WINDOWS)), 50)
    ray.shutdown()
    print(
        f"\nRay actor call returning one image's result: {1000 * single:.2f} ms one at a time, "
        f"{1000 * per_call:.2f} ms each when 200 are in flight"
    )
    return per_call


def _moto() -> contextlib.AbstractContextManager | None:
    """moto's S3 on loopback (the tests' server), or None without moto and s3fs."""
    try:
        import moto  # noqa: F401
        import s3fs  # noqa: F401
    except ImportError:
        return None
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # benchmarks/ sits beside tests/
    from tests.s3server import moto_s3

    return moto_s3("scaling")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--s3", action="store_true")
    args = ap.parse_args()
    print("| store | read one image chunk (ms) | write 121 kernels of 31 px (ms) | publish a shard, per image (ms) |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        costs = {"local": store_costs(Store(str(pathlib.Path(tmp) / "ds")), "local disk")}
        if args.s3:
            server = _moto()
            if server:
                with server:
                    costs["s3"] = store_costs(Store("s3://scaling/ds"), "S3 (moto on loopback)")
    per_call = actor_round_trip()
    from pipeline.ray.labelling import PUBLISH_THREADS

    print(
        f"\nThe driver hands out images and receives results (the actor call) on one thread; shards are "
        f"published by {PUBLISH_THREADS} threads, so the publishing limit is {PUBLISH_THREADS} x the single-"
        f"thread rate (if the store serves concurrent writes).\n"
    )
    print(
        "| store | images/s: actor calls | images/s: publishing | sustained windows/s | "
        "GPUs at 400 windows/s each | limit |"
    )
    print("|---|---|---|---|---|---|")
    for name, c in costs.items():
        calls = 1 / per_call
        publishing = PUBLISH_THREADS / c["shard_per_image"]
        images_per_s = min(calls, publishing)
        limit = "driver's actor calls" if calls < publishing else "shard writes to the store"
        print(
            f"| {name} | {calls:.0f} | {publishing:.0f} | {WINDOWS * images_per_s:.0f} | "
            f"{WINDOWS * images_per_s / 400:.0f} | {limit} |"
        )


if __name__ == "__main__":
    main()
