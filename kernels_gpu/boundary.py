"""Boundary treatment for FFT-based (circular) deconvolution.

An FFT treats an image as periodic; the jump between opposite borders then rings
through a deconvolution.  :func:`edgetaper` (the algorithm of MATLAB's
``edgetaper``) blends each border into a circularly blurred copy of the image,
so the periodic extension is smooth where the kernel wraps around.
:func:`wrap_boundary` (Liu & Jia, ICIP 2008, as in Pan et al.'s code) instead pads the
image with a smooth periodic extension, every observed pixel kept.
"""

from __future__ import annotations

from typing import Any

from .backend import get_array_module, irfft2, rfft2
from .conv import kernel_otf

__all__ = ["dst1_2d", "edgetaper", "pad_reflect", "taper_weights", "wrap_boundary"]


def _taper_1d(profile: Any, n: int) -> Any:
    """1 - normalised circular autocorrelation of ``profile`` on ``n - 1`` samples, wrapped to ``n``."""
    xp = get_array_module(profile)
    spectrum = rfft2(profile[..., None, :], s=(1, n - 1))
    auto = irfft2(spectrum * spectrum.conj(), s=(1, n - 1))[..., 0, :]
    auto = xp.concatenate([auto, auto[..., :1]], axis=-1)
    return 1 - auto / auto.max(axis=-1, keepdims=True)


def taper_weights(kernel: Any, shape: tuple[int, int]) -> Any:
    """Blend weights of :func:`edgetaper`: 0 on the border, 1 farther than the kernel reaches.

    Parameters
    ----------
    kernel : (..., h, w) float
    shape : (H, W)

    Returns
    -------
    (..., H, W) float: the outer product of the two 1-D tapers.

    >>> import numpy as np
    >>> w = taper_weights(np.full((3, 3), 1 / 9), (8, 8))
    >>> w.shape, np.round(w[:, 4], 3).tolist()  # a ramp as long as the kernel reaches
    ((8, 8), [0.0, 0.333, 0.667, 1.0, 1.0, 0.667, 0.333, 0.0])
    """
    row = _taper_1d(kernel.sum(axis=-1), shape[0])
    col = _taper_1d(kernel.sum(axis=-2), shape[1])
    return row[..., :, None] * col[..., None, :]


def edgetaper(image: Any, kernel: Any) -> Any:
    """Blend the borders of ``(..., H, W)`` images into their circular blur by ``kernel``.

    ``out = w * image + (1 - w) * (image circularly convolved with kernel)`` with the
    weights of :func:`taper_weights`.  Kernels broadcast over the batch axes.

    >>> import numpy as np
    >>> image, box = np.random.default_rng(0).random((16, 16)), np.full((3, 3), 1 / 9)
    >>> out = edgetaper(image, box)
    >>> out.shape, bool(np.allclose(out[3:-3, 3:-3], image[3:-3, 3:-3]))  # the middle is kept
    ((16, 16), True)
    >>> bool(np.allclose(edgetaper(np.ones((8, 8)), box), 1))  # a flat image is its own blur
    True
    """
    xp = get_array_module(image, kernel)
    H, W = image.shape[-2:]
    kernel = xp.asarray(kernel, dtype=image.dtype)
    blurred = irfft2(rfft2(image) * kernel_otf(kernel, (H, W)), s=(H, W))
    w = taper_weights(kernel, (H, W)).astype(image.dtype, copy=False)
    return (w * image + (1 - w) * blurred).astype(image.dtype, copy=False)


def pad_reflect(image: Any, pad: int) -> Any:
    """Symmetric padding by ``pad`` pixels on every side of the last two axes.

    >>> import numpy as np
    >>> pad_reflect(np.array([[1, 2], [3, 4]]), 1).tolist()
    [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]
    """
    xp = get_array_module(image)
    widths = [(0, 0)] * (image.ndim - 2) + [(pad, pad), (pad, pad)]
    return xp.pad(image, widths, mode="symmetric")


def dst1_2d(x: Any) -> Any:
    """Unnormalised 2-D DST-I over the last two axes, through one real FFT of the odd extension.

    ``y[k, l] = sum_ij x[i, j] sin(pi (k+1)(i+1) / (n+1)) sin(pi (l+1)(j+1) / (m+1))``; applying it
    twice multiplies by ``(n + 1)(m + 1) / 4``.  Written with :func:`rfft2` so it runs on NumPy and
    CuPy alike (``x`` : (..., n, m) float).

    >>> import numpy as np
    >>> x = np.random.default_rng(0).random((3, 4))
    >>> bool(np.allclose(dst1_2d(dst1_2d(x)), x * (3 + 1) * (4 + 1) / 4))
    True
    """
    xp = get_array_module(x)
    n, m = x.shape[-2:]
    z = xp.zeros((*x.shape[:-2], 2 * n + 2, 2 * m + 2), dtype=x.dtype)
    z[..., 1 : n + 1, 1 : m + 1] = x
    z[..., n + 2 :, 1 : m + 1] = -x[..., ::-1, :]
    z[..., 1 : n + 1, m + 2 :] = -x[..., :, ::-1]
    z[..., n + 2 :, m + 2 :] = x[..., ::-1, ::-1]
    # the 2-D DFT of the odd extension is (-2i)^2 = -4 times the DST-I
    return (rfft2(z)[..., 1 : n + 1, 1 : m + 1].real / -4).astype(x.dtype, copy=False)


