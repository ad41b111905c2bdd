"""Levin et al. 2009 test pairs, made from tests/data the way ../shared/tools/levin_synth.py makes them."""

from __future__ import annotations

import pathlib

import imageio.v3 as iio
import numpy as np
from scipy.signal import fftconvolve

LEVIN = pathlib.Path(__file__).resolve().parent / "data" / "levin2009"
LEVIN_SHARP = LEVIN / "sharp"


def sharp(i: int) -> np.ndarray:
    return iio.imread(LEVIN / "sharp" / f"im{i}.png").astype(np.float64) / 255


def kernel(j: int) -> np.ndarray:
    k = np.load(LEVIN / "kernels" / f"kernel{j}.npy").astype(np.float64)
    return k / k.sum()


def synthetic(i: int, j: int, sigma: float = 0.01, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Blurred image (float32, camera-like 'valid' blur of the symmetric-padded image) and its kernel."""
    k = kernel(j)
    h = k.shape[0] // 2
    y = fftconvolve(np.pad(sharp(i), h, mode="symmetric"), k, mode="valid")
    y = np.clip(y + sigma * np.random.default_rng(seed).standard_normal(y.shape), 0, 1)
    return y.astype(np.float32), k.astype(np.float32)


def real(i: int, j: int) -> tuple[np.ndarray, np.ndarray]:
    """One of the real blurred photographs and its recorded kernel."""
    y = iio.imread(LEVIN / "blurred" / f"im{i}_kernel{j}.png").astype(np.float32) / 255
    return y, kernel(j).astype(np.float32)
