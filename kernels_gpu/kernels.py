"""Kernel utilities, batched over leading axes: normalise, centre, threshold, clean, fit.

A kernel here is ``(..., h, w)`` float, non-negative, and in convolution orientation
(``blurred = convolve(sharp, kernel)``).  All functions work on NumPy or CuPy input
and return arrays on the same device.
"""

from __future__ import annotations

from typing import Any

from .backend import get_array_module, ndimage

__all__ = [
    "center",
    "centroid",
    "clean",
    "delta",
    "fit_size",
    "normalize",
    "remove_small_components",
    "threshold",
]


def normalize(kernel: Any) -> Any:
    """Scale each kernel to sum 1; an all-zero kernel stays all zero (no NaN).

    >>> import numpy as np
    >>> normalize(np.array([[0.0, 2.0], [1.0, 1.0]])).tolist(), normalize(np.zeros((2, 2))).tolist()
    ([[0.0, 0.5], [0.25, 0.25]], [[0.0, 0.0], [0.0, 0.0]])
    """
    xp = get_array_module(kernel)
    total = kernel.sum(axis=(-2, -1), keepdims=True)
    return kernel / xp.where(total > 0, total, 1)


def delta(size: int, batch: tuple[int, ...] = (), xp: Any = None, dtype: Any = "float32") -> Any:
    """Identity kernels (all mass on the centre pixel), shape ``batch + (size, size)``.

    >>> delta(3).tolist()
    [[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    >>> delta(5, (2, 4)).shape
    (2, 4, 5, 5)
    """
    import numpy as np

    xp = xp or np
    k = xp.zeros((*tuple(batch), size, size), dtype=dtype)
    k[..., size // 2, size // 2] = 1
    return k


def centroid(kernel: Any) -> tuple[Any, Any]:
    """Centre of mass ``(cy, cx)`` of each kernel, shapes ``kernel.shape[:-2]``.

    >>> import numpy as np
    >>> kernel = np.zeros((5, 5)); kernel[1, 1:4] = 1 / 3  # a line in row 1, columns 1-3
    >>> [float(c) for c in centroid(kernel)]
    [1.0, 2.0]
    """
    xp = get_array_module(kernel)
    h, w = kernel.shape[-2:]
    total = kernel.sum(axis=(-2, -1))
    total = xp.where(total > 0, total, 1)
    cy = (kernel.sum(axis=-1) * xp.arange(h, dtype=kernel.dtype)).sum(axis=-1) / total
    cx = (kernel.sum(axis=-2) * xp.arange(w, dtype=kernel.dtype)).sum(axis=-1) / total
    return cy, cx


def _shift(kernel: Any, dy: Any, dx: Any) -> Any:
    """``out[..., y, x] = kernel[..., y + dy, x + dx]`` with zeros outside; integer shifts per kernel."""
    xp = get_array_module(kernel)
    h, w = kernel.shape[-2:]
    lead = kernel.shape[:-2]
    flat = kernel.reshape((-1, h, w))
    dy = xp.asarray(dy).reshape(-1, 1, 1).astype(xp.int64)
    dx = xp.asarray(dx).reshape(-1, 1, 1).astype(xp.int64)
    ys = xp.arange(h).reshape(1, h, 1) + dy
    xs = xp.arange(w).reshape(1, 1, w) + dx
    inside = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
    b = xp.arange(flat.shape[0]).reshape(-1, 1, 1)
    out = flat[b, xp.clip(ys, 0, h - 1), xp.clip(xs, 0, w - 1)] * inside
    return out.reshape((*lead, h, w))


def center(kernel: Any) -> Any:
    """Move each kernel's centroid to the middle pixel by a rounded integer shift (zero fill).

    >>> import numpy as np
    >>> kernel = np.zeros((5, 5)); kernel[1, 1:4] = 1 / 3
    >>> moved = center(kernel)
    >>> [float(c) for c in centroid(moved)], bool(np.array_equal(moved[2], kernel[1]))  # one row down
    ([2.0, 2.0], True)
    """
    xp = get_array_module(kernel)
    h, w = kernel.shape[-2:]
    cy, cx = centroid(kernel)
    dy = xp.rint(cy - (h - 1) / 2)
    dx = xp.rint(cx - (w - 1) / 2)
    return _shift(kernel, dy, dx)


def threshold(kernel: Any, relative: float) -> Any:
    """Zero the entries below ``relative * max`` of their own kernel.

    >>> import numpy as np
    >>> threshold(np.array([[0.01, 0.5], [0.2, 1.0]]), 0.1).tolist()  # below 10 % of the peak: 0
    [[0.0, 0.5], [0.2, 1.0]]
    """
    xp = get_array_module(kernel)
    peak = kernel.max(axis=(-2, -1), keepdims=True)
    return xp.where(kernel < relative * peak, 0, kernel).astype(kernel.dtype, copy=False)


def remove_small_components(kernel: Any, min_mass: float = 0.1) -> Any:
    """Zero every 8-connected component of the support that holds < ``min_mass`` of the kernel's sum.

    Components are labelled for the whole batch at once: a 3-D structuring element
    that connects pixels only within one kernel keeps kernels apart.

    >>> import numpy as np
    >>> kernel = np.zeros((6, 6)); kernel[0, 0] = 0.05; kernel[3, 2:5] = 0.95 / 3  # a speck and a stroke
    >>> cleaned = remove_small_components(kernel, min_mass=0.1)
    >>> float(cleaned[0, 0]), round(float(cleaned.sum()), 6)  # the speck (5 % of the mass) goes
    (0.0, 0.95)
    """
    xp = get_array_module(kernel)
    h, w = kernel.shape[-2:]
    lead = kernel.shape[:-2]
    flat = kernel.reshape((-1, h, w))
    structure = xp.zeros((3, 3, 3), dtype=bool)
    structure[1] = True
    labels, count = ndimage(xp).label(flat > 0, structure=structure)
    if int(count) == 0:
        return kernel
    totals = flat.sum(axis=(-2, -1))
    totals = xp.where(totals > 0, totals, 1)
    mass = xp.bincount(labels.ravel(), weights=(flat / totals[:, None, None]).ravel(), minlength=int(count) + 1)
    keep = mass >= min_mass
    keep[0] = False
    return (flat * keep[labels]).reshape((*lead, h, w)).astype(kernel.dtype, copy=False)


def clean(kernel: Any, relative_threshold: float = 0.05, min_mass: float = 0.1) -> Any:
    """The usual post-processing of an estimated kernel.

    Clip negatives, zero entries below ``relative_threshold`` of the peak, drop
    connected components lighter than ``min_mass``, centre on the centroid and
    normalise to sum 1.  A kernel that ends up empty becomes a delta.

    >>> import numpy as np
    >>> kernel = np.zeros((7, 7)); kernel[5, 2:6] = [0.2, 0.4, 0.3, 0.1]; kernel[1, 1] = 0.01; kernel[0, 6] = -0.05
    >>> k = clean(kernel)  # the faint and the negative pixels go, the stroke moves to the centre row
    >>> np.round(k[3], 3).tolist(), int((k > 0).sum()), round(float(k.sum()), 6)
    ([0.0, 0.0, 0.2, 0.4, 0.3, 0.1, 0.0], 4, 1.0)
    >>> bool(np.array_equal(clean(np.zeros((5, 5))), delta(5, dtype=float)))  # nothing left: a delta
    True
    """
    xp = get_array_module(kernel)
    k = xp.maximum(kernel, 0)
    if relative_threshold > 0:
        k = threshold(k, relative_threshold)
    if min_mass > 0:
        k = remove_small_components(k, min_mass)
    k = normalize(center(k))
    empty = k.sum(axis=(-2, -1), keepdims=True) == 0
    if bool(empty.any()):
        k = xp.where(empty, delta(k.shape[-1], k.shape[:-2], xp=xp, dtype=k.dtype), k)
    return k


def fit_size(kernel: Any, size: int) -> Any:
    """Crop or zero-pad each kernel symmetrically to ``size x size`` around its middle pixel.

    >>> import numpy as np
    >>> fit_size(np.ones((1, 1)), 3).tolist()  # zero-padded around the middle pixel
    [[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    >>> fit_size(np.arange(25.0).reshape(5, 5), 3).tolist()  # cropped around it
    [[6.0, 7.0, 8.0], [11.0, 12.0, 13.0], [16.0, 17.0, 18.0]]
    """
    xp = get_array_module(kernel)
    h, w = kernel.shape[-2:]
    out = xp.zeros((*kernel.shape[:-2], size, size), dtype=kernel.dtype)
    # offsets keep the middle pixel (h // 2, w // 2) at (size // 2, size // 2)
    sy, sx = h // 2 - size // 2, w // 2 - size // 2
    y0, y1 = max(sy, 0), min(sy + size, h)
    x0, x1 = max(sx, 0), min(sx + size, w)
    out[..., y0 - sy : y1 - sy, x0 - sx : x1 - sx] = kernel[..., y0:y1, x0:x1]
    return out
