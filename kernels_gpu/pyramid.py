"""Image pyramids for coarse-to-fine estimation, batched over leading axes.

:func:`downsample`, :func:`upsample` and :func:`kernel_sizes` serve ``l0grad``;
:func:`levin_downsample` (Levin's ``downSmpImC``) and :func:`imresize_cubic` (MATLAB's
bicubic ``imresize``) reproduce the scale changes of Pan et al.'s reference code.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .backend import get_array_module, ndimage

__all__ = ["downsample", "imresize_cubic", "kernel_sizes", "levin_downsample", "upsample"]


def downsample(image: Any, factor: float) -> Any:
    """Gaussian-prefiltered resampling by ``1 / factor`` (``factor`` >= 1) of ``(..., H, W)``.

    The anti-alias Gaussian has sigma ``(factor - 1) / 2`` (scikit-image's choice);
    samples sit on pixel centres (grid mode), output size ``ceil(H / factor)``.

    >>> import numpy as np
    >>> images = np.random.default_rng(0).random((2, 9, 10)).astype(np.float32)
    >>> small = downsample(images, 2.0)
    >>> small.shape, small.dtype, bool(np.allclose(downsample(np.ones((9, 10)), 2.0), 1))
    ((2, 5, 5), dtype('float32'), True)
    """
    if factor == 1:
        return image
    xp = get_array_module(image)
    nd = ndimage(xp)
    H, W = image.shape[-2:]
    lead = image.shape[:-2]
    flat = image.reshape((-1, H, W))
    sigma = (factor - 1) / 2
    smooth = nd.gaussian_filter(flat, sigma=(0, sigma, sigma), mode="nearest", truncate=3.0)
    out_h, out_w = math.ceil(H / factor), math.ceil(W / factor)
    out = nd.zoom(smooth, (1, out_h / H, out_w / W), order=1, grid_mode=True, mode="nearest")
    return out.reshape((*lead, out_h, out_w)).astype(image.dtype, copy=False)


def upsample(image: Any, shape: tuple[int, int]) -> Any:
    """Bicubic resampling of ``(..., h, w)`` to ``(..., *shape)`` on the pixel-centre grid.

    >>> import numpy as np
    >>> upsample(np.zeros((2, 3, 4)), (6, 8)).shape
    (2, 6, 8)
    >>> bool(np.allclose(upsample(np.full((3, 4), 0.5), (6, 8)), 0.5))  # a flat image stays flat
    True
    """
    xp = get_array_module(image)
    h, w = image.shape[-2:]
    lead = image.shape[:-2]
    flat = image.reshape((-1, h, w))
    out = ndimage(xp).zoom(flat, (1, shape[0] / h, shape[1] / w), order=3, grid_mode=True, mode="nearest")
    return out.reshape(lead + tuple(shape)).astype(image.dtype, copy=False)


def kernel_sizes(kernel_size: int, factor: float, min_size: int = 3) -> list[int]:
    """Odd kernel sizes from fine to coarse: ``k, odd(k * factor), ...`` while >= ``min_size``.

    >>> kernel_sizes(31, 0.5), kernel_sizes(9, 2**-0.5)
    ([31, 15, 7, 3], [9, 7, 5, 3])
    """
    sizes = [int(kernel_size)]
    while True:
        k = int(sizes[-1] * factor)
        k += (k + 1) % 2
        if k < min_size or k >= sizes[-1]:
            return sizes
        sizes.append(k)


def _levin_taps(ratio: float) -> Any:
    """Anti-alias taps of Levin's ``downSmpImC``: Gaussian ``exp(-2 ratio^2 x^2)``, 5 % tails cut."""
    x = np.arange(-50, 51, dtype=np.float64)
    taps = np.exp(-0.5 * (2 * np.pi * x) ** 2 * (ratio / np.pi) ** 2)
    taps /= taps.sum()
    cum = np.cumsum(taps)
    return taps[np.minimum(cum, cum[::-1]) > 0.05]


def _valid_filter_1d(x: Any, taps: Any, axis: int) -> Any:
    """'valid' correlation of ``x`` with symmetric ``taps`` along ``axis`` (-1 or -2)."""
    n = x.shape[axis]
    length = len(taps)
    out = None
    for t, w in enumerate(taps):
        part = x[..., t : t + n - length + 1] if axis == -1 else x[..., t : t + n - length + 1, :]
        out = part * float(w) if out is None else out + part * float(w)
    return out


def _linear_sample(x: Any, step: float, axis: int) -> Any:
    """Linear interpolation of ``x`` at ``0, step, 2 step, ...`` (<= last index) along ``axis``."""
    xp = get_array_module(x)
    n = x.shape[axis]
    count = int(np.floor((n - 1) / step + 1e-9)) + 1
    pos = np.arange(count, dtype=np.float64) * step
    i0 = np.minimum(np.floor(pos).astype(np.int64), n - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    f = (pos - i0).astype(x.dtype)
    i0, i1, f = xp.asarray(i0), xp.asarray(i1), xp.asarray(f)
    if axis == -1:
        return x[..., i0] * (1 - f) + x[..., i1] * f
    return x[..., i0, :] * (1 - f)[:, None] + x[..., i1, :] * f[:, None]


def levin_downsample(image: Any, ratio: float) -> Any:
    """Levin's ``downSmpImC`` on ``(..., H, W)``: Gaussian prefilter ('valid'), then linear resampling.

    The prefilter is ``exp(-2 ratio^2 x^2)`` (standard deviation ``1 / (2 ratio)`` pixels) with 5 %
    cut from each tail; the output samples the filtered image at ``0, 1/ratio, 2/ratio, ...``
    (size ``floor((n - 1) ratio) + 1`` of the filtered size ``n``).  ``ratio`` in (0, 1].

    >>> import numpy as np
    >>> small = levin_downsample(np.ones((20, 20)), 0.5)
    >>> small.shape, bool(np.allclose(small, small[0, 0]))  # 5 taps leave 16 samples: every second one
    ((8, 8), True)
    """
    if ratio == 1:
        return image
    taps = _levin_taps(ratio)
    smooth = _valid_filter_1d(_valid_filter_1d(image, taps, -2), taps, -1)
    return _linear_sample(_linear_sample(smooth, 1 / ratio, -2), 1 / ratio, -1).astype(image.dtype, copy=False)


def _cubic(x: Any) -> Any:
    """Keys' cubic convolution kernel with ``a = -0.5`` (MATLAB's ``imresize`` 'bicubic')."""
    ax = np.abs(x)
    near = (1.5 * ax**3 - 2.5 * ax**2 + 1) * (ax <= 1)
    far = (-0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))
    return near + far


def _cubic_weights(n: int, scale: float) -> Any:
    """The ``(ceil(n scale), n)`` host matrix of MATLAB's ``imresize(., scale)`` along one axis, ``scale >= 1``.

    Output pixel ``x`` (1-based) samples the input at ``u = x / scale + (1 - 1 / scale) / 2``
    with the 4-tap cubic, weights renormalised to sum 1, and indices beyond the edges
    mirrored (MATLAB's symmetric extension).  No antialiasing filter: it is an upscale.
    """
    m = math.ceil(n * scale - 1e-9)
    u = np.arange(1, m + 1, dtype=np.float64) / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - 2)
    taps = left[:, None] + np.arange(6)[None, :]  # ceil(4) + 2 candidate inputs per output
    weights = _cubic(u[:, None] - taps)
    weights /= weights.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(n), np.arange(n)[::-1]])
    index = mirror[(taps.astype(np.int64) - 1) % (2 * n)]
    out = np.zeros((m, n))
    np.add.at(out, (np.repeat(np.arange(m), taps.shape[1]), index.ravel()), weights.ravel())
    return out


def imresize_cubic(kernel: Any, scale: float) -> Any:
    """MATLAB's ``imresize(k, scale)`` (bicubic, ``scale >= 1``) of ``(B, n, n)`` kernels, batched.

    Pan's ``resizeKer`` carries the kernel to the next finer scale this way; the output is
    ``ceil(n scale)`` square, and may have small negative lobes (the caller clips them).

    >>> import numpy as np
    >>> kernel = np.zeros((1, 5, 5)); kernel[0, 2, 1:4] = 1 / 3
    >>> big = imresize_cubic(kernel, 2.0)
    >>> big.shape, round(float(big.sum()), 6), bool(np.allclose(big, big[..., ::-1]))  # 4x the mass, same symmetry
    ((1, 10, 10), 4.0, True)
    >>> bool(np.allclose(imresize_cubic(np.ones((1, 3, 3)), 1.5), 1))
    True
    """
    xp = get_array_module(kernel)
    if scale < 1:
        raise ValueError(f"imresize_cubic upsamples only, got scale {scale}")
    weights = xp.asarray(_cubic_weights(kernel.shape[-1], scale), dtype=kernel.dtype)
    return xp.matmul(xp.matmul(weights, kernel), weights.T)
