"""Pieces shared by the batched blind estimators."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import get_array_module, irfft2, next_fast_len, prev_fast_len, rfft2

__all__ = [
    "cg_kernel_step",
    "crop_to_fast",
    "extract_kernel",
    "fix_size",
    "normalize_windows",
    "opt_fft_size",
    "per_image",
]


def crop_to_fast(windows: Any) -> Any:
    """Centre crop of ``(..., H, W)`` to the largest 5-smooth sizes (fast FFTs).

    >>> import numpy as np
    >>> crop_to_fast(np.zeros((2, 37, 50))).shape  # 37 -> 36 = 2^2 3^2; 50 = 2 5^2 stays
    (2, 36, 50)
    """
    H, W = windows.shape[-2:]
    h, w = prev_fast_len(H), prev_fast_len(W)
    y0, x0 = (H - h) // 2, (W - w) // 2
    return windows[..., y0 : y0 + h, x0 : x0 + w]


def normalize_windows(windows: Any) -> Any:
    """Min-max normalise each ``(H, W)`` window to [0, 1] (a flat window becomes 0).

    >>> import numpy as np
    >>> normalize_windows(np.array([[[2.0, 4.0], [6.0, 10.0]], [[3.0, 3.0], [3.0, 3.0]]])).tolist()
    [[[0.0, 0.25], [0.5, 1.0]], [[0.0, 0.0], [0.0, 0.0]]]
    """
    xp = get_array_module(windows)
    lo = windows.min(axis=(-2, -1), keepdims=True)
    span = windows.max(axis=(-2, -1), keepdims=True) - lo
    return ((windows - lo) / xp.where(span > 0, span, 1)).astype(windows.dtype, copy=False)


def extract_kernel(full: Any, size: int) -> Any:
    """The ``size x size`` support around the origin of a circular kernel ``(..., H, W)``.

    >>> import numpy as np
    >>> full = np.zeros((8, 8)); full[0, 0], full[0, 1], full[-1, 0] = 0.5, 0.3, 0.2  # wrapped around the origin
    >>> extract_kernel(full, 3).tolist()
    [[0.0, 0.2, 0.0], [0.0, 0.5, 0.3], [0.0, 0.0, 0.0]]
    """
    xp = get_array_module(full)
    H, W = full.shape[-2:]
    r = size // 2
    iy = (xp.arange(size) - r) % H
    ix = (xp.arange(size) - r) % W
    return full[..., iy[:, None], ix[None, :]]


def per_image(xp: Any, values: Any, dtype: Any) -> Any:
    """Host per-image scalars ``(B,)`` as a ``(B, 1, 1)`` array of ``xp`` that broadcasts over windows.

    >>> import numpy as np
    >>> weights = per_image(np, [1.0, 2.0], np.float32)
    >>> weights.shape, weights.dtype, (weights * np.ones((2, 3, 3))).sum(axis=(1, 2)).tolist()
    ((2, 1, 1), dtype('float32'), [9.0, 18.0])
    """
    return xp.asarray(np.asarray(values, dtype=np.float64).reshape(-1, 1, 1), dtype=dtype)


def opt_fft_size(n: int) -> int:
    """The padded grid of Pan's code (Cho's ``opt_fft_size``): the smallest ``m >= n`` of the form
    ``2^a 3^b 5^c 7^d``, or such a number times 11 or 13 (FFTW's fast sizes; pocketfft's and
    cuFFT's too).

    >>> [opt_fft_size(n) for n in (97, 121, 143, 176)]  # 2 7^2, 5^3, 2^4 3^2, 2^4 11
    [98, 125, 144, 176]
    """
    m = max(int(n), 1)
    while True:
        r = m
        for p in (2, 3, 5, 7):
            while r % p == 0:
                r //= p
        if r in (1, 11, 13):
            return m
        m += 1


def fix_size(kernel: Any, size: int) -> Any:
    """Grow or trim ``(B, h, w)`` kernels to ``size x size`` one row/column at a time (Pan's ``fixsize``).

    Trimming drops the lighter of the two outer rows (columns); growing adds a zero row
    (column) on the side of the heavier one.  The choice is made per kernel.

    >>> import numpy as np
    >>> kernel = np.zeros((1, 4, 4)); kernel[0, 2:, 2:] = [[0.1, 0.2], [0.3, 0.4]]
    >>> fix_size(kernel, 3)[0].tolist()  # the empty first row and column go
    [[0.0, 0.0, 0.0], [0.0, 0.1, 0.2], [0.0, 0.3, 0.4]]
    >>> fix_size(np.ones((2, 3, 3)), 5).shape
    (2, 5, 5)
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


def cg_kernel_step(
    latent: tuple[Any, Any],
    blurred: tuple[Any, Any],
    size: int,
    weight: float = 2.0,
    iterations: int = 20,
    tol: float = 1e-5,
    joint: bool = False,
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
    joint : one kernel for all ``B`` samples: the normal equations (the autocorrelation and the
        cross-correlation) are averaged over the samples, the prior ``weight`` counted once, so
        ``B`` copies of one sample give that sample's kernel

    Returns
    -------
    (B, size, size) float64 kernels (not clipped nor normalised); ``(1, size, size)`` when ``joint``.

    >>> import numpy as np
    >>> from kernels_gpu.backend import irfft2, rfft2
    >>> from kernels_gpu.conv import kernel_otf
    >>> sharp = np.random.default_rng(0).standard_normal((2, 48, 48))
    >>> truth = np.zeros((5, 5)); truth[2, 1:4] = 1 / 3
    >>> blurred = irfft2(rfft2(sharp) * kernel_otf(truth, (48, 48)), s=(48, 48))
    >>> k = cg_kernel_step((sharp,), (blurred,), 5, weight=1e-6, iterations=50)
    >>> k.shape, bool(np.abs(k - truth).max() < 1e-3)
    ((2, 5, 5), True)
    >>> cg_kernel_step((sharp,), (blurred,), 5, joint=True).shape
    (1, 5, 5)
    """
    from ..conv import kernel_otf

    xp = get_array_module(latent[0])
    h, w = latent[0].shape[-2:]
    fs = [rfft2(s) for s in latent]
    fb = [rfft2(b) for b in blurred]
    auto = sum(f.real**2 + f.imag**2 for f in fs)
    cross = sum(f.conj() * g for f, g in zip(fs, fb, strict=True))
    if joint:
        auto = auto.mean(axis=0, keepdims=True)
        cross = cross.mean(axis=0, keepdims=True)
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

    batch = 1 if joint else latent[0].shape[0]
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
