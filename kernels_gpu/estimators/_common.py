"""Pieces shared by the batched blind estimators."""

from __future__ import annotations

from typing import Any

from ..backend import get_array_module, prev_fast_len

__all__ = ["crop_to_fast", "difference_otf_energy", "extract_kernel", "normalize_windows"]


def crop_to_fast(windows: Any) -> Any:
    """Centre crop of ``(..., H, W)`` to the largest 5-smooth sizes (fast FFTs)."""
    H, W = windows.shape[-2:]
    h, w = prev_fast_len(H), prev_fast_len(W)
    y0, x0 = (H - h) // 2, (W - w) // 2
    return windows[..., y0 : y0 + h, x0 : x0 + w]


def normalize_windows(windows: Any) -> Any:
    """Min-max normalise each ``(H, W)`` window to [0, 1] (a flat window becomes 0)."""
    xp = get_array_module(windows)
    lo = windows.min(axis=(-2, -1), keepdims=True)
    span = windows.max(axis=(-2, -1), keepdims=True) - lo
    return ((windows - lo) / xp.where(span > 0, span, 1)).astype(windows.dtype, copy=False)


def difference_otf_energy(shape: tuple[int, int], xp: Any, dtype: Any = "float32") -> Any:
    """``|F dx|^2 + |F dy|^2`` of circular forward differences on ``shape`` (rfft2 layout)."""
    H, W = shape
    fy = xp.arange(H, dtype=xp.float64).reshape(-1, 1) / H
    fx = xp.arange(W // 2 + 1, dtype=xp.float64).reshape(1, -1) / W
    # |exp(2 pi i f) - 1|^2 = 2 - 2 cos(2 pi f)
    return ((2 - 2 * xp.cos(2 * xp.pi * fy)) + (2 - 2 * xp.cos(2 * xp.pi * fx))).astype(dtype)


def extract_kernel(full: Any, size: int) -> Any:
    """The ``size x size`` support around the origin of a circular kernel ``(..., H, W)``."""
    xp = get_array_module(full)
    H, W = full.shape[-2:]
    r = size // 2
    iy = (xp.arange(size) - r) % H
    ix = (xp.arange(size) - r) % W
    return full[..., iy[:, None], ix[None, :]]
