"""How much two processes on this machine really run in parallel (the ceiling for 2 workers vs 1).

Runs the same work in one process, then in two processes at once, and prints the
throughput ratio (2.0 = two independent cores, 1.0 = one core's worth):

* a pure-Python loop (the integer pipeline);
* NumPy float32 elementwise work on arrays that fit in L2 (9 x 225 x 225, as one
  window batch of a 300 px image) and on arrays that do not (121 x 225 x 225);
* one ``l0grad`` batch of 9 windows of 228 px with ``scipy.fft`` on one thread.

Usage::

    python benchmarks/cores.py
"""

from __future__ import annotations

import multiprocessing
import os
import time

import numpy as np


def python_loop() -> None:
    x = 0
    for i in range(10_000_000):
        x += i


def numpy_small() -> None:
    a = np.random.default_rng(0).random((9, 225, 225), dtype=np.float32)
    b = np.empty_like(a)
    for _ in range(1500):
        np.multiply(a, 1.0001, out=b)


def numpy_large() -> None:
    a = np.random.default_rng(0).random((121, 225, 225), dtype=np.float32)
    b = np.empty_like(a)
    for _ in range(100):
        np.multiply(a, 1.0001, out=b)


def l0grad_batch() -> None:
    from kernels_gpu import estimators

    windows = np.random.default_rng(0).random((9, 228, 228), dtype=np.float32)
    estimators.get("l0grad")(windows, 25, fft_workers=1)


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ctx = multiprocessing.get_context("spawn")
    print(f"{len(os.sched_getaffinity(0))} CPUs visible\n")
    print("| work | 1 process (s) | 2 processes at once (s each) | throughput 2 vs 1 |")
    print("|---|---|---|---|")
    for name, fn in [
        ("pure-Python loop", python_loop),
        ("NumPy elementwise, L2-sized", numpy_small),
        ("NumPy elementwise, 25 MB arrays", numpy_large),
        ("l0grad, 9 windows of 228 px", l0grad_batch),
    ]:
        with ctx.Pool(1) as pool:
            one = pool.apply(_timed, (fn,))
        with ctx.Pool(2) as pool:
            both = pool.starmap(_timed, [(fn,), (fn,)])
        print(f"| {name} | {one:.2f} | {np.mean(both):.2f} | {2 * one / max(both):.2f}x |")


if __name__ == "__main__":
    main()