def _harmonic_fill(frame: Any) -> Any:
    """Replace the interior of each ``(..., n, m)`` frame by the harmonic function with the frame's outer ring."""
    xp = get_array_module(frame)
    n, m = frame.shape[-2] - 2, frame.shape[-1] - 2
    if n < 1 or m < 1:
        return frame
    # boundary values that touch the interior, moved to the right-hand side of Laplace(u) = 0
    rhs = xp.zeros((*frame.shape[:-2], n, m), dtype=frame.dtype)
    rhs[..., 0, :] += frame[..., 0, 1:-1]
    rhs[..., -1, :] += frame[..., -1, 1:-1]
    rhs[..., :, 0] += frame[..., 1:-1, 0]
    rhs[..., :, -1] += frame[..., 1:-1, -1]
    ky = xp.arange(1, n + 1, dtype=xp.float64).reshape(-1, 1)
    kx = xp.arange(1, m + 1, dtype=xp.float64).reshape(1, -1)
    eig = (2 * xp.cos(xp.pi * ky / (n + 1)) - 2) + (2 * xp.cos(xp.pi * kx / (m + 1)) - 2)
    inner = dst1_2d(dst1_2d(-rhs) / eig.astype(frame.dtype)) * (4.0 / ((n + 1) * (m + 1)))
    out = frame.copy()
    out[..., 1:-1, 1:-1] = inner
    return out


def _ramp(start: Any, stop: Any, count: int) -> Any:
    """``count`` samples from ``start`` to ``stop`` inclusive along a new last axis."""
    xp = get_array_module(start)
    a = (xp.arange(count, dtype=start.dtype) / max(count - 1, 1)).astype(start.dtype)
    return (1 - a) * start[..., None] + a * stop[..., None]


def wrap_boundary(image: Any, shape: tuple[int, int]) -> Any:
    """Smooth periodic extension of ``(..., H, W)`` images to ``shape`` (Liu & Jia, ICIP 2008).

    The image keeps its place at the top left; the strip below it, the strip to its right
    and the corner block are harmonic (discrete Laplace equation) between the image's
    borders that meet across the periodic seam, so the padded image, seen as periodic,
    has no jump anywhere.  Each fill is one Dirichlet Laplace solve by 2-D DST-I.

    Parameters
    ----------
    image : (..., H, W) float
    shape : (H2, W2) with ``H2 >= H + 2`` and ``W2 >= W + 2``

    Returns
    -------
    (..., H2, W2) of ``image``'s dtype.

    >>> import numpy as np
    >>> image = np.random.default_rng(0).random((6, 6))
    >>> out = wrap_boundary(image, (10, 10))
    >>> out.shape, bool(np.array_equal(out[:6, :6], image))
    ((10, 10), True)
    >>> bool(np.allclose(wrap_boundary(np.ones((4, 4)), (8, 8)), 1))  # a flat image extends flat
    True
    """
    xp = get_array_module(image)
    H, W = image.shape[-2:]
    hw, ww = shape[0] - H, shape[1] - W
    if hw < 2 or ww < 2:
        raise ValueError(f"wrap_boundary needs at least 2 rows and columns of padding, got {shape} for {H}x{W}")
    lead = image.shape[:-2]
    # below the image: from its last row down to its first row (the periodic neighbour)
    a = xp.zeros((*lead, hw + 2, W), dtype=image.dtype)
    a[..., 0, :] = image[..., -1, :]
    a[..., -1, :] = image[..., 0, :]
    a[..., 1:-1, 0] = _ramp(image[..., -1, 0], image[..., 0, 0], hw)
    a[..., 1:-1, -1] = _ramp(image[..., -1, -1], image[..., 0, -1], hw)
    a = _harmonic_fill(a)
    # right of the image: from its last column to its first column
    b = xp.zeros((*lead, H, ww + 2), dtype=image.dtype)
    b[..., :, 0] = image[..., :, -1]
    b[..., :, -1] = image[..., :, 0]
    b[..., 0, 1:-1] = _ramp(image[..., 0, -1], image[..., 0, 0], ww)
    b[..., -1, 1:-1] = _ramp(image[..., -1, -1], image[..., -1, 0], ww)
    b = _harmonic_fill(b)
    # the corner, framed by the two strips across their own seams
    c = xp.zeros((*lead, hw + 2, ww + 2), dtype=image.dtype)
    c[..., 0, :] = b[..., -1, :]
    c[..., -1, :] = b[..., 0, :]
    c[..., :, 0] = a[..., :, -1]
    c[..., :, -1] = a[..., :, 0]
    c = _harmonic_fill(c)
    top = xp.concatenate([image, b[..., 1:-1]], axis=-1)
    bottom = xp.concatenate([a[..., 1:-1, :], c[..., 1:-1, 1:-1]], axis=-1)
    return xp.concatenate([top, bottom], axis=-2)
