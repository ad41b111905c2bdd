"""The window grid: which square windows of an image get a label.

Rule (the paper's): along each axis of length ``L`` there are
``n = max(1, (L - size) // stride)`` windows, ``stride`` apart, and the grid is
centred, so the ``(L - size) - (n - 1) * stride`` pixels it leaves are split
between the two sides (the extra pixel, if odd, goes after).  A 450x450 image
at size 228 and stride 20 has 11 x 11 = 121 windows starting at 11, 31, ..., 211.
Window ids run row-major: ``window_id = row * n_x + column``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from .schema import WINDOWS

__all__ = ["axis_starts", "grid", "standardize", "window_count", "windows_table"]


def axis_starts(length: int, size: int, stride: int) -> np.ndarray:
    """Start offsets of the windows along one axis of ``length`` pixels."""
    if size > length:
        raise ValueError(f"window {size} px is larger than the image side {length} px")
    if size < 1 or stride < 1:
        raise ValueError(f"window size and stride must be >= 1, got {size} and {stride}")
    n = max(1, (length - size) // stride)
    offset = ((length - size) - (n - 1) * stride) // 2
    return offset + stride * np.arange(n, dtype=np.int32)


def grid(height: int, width: int, size: int, stride: int) -> np.ndarray:
    """``(n, 2)`` int32 array of window corners ``(y, x)``, in window-id order."""
    ys, xs = axis_starts(height, size, stride), axis_starts(width, size, stride)
    return np.stack(np.meshgrid(ys, xs, indexing="ij"), axis=-1).reshape(-1, 2).astype(np.int32)


def window_count(height: int, width: int, size: int, stride: int) -> int:
    return len(axis_starts(height, size, stride)) * len(axis_starts(width, size, stride))


def windows_table(images: pa.Table, size: int, stride: int) -> pa.Table:
    """The windows of every image of an ``images`` table (columns image_id, height, width)."""
    ids, ws, ys, xs = [np.zeros(0, np.int64)], [np.zeros(0, np.int32)], [np.zeros(0, np.int32)], [np.zeros(0, np.int32)]
    for image_id, h, w in zip(*(images.column(c).to_pylist() for c in ("image_id", "height", "width")), strict=True):
        corners = grid(h, w, size, stride)
        ids.append(np.full(len(corners), image_id, np.int64))
        ws.append(np.arange(len(corners), dtype=np.int32))
        ys.append(corners[:, 0])
        xs.append(corners[:, 1])
    n = sum(len(a) for a in ids)
    return pa.table(
        {
            "image_id": np.concatenate(ids),
            "window_id": np.concatenate(ws),
            "y": np.concatenate(ys),
            "x": np.concatenate(xs),
            "size": np.full(n, size, np.int32),
        },
        schema=WINDOWS,
    )


def standardize(windows: np.ndarray, eps: float = 1e-3) -> np.ndarray:
    """Each window of ``(n, S, S)`` to zero mean and unit standard deviation (float32)."""
    windows = np.asarray(windows, dtype=np.float32)
    mean = windows.mean(axis=(-2, -1), keepdims=True)
    std = windows.std(axis=(-2, -1), keepdims=True)
    return ((windows - mean) / (std + eps)).astype(np.float32)
