"""Pieces shared by the batched blind estimators."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..backend import get_array_module, irfft2, next_fast_len, prev_fast_len, rfft2

__all__ = [
    "cg_kernel_step",
    "crop_to_fast",
    "difference_otf_energy",
    "dst1_2d",
    "extract_kernel",
    "fix_size",
    "imresize_cubic",
    "levin_downsample",
    "normalize_windows",
    "opt_fft_size",
    "per_image",
    "valid_gradients",
    "wrap_boundary",
]


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


# --- Shared by the Pan et al. estimators (pan-l0, dark-channel) -------------------------------------------------------


def dst1_2d(x: Any) -> Any:
    """Unnormalised 2-D DST-I over the last two axes, through one real FFT of the odd extension.

    ``y[k, l] = sum_ij x[i, j] sin(pi (k+1)(i+1) / (n+1)) sin(pi (l+1)(j+1) / (m+1))``; applying it
    twice multiplies by ``(n + 1)(m + 1) / 4``.  Written with :func:`rfft2` so it runs on NumPy and
    CuPy alike (``x`` : (..., n, m) float).
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
    """
    if ratio == 1:
        return image
    taps = _levin_taps(ratio)
    smooth = _valid_filter_1d(_valid_filter_1d(image, taps, -2), taps, -1)
    return _linear_sample(_linear_sample(smooth, 1 / ratio, -2), 1 / ratio, -1).astype(image.dtype, copy=False)


def per_image(xp: Any, values: Any, dtype: Any) -> Any:
    """Host per-image scalars ``(B,)`` as a ``(B, 1, 1)`` array of ``xp`` that broadcasts over windows."""
    return xp.asarray(np.asarray(values, dtype=np.float64).reshape(-1, 1, 1), dtype=dtype)


def opt_fft_size(n: int) -> int:
    """The padded grid of Pan's code (Cho's ``opt_fft_size``): the smallest ``m >= n`` of the form
    ``2^a 3^b 5^c 7^d``, or such a number times 11 or 13 (FFTW's fast sizes; pocketfft's and
    cuFFT's too)."""
    m = max(int(n), 1)
    while True:
        r = m
        for p in (2, 3, 5, 7):
            while r % p == 0:
                r //= p
        if r in (1, 11, 13):
            return m
        m += 1


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
    """
    xp = get_array_module(kernel)
    if scale < 1:
        raise ValueError(f"imresize_cubic upsamples only, got scale {scale}")
    weights = xp.asarray(_cubic_weights(kernel.shape[-1], scale), dtype=kernel.dtype)
    return xp.matmul(xp.matmul(weights, kernel), weights.T)


def fix_size(kernel: Any, size: int) -> Any:
    """Grow or trim ``(B, h, w)`` kernels to ``size x size`` one row/column at a time (Pan's ``fixsize``).

    Trimming drops the lighter of the two outer rows (columns); growing adds a zero row
    (column) on the side of the heavier one.  The choice is made per kernel.
    """
    xp = get_array_module(kernel)
    k = kernel
    for axis in (-2, -1):
        while k.shape[axis] != size:
            lines = k.sum(axis=-1 if axis == -2 else -2)  # (B, n): mass per row (axis -2) or column
            first_lighter = (lines[..., 0] < lines[..., -1])[..., None, None]
            n = k.shape[axis]
            if n > size:
                drop_first = k[..., 1:, :] if axis == -2 else k[..., :, 1:]
                drop_last = k[..., :-1, :] if axis == -2 else k[..., :, :-1]
                k = xp.where(first_lighter, drop_first, drop_last)
            else:
                pad_shape = list(k.shape)
                pad_shape[axis] = 1
                zero = xp.zeros(pad_shape, dtype=k.dtype)
                at_end = xp.concatenate([k, zero], axis=axis)
                at_start = xp.concatenate([zero, k], axis=axis)
                k = xp.where(first_lighter, at_end, at_start)
    return k


def valid_gradients(image: Any) -> tuple[Any, Any]:
    """Pan's (and Cho's) gradients: ``conv2(x, [-1 1; 0 0], 'valid')`` and ``conv2(x, [-1 0; 1 0], 'valid')``.

    Both are ``(..., H-1, W-1)``, anchored at the lower-right pixel of each 2x2 block.
    """
    gx = image[..., 1:, :-1] - image[..., 1:, 1:]
    gy = image[..., :-1, 1:] - image[..., 1:, 1:]
    return gx, gy


def cg_kernel_step(
    latent: tuple[Any, Any],
    blurred: tuple[Any, Any],
    size: int,
    weight: float = 2.0,
    iterations: int = 20,
    tol: float = 1e-5,
) -> Any:
    """Support-constrained kernel step of Cho & Lee / Pan et al., by conjugate gradient, batched.

    Minimises ``sum_d |s_d (*) k - b_d|^2 + weight |k|^2`` over ``size x size`` kernels ``k``
    (``(*)`` circular convolution on the gradients' grid, the kernel's centre at the origin),
    from the uniform kernel, with ``iterations`` CG steps; each sample has its own CG scalars
    and stops when its residual norm falls below ``tol`` (Cho's ``conjgrad``).

    The normal equations need only the autocorrelation ``R`` of the latent gradients at lags
    within ``+-(size - 1)`` and their cross-correlation with the blurred gradients at lags within
    ``+-(size // 2)``: one inverse FFT each on the full grid.  Each CG product ``R (*) k`` is then
    a small circular convolution on a grid of ``>= 2 size - 1``, exact because no lag wraps.

    Parameters
    ----------
    latent : (sx, sy), each (B, h, w) float: gradients of the latent images
    blurred : (bx, by), each (B, h, w) float: the same gradients of the blurred images
    size : odd kernel size

    Returns
    -------
    (B, size, size) float64 kernels (not clipped nor normalised).
    """
    from ..conv import kernel_otf

    xp = get_array_module(latent[0])
    h, w = latent[0].shape[-2:]
    fs = [rfft2(s) for s in latent]
    fb = [rfft2(b) for b in blurred]
    auto = sum(f.real**2 + f.imag**2 for f in fs)
    cross = sum(f.conj() * g for f, g in zip(fs, fb, strict=True))
    rhs = extract_kernel(irfft2(cross, s=(h, w)), size).astype(xp.float64)
    lags = 2 * size - 1
    if lags <= h and lags <= w:
        grid = (next_fast_len(lags), next_fast_len(lags))
        gram = kernel_otf(extract_kernel(irfft2(auto, s=(h, w)), lags).astype(xp.float64), grid)
    else:  # lags would wrap on this small grid: use the full-grid operator as it is
        grid = (h, w)
        gram = auto.astype(xp.float64)

    def apply(k: Any) -> Any:
        return extract_kernel(irfft2(gram * kernel_otf(k, grid), s=grid), size) + weight * k

    def dot(a: Any, b: Any) -> Any:
        return (a * b).sum(axis=(-2, -1))

    batch = latent[0].shape[0]
    k = xp.full((batch, size, size), 1.0 / size**2, dtype=xp.float64)
    r = rhs - apply(k)
    p = r
    rs = dot(r, r)
    active = xp.ones(batch, dtype=bool)
    for _ in range(iterations):
        ap = apply(p)
        pap = dot(p, ap)
        alpha = xp.where(active & (pap != 0), rs / xp.where(pap != 0, pap, 1), 0.0)
        k = k + alpha[:, None, None] * p
        r = r - alpha[:, None, None] * ap
        rs_new = dot(r, r)
        active = active & (xp.sqrt(rs_new) >= tol)
        beta = xp.where(active & (rs > 0), rs_new / xp.where(rs > 0, rs, 1), 0.0)
        p = r + beta[:, None, None] * p
        rs = xp.where(active, rs_new, rs)
    return k
