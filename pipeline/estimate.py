"""One estimate by hand: choosing the device, the estimator and its parameters, the region.

The library side of ``goodregions estimate`` and of every command that names an estimator or a
device (``label``, ``select``, ``evaluate``). Errors name the parameter (``estimator``,
``device``, ``kernel_size``, ``window``), which the command line turns into its flags.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from kernels_gpu import estimators
from kernels_gpu.backend import gpu_available, to_device, to_numpy

from .files import InputError

__all__ = ["Estimate", "crop_window", "estimate_kernel", "get_estimator", "resolve_device"]


def resolve_device(device: str) -> str:
    """``"auto"``, ``"cpu"`` or ``"gpu"`` -> the device to use; ``"gpu"`` without CuPy and CUDA is an error.

    >>> resolve_device("cpu")
    'cpu'
    """
    if device not in ("auto", "cpu", "gpu"):
        raise InputError(f"device: expected auto, cpu or gpu, got {device!r}")
    if device == "gpu" and not gpu_available():
        raise InputError("device: gpu requested but CuPy or a CUDA device is not available")
    if device == "auto":
        return "gpu" if gpu_available() else "cpu"
    return device


def get_estimator(name: str, params: Iterable[str] = ()) -> estimators.Estimator:
    """A registered estimator by name, with ``KEY=VALUE`` overrides typed by its parameter dataclass.

    >>> get_estimator("l0grad").name
    'l0grad'
    >>> get_estimator("l0grad", ["gamma=30"]).id != get_estimator("l0grad").id
    True
    """
    try:
        base = estimators.get(name)
    except KeyError as exc:  # the registry's message: unknown estimator 'x' (registered: ...)
        raise InputError(f"estimator: {exc.args[0]}") from None
    fields = {f.name for f in dataclasses.fields(base.params)}
    overrides: dict[str, Any] = {}
    for item in params:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise InputError(f"params: expected KEY=VALUE with KEY one of {', '.join(sorted(fields))}, got {item!r}")
        kind = type(getattr(base.params, key))
        try:
            overrides[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
        except ValueError:
            raise InputError(f"params: {key} expects a {kind.__name__}, got {value!r}") from None
    if not overrides:
        return base
    try:
        return estimators.get(name, **overrides)
    except ValueError as exc:
        raise InputError(f"params: {exc}") from None


def crop_window(pixels: np.ndarray, window: tuple[int, int, int] | None, kernel_size: int) -> np.ndarray:
    """The square ``window = (y, x, size)`` of ``pixels`` (all of it for ``None``), checked against the kernel size."""
    if kernel_size < 3 or kernel_size % 2 == 0:
        raise InputError(f"kernel_size: must be an odd number >= 3, got {kernel_size}")
    if window is None:
        if kernel_size > min(pixels.shape):
            raise InputError(f"kernel_size: {kernel_size} is larger than the image {pixels.shape[0]}x{pixels.shape[1]}")
        return pixels
    y, x, size = window
    H, W = pixels.shape
    if y < 0 or x < 0 or size < 1 or y + size > H or x + size > W:
        raise InputError(f"window: {y} {x} {size} lies outside the image {H}x{W}")
    if kernel_size > size:
        raise InputError(f"kernel_size: {kernel_size} is larger than the window ({size} px)")
    return pixels[y : y + size, x : x + size]


@dataclass(frozen=True)
class Estimate:
    kernel: np.ndarray
    """(k, k) float32, sum 1, convolution orientation."""
    estimator_id: str
    region_shape: tuple[int, int]
    device: str
    seconds: float
    """Wall time of the estimate alone (no reading, no writing)."""


def estimate_kernel(
    pixels: np.ndarray,
    kernel_size: int,
    estimator: str = "l0grad",
    window: tuple[int, int, int] | None = None,
    device: str = "auto",
) -> Estimate:
    """Blind kernel estimate of an image or one square window of it, on the chosen device.

    >>> rng = np.random.default_rng(0)
    >>> result = estimate_kernel(rng.random((64, 64), dtype=np.float32), 9, device="cpu")
    >>> result.kernel.shape, result.device
    ((9, 9), 'cpu')
    """
    est = get_estimator(estimator)
    region = crop_window(pixels, window, kernel_size)
    used = resolve_device(device)
    batch = to_device(region[None], used)
    start = time.perf_counter()
    kernel = to_numpy(est(batch, kernel_size))[0]
    seconds = time.perf_counter() - start
    return Estimate(kernel, est.id, (region.shape[0], region.shape[1]), used, seconds)
