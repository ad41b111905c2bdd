"""Windows per second that the streaming training input delivers, per CPU data worker.

Builds a store of 450x450 images (built-in pictures x trajectory kernels) with
the paper's windows (228 px, stride 20: 121 per image), gives every window a
label (the labels' values do not matter for input speed, so they are written
directly rather than estimated), and times ``iter_torch_batches`` over the same
Ray Dataset the trainer uses (Zarr chunk decode, crop, standardise, batch of 32,
local shuffle), with 1 and 2 cropping actors, with the blocks in order (as
``train`` runs, for reproducible runs) and without.  The steady rate is measured
from the first batch on (actor start-up and the shuffle buffer's first fill are
reported separately: they are paid once per epoch).

Usage::

    python benchmarks/train_input.py [--images 48]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import tempfile
import time

import numpy as np

from pipeline.labels import write_shard
from pipeline.store import Store
from pipeline.synth import SynthConfig, run_synth
from pipeline.windows import window_count


def build(root: pathlib.Path, n_images: int) -> tuple[Store, str]:
    store = Store(str(root / "store"))
    run_synth(store, SynthConfig(num_kernels=max(1, n_images // 18 + 1), pairs=n_images, seed=0))
    estimator_id = "input-benchmark@1-00000000"
    rng = np.random.default_rng(0)
    per_image = window_count(450, 450, 228, 20)
    results = [
        {
            "image_id": i,
            "similarity": rng.random(per_image),
            "seconds": 0.0,
            "worker": "-",
            "node": "-",
            "device": "cpu",
        }
        for i in store.images()["image_id"].to_pylist()
    ]
    write_shard(store, estimator_id, "shard-000000-bench", results, {})
    return store, estimator_id


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=48)
    args = ap.parse_args()
    import ray
    import torch

    from pipeline.ray.cluster import init_ray
    from pipeline.ray.training_input import configure_window_input, window_dataset
    from training.data import build_index

    with tempfile.TemporaryDirectory() as tmp:
        store, estimator_id = build(pathlib.Path(tmp), args.images)
        index = build_index(store, estimator_id, 0.5)
        windows = sum(len(w) for w in index["window_id"].to_pylist())
        init_ray(object_store_mb=2048)
        print(
            f"{index.num_rows} images of 450x450, {windows} windows of 228x228, batches of 32, "
            f"{len(os.sched_getaffinity(0))} CPU cores"
        )
        print(
            "| block order | cropping actors | first batch after (s) | steady windows/s | "
            "steady windows/s per actor | windows/s including start-up |"
        )
        print("|---|---|---|---|---|---|")
        for ordered, workers in ((True, 1), (False, 1), (True, 2), (False, 2)):
            configure_window_input(preserve_order=ordered)
            dataset = window_dataset(index, store.url, 228, workers)
            start = time.perf_counter()
            first = None
            seen = 0
            for batch in dataset.iter_torch_batches(batch_size=32, local_shuffle_buffer_size=512, dtypes=torch.float32):
                assert batch["window"].shape[1:] == (228, 228)
                seen += len(batch["label"])
                if first is None:  # actors start and the shuffle buffer fills: timed separately
                    first, after_first = time.perf_counter(), seen
            end = time.perf_counter()
            assert seen == windows
            steady = (seen - after_first) / (end - first)
            print(
                f"| {'kept' if ordered else 'any'} | {workers} | {first - start:.1f} | {steady:.0f} | "
                f"{steady / workers:.0f} | "
                f"{windows / (end - start):.0f} |"
            )
        ray.shutdown()


if __name__ == "__main__":
    main()
