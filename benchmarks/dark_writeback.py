"""Does the batched dark-channel write-back hurt?  The scatter against the reference's sequential loop.

``dark-channel`` writes the thresholded dark channel back to the arg-min pixels with one
scatter; Pan et al.'s ``assign_dark_channel_to_pixel`` visits the windows in raster order and
skips a window whose current minimum (after earlier writes) already equals its value, so it
zeroes a subset of the scatter's pixels (``kernels_gpu/estimators/dark_channel.py`` explains
why).  For each pair this runs the estimator twice on the whole image (kernel size = true
size + 4):

* ``batched``: the registered default (``write_back="batched"``);
* ``sequential``: the reference's loop (``write_back="sequential"`` semantics), instrumented:
  at every pixel step of this run both write-backs are applied to the same latent image and
  the pixels they zero are counted,

and prints the similarity of each estimate to the true kernel, the similarity of the two
estimates to each other, and how many more pixels the scatter zeroes than the loop
(summed over every pixel step of the run).

Usage::

    python ../shared/tools/levin_synth.py ../shared/data/levin2009 /tmp/levin_s01 --sigma 0.01
    python benchmarks/dark_writeback.py --levin ../shared/data/levin2009 --pairs /tmp/levin_s01 --real --dark \\
        --names im1_k6 im2_k1 im3_k8 im4_k3
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import time

import imageio.v3 as iio
import numpy as np

from kernels_gpu import estimators
from kernels_gpu.estimators.dark_channel import DarkChannelTerm, dark_channel, write_back, write_back_sequential
from kernels_gpu.estimators.pan_l0 import blind_deconv
from kernels_gpu.similarity import similarity
from pipeline.labels import estimate_kernel_size


def _unit(path: pathlib.Path) -> np.ndarray:
    pixels = iio.imread(path)
    return pixels.astype(np.float32) / (65535.0 if pixels.dtype == np.uint16 else 255.0)


def _darkened_pair(sharp_path: pathlib.Path, kernel: np.ndarray) -> np.ndarray:
    """``levin_synth.py``'s recipe (symmetric pad, 'valid' blur, noise 0.01, clip) on ``sharp ** 2.2``."""
    from scipy.signal import fftconvolve

    sharp = _unit(sharp_path).astype(np.float64) ** 2.2
    k = kernel.astype(np.float64) / kernel.sum()
    blurred = fftconvolve(np.pad(sharp, k.shape[0] // 2, mode="symmetric"), k, mode="valid")
    blurred += 0.01 * np.random.default_rng(0).standard_normal(blurred.shape)
    return np.clip(blurred, 0, 1).astype(np.float32)


class CountingSequentialTerm(DarkChannelTerm):
    """The reference's sequential write-back, also counting what the scatter would zero on the same latent."""

    def __init__(self, params) -> None:
        super().__init__(params)
        self.zeros_sequential = 0
        self.zeros_batched = 0

    def __call__(self, latent, lam, beta):
        dark, index = dark_channel(latent, self.size)
        threshold = (np.asarray(lam, dtype=np.float64) / beta).reshape(-1, 1, 1).astype(latent.dtype)
        slow = write_back_sequential(latent, dark, index, threshold, self.size)
        fast = write_back(latent, dark, index, threshold, self.size)
        self.zeros_sequential += int(((slow == 0) & (latent != 0)).sum())
        self.zeros_batched += int(((fast == 0) & (latent != 0)).sum())
        return slow


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--levin", type=pathlib.Path, required=True)
    ap.add_argument("--pairs", type=pathlib.Path, default=None, help="levin_synth.py output folder")
    ap.add_argument("--real", action="store_true", help="also the real photographs of the same names")
    ap.add_argument("--names", nargs="+", default=["im1_k6", "im2_k1", "im3_k8", "im4_k3"])
    ap.add_argument(
        "--dark",
        action="store_true",
        help="also each pair remade from its sharp image darkened by gamma 2.2 (more of the image in the dark channel)",
    )
    args = ap.parse_args()

    inputs = []
    for name in args.names:
        i, j = name[2], name.split("_k")[1]
        truth = np.load(args.levin / "kernels" / f"kernel{j}.npy")
        if args.pairs:
            inputs.append((f"synthetic {name}", _unit(args.pairs / f"{name}.png"), truth))
        if args.real:
            inputs.append((f"real {name}", _unit(args.levin / "blurred" / f"im{i}_kernel{j}.png"), truth))
        if args.dark:
            inputs.append((f"dark synthetic {name}", _darkened_pair(args.levin / "sharp" / f"im{i}.png", truth), truth))

    est = estimators.get("dark-channel")
    print(f"estimator {est.id} (batched) against the sequential reference write-back\n")
    print(
        "| image | batched similarity | sequential similarity | batched vs sequential | extra zeros "
        "| s batched | s sequential |"
    )
    print("|---|---|---|---|---|---|---|")
    rows = []
    for title, blurred, truth in inputs:
        size = estimate_kernel_size(truth.shape[0])
        start = time.perf_counter()
        fast = est(blurred[None], size)[0]
        t_fast = time.perf_counter() - start
        term = CountingSequentialTerm(est.params)
        start = time.perf_counter()
        slow = blind_deconv(blurred[None], size, est.params, term)[0]
        t_slow = time.perf_counter() - start
        s_fast, s_slow = float(similarity(fast, truth)), float(similarity(slow, truth))
        agree = float(similarity(fast, slow))
        extra = (term.zeros_batched - term.zeros_sequential) / max(term.zeros_sequential, 1)
        rows.append((s_fast, s_slow, agree, extra))
        print(
            f"| {title} | {s_fast:.3f} | {s_slow:.3f} | {agree:.3f} | {100 * extra:+.1f} % "
            f"| {t_fast:.1f} | {t_slow:.1f} |",
            flush=True,
        )
    diff = [r[0] - r[1] for r in rows]
    print(
        f"\n{len(rows)} images: median similarity batched {statistics.median(r[0] for r in rows):.3f}, "
        f"sequential {statistics.median(r[1] for r in rows):.3f}; batched - sequential: mean {np.mean(diff):+.3f}, "
        f"worst {min(diff):+.3f}; the two estimates agree to a median similarity of "
        f"{statistics.median(r[2] for r in rows):.3f}; the scatter zeroes a median "
        f"{100 * statistics.median(r[3] for r in rows):+.1f} % more pixels than the loop."
    )


if __name__ == "__main__":
    main()
