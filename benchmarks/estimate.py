"""Speed of blind kernel estimation: one batch of 121 windows vs one window at a time.

The paper's unit of work: a 450x450 blurred image cut into 121 windows of
228x228 at stride 20, all estimated with one kernel size.  For each kernel size
this prints, measured in one run on this machine:

* batched: seconds for the whole (121, 228, 228) batch -> windows/s and s/window;
* one by one: the same code on ``--single`` windows, one at a time -> s/window;
* the ratio of the two, the peak memory of the batched run, and the median
  similarity of the estimates to the true kernel (to show speed costs no quality);
* with ``--device gpu --compare-cpu N``: the NumPy estimator on N of the same windows (spread
  over the grid) on this machine's CPUs, its s/window, the GPU's speed-up per window over it,
  and the median similarity of the GPU's and the CPU's estimates of those N windows.

Usage::

    python benchmarks/estimate.py                       # CPU, kernel sizes 27 and 55
    python benchmarks/estimate.py --device gpu          # CuPy on the current GPU
    python benchmarks/estimate.py --device gpu --compare-cpu 8   # and NumPy on 8 of the windows
    python benchmarks/estimate.py --estimator pan-l0 --kernel-sizes 27 --profile 8   # where the time goes
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import tracemalloc

import numpy as np

from kernels_gpu import estimators
from kernels_gpu.backend import gpu_available, to_device, to_numpy
from kernels_gpu.similarity import similarity
from pipeline.samples import load_builtin


def windows_of(image: np.ndarray, size: int, stride: int) -> np.ndarray:
    """The paper's grid: (H - size) // stride windows per axis, centred (11 x 11 = 121 for 450 px)."""
    starts = []
    for n in image.shape:
        count = max(1, (n - size) // stride)
        offset = ((n - size) - (count - 1) * stride) // 2
        starts.append([offset + i * stride for i in range(count)])
    return np.stack([image[y : y + size, x : x + size] for y in starts[0] for x in starts[1]])


def _sync(device: str) -> None:
    if device == "gpu":
        import cupy

        cupy.cuda.Device().synchronize()


def bench(
    kernel_size: int, device: str, single: int, estimator_name: str, image_size: int, compare_cpu: int = 0
) -> dict:
    sample = load_builtin("builtin:camera", size=image_size, kernel_size=kernel_size, seed=kernel_size)
    windows = windows_of(sample.blurred, 228, 20)
    est = estimators.get(estimator_name)
    batch = to_device(windows, device)
    est(batch[:2], kernel_size)  # warm-up: FFT plans, CuPy kernels
    _sync(device)

    if device == "gpu":
        import cupy

        pool = cupy.get_default_memory_pool()
        pool.free_all_blocks()
    else:
        tracemalloc.start()
    start = time.perf_counter()
    kernels = est(batch, kernel_size)
    _sync(device)
    batched = time.perf_counter() - start
    if device == "gpu":
        peak = pool.total_bytes()
    else:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()

    start = time.perf_counter()
    for i in range(single):
        est(batch[i : i + 1], kernel_size)
    _sync(device)
    one = (time.perf_counter() - start) / single

    sims = [float(similarity(k, sample.kernel)) for k in to_numpy(kernels)]
    n = len(windows)
    result = {
        "kernel_size": kernel_size,
        "windows": n,
        "batched_s": batched,
        "windows_per_s": n / batched,
        "s_per_window": batched / n,
        "single_s_per_window": one,
        "speedup": one / (batched / n),
        "peak_mb": peak / 2**20,
        "median_similarity": statistics.median(sims),
    }
    if compare_cpu and device != "cpu":
        result.update(cpu_reference(est, windows, kernel_size, sample.kernel, sims, compare_cpu))
        result["cpu_ratio"] = result["cpu_s_per_window"] / result["s_per_window"]
    return result


def cpu_reference(est, windows: np.ndarray, kernel_size: int, true_kernel: np.ndarray, sims: list, count: int) -> dict:
    """The NumPy estimator on ``count`` of the same windows (spread over the grid, one batch): its s/window
    and the median similarity of its estimates beside that of the device's estimates of the same windows."""
    index = np.unique(np.linspace(0, len(windows) - 1, min(count, len(windows))).round().astype(int))
    start = time.perf_counter()
    kernels = est(windows[index], kernel_size)
    seconds = time.perf_counter() - start
    cpu = [float(similarity(k, true_kernel)) for k in kernels]
    device = [sims[i] for i in index]
    return {
        "cpu_windows": len(index),
        "cpu_s_per_window": seconds / len(index),
        "cpu_median_similarity": statistics.median(cpu),
        "device_median_similarity": statistics.median(device),
        "max_similarity_difference": max(abs(a - b) for a, b in zip(cpu, device, strict=True)),
    }


def profile(kernel_size: int, estimator_name: str, image_size: int, count: int) -> None:
    """cProfile of one CPU batch of ``count`` windows: where the time goes (FFTs vs the rest)."""
    import cProfile
    import pstats

    sample = load_builtin("builtin:camera", size=image_size, kernel_size=kernel_size, seed=kernel_size)
    windows = windows_of(sample.blurred, 228, 20)[:count]
    est = estimators.get(estimator_name)
    est(windows[:1], kernel_size)  # warm-up
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.runcall(est, windows, kernel_size)
    total = time.perf_counter() - start
    stats = pstats.Stats(profiler).stats  # (file, line, name) -> (calls, ncalls, tottime, cumtime, callers)
    fft_calls = sum(v[1] for k, v in stats.items() if "pocketfft" in k[2])
    fft = sum(v[2] for k, v in stats.items() if "pocketfft" in k[2])
    print(f"profile of {count} windows, kernel size {kernel_size}: {total:.1f} s in all, {total / count:.2f} s/window")
    print(f"  FFTs (pocketfft, {fft_calls} calls): {fft:.1f} s = {100 * fft / total:.0f} %")
    print("  largest own times:")
    top = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:6]
    for (file, line, name), v in top:
        print(f"    {v[2]:6.1f} s  {v[1]:6d} calls  {os.path.basename(file)}:{line}({name})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--kernel-sizes", type=int, nargs="+", default=[27, 55])
    ap.add_argument("--single", type=int, default=6, help="windows timed one at a time")
    ap.add_argument("--estimator", default="l0grad")
    ap.add_argument("--image-size", type=int, default=450)
    ap.add_argument("--profile", type=int, metavar="N", help="instead: cProfile one CPU batch of N windows")
    ap.add_argument(
        "--compare-cpu",
        type=int,
        default=0,
        metavar="N",
        help="with --device gpu: also run NumPy on N of the same windows (speed-up, similarity)",
    )
    args = ap.parse_args()
    if args.profile:
        for ks in args.kernel_sizes:
            profile(ks, args.estimator, args.image_size, args.profile)
        return
    if args.device == "gpu" and not gpu_available():
        raise SystemExit("--device gpu: CuPy or a CUDA device is not available")
    where = platform.processor() or platform.machine()
    if args.device == "gpu":
        import cupy

        where = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    print(
        f"device: {args.device} ({where}), {len(os.sched_getaffinity(0))} CPU cores, "
        f"estimator {estimators.get(args.estimator).id}"
    )
    compare = args.compare_cpu if args.device == "gpu" else 0
    extra = " CPU s/window | GPU vs CPU per window | median similarity GPU / CPU (same windows) | max abs diff |"
    print(
        "| kernel | windows | batch s | windows/s | s/window batched | s/window one-by-one | speed-up | "
        "peak MiB | median similarity |" + (extra if compare else "")
    )
    print("|---|---|---|---|---|---|---|---|---|" + ("---|---|---|---|" if compare else ""))
    for ks in args.kernel_sizes:
        r = bench(ks, args.device, args.single, args.estimator, args.image_size, compare)
        row = (
            f"| {ks} | {r['windows']} | {r['batched_s']:.2f} | {r['windows_per_s']:.2f} | {r['s_per_window']:.4f} | "
            f"{r['single_s_per_window']:.4f} | {r['speedup']:.2f}x | {r['peak_mb']:.0f} | "
            f"{r['median_similarity']:.3f} |"
        )
        if compare:
            row += (
                f" {r['cpu_s_per_window']:.4f} ({r['cpu_windows']} windows) | {r['cpu_ratio']:.1f}x | "
                f"{r['device_median_similarity']:.3f} / {r['cpu_median_similarity']:.3f} | "
                f"{r['max_similarity_difference']:.1e} |"
            )
        print(row, flush=True)


if __name__ == "__main__":
    main()
