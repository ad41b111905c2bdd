"""Labelling throughput on Ray (1 vs 2 workers, Ray vs direct) and the label distribution on Levin's data.

Part 1 (``--throughput``): a store of 16 images of 300x300 (Levin's 4 sharp images
x 4 trajectory kernels of 11-31 px), windows of 228 px at stride 20 (9 per image,
144 in all), labelled with ``l0grad``:

* direct: ``label_image`` called in this process, one image after another,
  ``scipy.fft`` on 1 thread (what one Ray worker with 1 CPU does);
* Ray with 1 worker and with 2 workers (1 CPU each), timed from the plan to the
  last shard published (actor start-up included, Ray's own start-up not).

Part 2 (``--levin DIR``): Levin's 4 sharp images x 8 kernels, noise 2/255,
255x255 images, windows of 128 px at stride 32 (9 per image, 288 in all):
the distribution of similarities, the positive rate at lambda = 0.5, 0.6, 0.75,
and what a delta kernel (no estimation) scores against the same true kernels.

Usage::

    python benchmarks/label.py --throughput
    python benchmarks/label.py --levin ../shared/data/levin2009
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import tempfile
import time

import numpy as np

from kernels_gpu import estimators
from kernels_gpu.kernels import delta
from kernels_gpu.similarity import similarity
from pipeline.labels import estimate_kernel_size, plan_labels, read_labels
from pipeline.ray.cluster import RayOptions, init_ray
from pipeline.ray.labelling import label_image, run_labels
from pipeline.store import Store
from pipeline.synth import SynthConfig, run_synth

HERE = pathlib.Path(__file__).resolve().parent
SHARP = HERE.parent / "tests" / "data" / "levin2009" / "sharp"


def _fresh_labels(store: Store) -> None:
    for name in ("labels", "estimates"):
        shutil.rmtree(pathlib.Path(store.url) / name, ignore_errors=True)


def throughput(workdir: pathlib.Path) -> None:
    store = Store(str(workdir / "throughput"))
    run_synth(
        store,
        SynthConfig(
            sharp=str(SHARP),
            num_kernels=4,
            kernel_sizes=(11, 31),
            size=300,
            margin=16,
            fit="resize",
            window=228,
            stride=20,
            seed=1,
        ),
    )
    l0 = estimators.get("l0grad")
    plan = plan_labels(store, l0, 2)
    jobs = [j for _, shard in plan.shards for j in shard]
    windows = plan.todo_windows
    print(f"store: {len(jobs)} images, {windows} windows of 228 px; estimator {l0.id}")

    from pipeline.labels import prepare_arrays

    prepare_arrays(store, plan)
    start = time.perf_counter()
    for job in jobs:
        label_image(job, l0, "cpu", "direct", "local", fft_workers=1)
    direct = time.perf_counter() - start

    init_ray()
    times = {}
    for workers in (1, 2):
        _fresh_labels(store)
        plan = plan_labels(store, l0, 2)
        start = time.perf_counter()
        run = run_labels(store, l0, plan, RayOptions(workers=workers, cpus_per_worker=1))
        times[workers] = time.perf_counter() - start
        assert run.done_windows == windows and not run.failed
        assert read_labels(store, l0.id).num_rows == windows
    print("| run | seconds | windows/s |")
    print("|---|---|---|")
    print(f"| direct, one process, 1 FFT thread | {direct:.1f} | {windows / direct:.2f} |")
    for workers, seconds in times.items():
        print(
            f"| Ray, {workers} worker{'s' if workers > 1 else ''} x 1 CPU | {seconds:.1f} | {windows / seconds:.2f} |"
        )
    print(
        f"\n2 workers vs 1: {times[1] / times[2]:.2f}x; Ray overhead with 1 worker vs direct: "
        f"{100 * (times[1] / direct - 1):+.1f} %"
    )


def levin(levin_dir: pathlib.Path, workdir: pathlib.Path) -> None:
    store = Store(str(workdir / "levin"))
    run_synth(
        store,
        SynthConfig(
            sharp=str(levin_dir / "sharp"),
            kernels=str(levin_dir / "kernels"),
            size=255,
            margin=16,
            fit="resize",
            noise_sigma=2.0,
            window=128,
            stride=32,
            seed=0,
        ),
    )
    images = store.images()
    l0 = estimators.get("l0grad")
    plan = plan_labels(store, l0, 4)
    init_ray()
    run = run_labels(store, l0, plan, RayOptions(cpus_per_worker=1))
    table = read_labels(store, l0.id)
    sims = table["similarity"].to_numpy()
    # the floor: a delta of the estimate's size against each window's true kernel
    by_image = {r["image_id"]: r for r in images.to_pylist()}
    rows = [by_image[i] for i in table["image_id"].to_pylist()]
    truths = [store.kernel(r["kernel_index"], r["kernel_size"]) for r in rows]
    floor = np.array([
        float(similarity(delta(estimate_kernel_size(r["kernel_size"])), truth))
        for r, truth in zip(rows, truths, strict=True)
    ])  # fmt: skip
    print(
        f"store: {images.num_rows} images (Levin 4 sharp x 8 kernels, noise 2/255, 255 px), "
        f"{table.num_rows} windows of 128 px at stride 32; labelled in {run.seconds:.1f} s on {run.workers} "
        f"workers; estimator {l0.id}\n"
    )
    q = np.quantile(sims, [0.1, 0.25, 0.5, 0.75, 0.9])
    print("| similarity | p10 | p25 | median | p75 | p90 | mean |")
    print("|---|---|---|---|---|---|---|")
    print("| l0grad on each window | " + " | ".join(f"{v:.3f}" for v in q) + f" | {sims.mean():.3f} |")
    qf = np.quantile(floor, [0.1, 0.25, 0.5, 0.75, 0.9])
    print("| delta kernel (no estimation) | " + " | ".join(f"{v:.3f}" for v in qf) + f" | {floor.mean():.3f} |")
    print("\n| lambda | positive rate (l0grad) | positive rate (delta) |")
    print("|---|---|---|")
    for lam in (0.5, 0.6, 0.75):
        print(f"| {lam} | {np.mean(sims > lam):.3f} | {np.mean(floor > lam):.3f} |")
    print(
        f"\nwindows at or below their delta floor: {np.mean(sims <= floor):.3f}; histogram of similarity "
        f"(0.1 bins from 0): {np.histogram(sims, bins=np.linspace(0, 1, 11))[0].tolist()}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--throughput", action="store_true")
    ap.add_argument("--levin", type=pathlib.Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.throughput:
            throughput(pathlib.Path(tmp))
        if args.levin:
            import ray

            if ray.is_initialized():
                ray.shutdown()
            levin(args.levin, pathlib.Path(tmp))


if __name__ == "__main__":
    main()
