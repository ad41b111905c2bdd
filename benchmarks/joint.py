"""Joint estimation from several windows against each window alone, on Levin et al.'s data.

Each sharp picture is blurred by one of Levin's kernels ('valid' blur of the symmetric-padded
picture, Gaussian noise sigma = 0.01: ``_images.camera_blur``), cut into its four
corner windows of ``--window`` px; l0grad estimates a kernel on each window alone and one kernel
from all four jointly (``Estimator.joint``). It prints the similarity to the true kernel.

Usage::

    python benchmarks/joint.py --levin ../shared/data/levin2009 [--window 128]
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np
from _images import camera_blur

from kernels_gpu import estimators
from kernels_gpu.similarity import similarity
from pipeline.files import read_image, read_kernel
from pipeline.labels import estimate_kernel_size

PAIRS = ((1, 2), (2, 4), (3, 6), (4, 8), (1, 5), (2, 7))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--levin", type=pathlib.Path, required=True, help="Levin et al. 2009 folder (sharp/, kernels/)")
    ap.add_argument("--window", type=int, default=128)
    args = ap.parse_args()
    est = estimators.get("l0grad")
    s = args.window
    print(f"| picture | kernel | single windows (4 corners, {s} px) | best single | joint from the 4 |")
    print("|---|---|---|---|---|")
    for i, j in PAIRS:
        sharp = read_image(args.levin / "sharp" / f"im{i}.png")
        k = read_kernel(args.levin / "kernels" / f"kernel{j}.npy").astype(np.float64)
        y = camera_blur(sharp, k, 0.01, np.random.default_rng(0)).astype(np.float32)
        size = estimate_kernel_size(k.shape[0])
        windows = np.stack([y[a : a + s, b : b + s] for a in (0, y.shape[0] - s) for b in (0, y.shape[1] - s)])
        single = [float(similarity(e, k)) for e in est(windows, size)]
        joint = float(similarity(est.joint(windows, size), k))
        print(f"| im{i} | kernel{j} | {', '.join(f'{v:.3f}' for v in single)} | {max(single):.3f} | {joint:.3f} |")


if __name__ == "__main__":
    main()
