"""Synthetic camera blur of a whole picture, shared by the benchmarks that make their own inputs."""

from __future__ import annotations

import numpy as np


def camera_blur(sharp: np.ndarray, kernel: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """The picture extended symmetrically by half the kernel, 'valid' blur, Gaussian noise, clipped to [0, 1]
    (as ``../shared/tools/levin_synth.py`` makes Levin et al.'s inputs): same size as ``sharp``, float64."""
    from kernels_gpu.conv import convolve

    h = kernel.shape[0] // 2
    padded = np.pad(sharp.astype(np.float64), h, mode="symmetric")
    blurred = convolve(padded, kernel.astype(np.float64), "valid")
    return np.clip(blurred + sigma * rng.standard_normal(blurred.shape), 0, 1)
