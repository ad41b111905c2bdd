"""Image-quality metrics for deblurring: PSNR, shift-tolerant SSD and Levin et al.'s error ratio.

All functions take ``(..., H, W)`` arrays (any leading batch axes, broadcast
between the two arguments) on NumPy or CuPy and compute in float64: the SSDs
are differences of sums over tens of thousands of pixels, where float32 would
lose the small values that matter.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .backend import get_array_module
from .conv import correlate
from .kernels import normalize

__all__ = ["aligned_ssd", "error_ratio", "psnr"]


def _crop(x: Any, crop: int) -> Any:
    if crop < 0:
        raise ValueError(f"crop must be >= 0, got {crop}")
    if crop == 0:
        return x
    if 2 * crop >= min(x.shape[-2:]):
        raise ValueError(f"crop {crop} leaves nothing of a {x.shape[-2]}x{x.shape[-1]} image")
    return x[..., crop:-crop, crop:-crop]


def psnr(estimate: Any, reference: Any, data_range: float = 1.0, crop: int = 0) -> Any:
    """Peak signal-to-noise ratio ``10 log10(data_range^2 / MSE)`` per image.

    Parameters
    ----------
    estimate, reference : (..., H, W) float
        Batch axes broadcast.
    data_range : float
        Peak-to-peak range of the intensities (1 for [0, 1] images, 255 for 8-bit).
    crop : int
        Pixels dropped on every side before the MSE.

    Returns
    -------
    (...) float64 array (0-d for single images); ``inf`` where the images are equal.

    >>> import numpy as np
    >>> round(float(psnr(np.full((4, 4), 0.5), np.full((4, 4), 0.6))), 6)  # MSE 0.01: 20 dB
    20.0
    >>> float(psnr(np.zeros((2, 2)), np.zeros((2, 2))))
    inf
    """
    xp = get_array_module(estimate, reference)
    a = _crop(xp.asarray(estimate, dtype=xp.float64), crop)
    b = _crop(xp.asarray(reference, dtype=xp.float64), crop)
    mse = ((a - b) ** 2).mean(axis=(-2, -1))
    positive = mse > 0
    return xp.where(positive, 10 * xp.log10(data_range**2 / xp.where(positive, mse, 1)), xp.inf)


def _shift_grid(max_shift: float, step: float) -> np.ndarray:
    """``-max_shift : step : max_shift`` as Levin's MATLAB colon gives it (host float64)."""
    if step <= 0 or max_shift < 0:
        raise ValueError(f"need step > 0 and max_shift >= 0, got {step} and {max_shift}")
    n = math.floor(max_shift / step + 1e-9)
    return step * np.arange(-n, n + 1, dtype=np.float64)


def _window_sums(x: Any, size: tuple[int, int]) -> Any:
    """Sums of ``x`` over every ``size`` window ('valid' positions), by an integral image."""
    xp = get_array_module(x)
    lead = [(0, 0)] * (x.ndim - 2)
    s = xp.pad(x.cumsum(axis=-2).cumsum(axis=-1), [*lead, (1, 0), (1, 0)])
    h, w = size
    return s[..., h:, w:] - s[..., :-h, w:] - s[..., h:, :-w] + s[..., :-h, :-w]


def aligned_ssd(
    estimate: Any,
    reference: Any,
    max_shift: float = 5.0,
    step: float = 0.25,
    crop: int = 15,
    return_shift: bool = False,
) -> Any:
    """Smallest SSD between a sub-pixel-shifted estimate and a cropped reference.

    Levin et al.'s ``comp_upto_shift``: for every shift ``(dy, dx)`` on the grid
    ``-max_shift : step : max_shift`` in both axes (41 x 41 = 1681 shifts by
    default), the estimate is sampled by bilinear interpolation at
    ``(y + dy, x + dx)`` for each pixel ``(y, x)`` of the reference with ``crop``
    pixels removed on every side; the result is the smallest sum of squared
    differences.  This absorbs the translation that blind deconvolution cannot
    determine.

    The search is exact, not coarse-to-fine.  Bilinear interpolation with a fixed
    fractional part is one fixed image, so for each of the (1 / step)^2
    fractional parts the SSDs of all integer parts come at once from
    ``sum e^2 + sum r^2 - 2 (e correlated with r)``: one FFT correlation plus
    an integral image.  The cancellation in that sum costs ~1e-11 absolute in
    float64, far below any SSD of interest.

    Parameters
    ----------
    estimate, reference : (..., H, W) float
        Batch axes broadcast.
    max_shift, step : float
        Shift grid, in pixels.
    crop : int
        Border removed from the reference, at least ``ceil(max_shift)`` so that
        every shifted sample lies inside the estimate.
    return_shift : bool
        Also return the minimising shift.

    Returns
    -------
    ssd : (...) float64
    shift : (..., 2) float64, only if ``return_shift``
        ``(dy, dx)``: ``estimate(y + dy, x + dx)`` best matches ``reference(y, x)``,
        so an estimate that is the reference moved by ``(+a, +b)`` gives ``(a, b)``.

    >>> import numpy as np
    >>> reference = np.random.default_rng(0).random((24, 24))
    >>> estimate = np.roll(reference, (2, -1), axis=(0, 1))  # moved 2 px down and 1 px left
    >>> ssd, shift = aligned_ssd(estimate, reference, max_shift=3, step=0.5, crop=3, return_shift=True)
    >>> round(float(ssd), 6), shift.tolist()
    (0.0, [2.0, -1.0])
    """
    xp = get_array_module(estimate, reference)
    est = xp.asarray(estimate, dtype=xp.float64)
    ref = xp.asarray(reference, dtype=xp.float64)
    if est.shape[-2:] != ref.shape[-2:]:
        raise ValueError(f"image sizes differ: {est.shape[-2:]} and {ref.shape[-2:]}")
    if crop < math.ceil(max_shift):
        raise ValueError(f"crop {crop} must be at least ceil(max_shift) = {math.ceil(max_shift)}")
    H, W = est.shape[-2:]
    ref_c = _crop(ref, crop)
    Hc, Wc = ref_c.shape[-2:]
    lead = np.broadcast_shapes(est.shape[:-2], ref.shape[:-2])
    ref_energy = (ref_c**2).sum(axis=(-2, -1))[..., None, None]

    shifts = _shift_grid(max_shift, step)
    whole = np.floor(shifts).astype(np.int64)
    frac = np.round(shifts - whole, 9)
    lo, hi = int(whole.min()), int(whole.max())

    # One extra row and column so the bilinear stencil never indexes past the
    # end; it only ever gets weight 0 (see the crop bound above).
    est_p = xp.pad(est, [(0, 0)] * (est.ndim - 2) + [(0, 1), (0, 1)], mode="edge")
    ssd = xp.empty((*lead, shifts.size, shifts.size), dtype=xp.float64)
    for fy in map(float, np.unique(frac)):
        rows = np.nonzero(frac == fy)[0]
        for fx in map(float, np.unique(frac)):
            cols = np.nonzero(frac == fx)[0]
            interp = (
                (1 - fy) * (1 - fx) * est_p[..., :-1, :-1]
                + (1 - fy) * fx * est_p[..., :-1, 1:]
                + fy * (1 - fx) * est_p[..., 1:, :-1]
                + fy * fx * est_p[..., 1:, 1:]
            )
            region = interp[..., crop + lo : H - crop + hi, crop + lo : W - crop + hi]
            # table[..., iy - lo, ix - lo] = SSD at integer offset (iy, ix) on top of (fy, fx)
            table = _window_sums(region**2, (Hc, Wc)) + ref_energy - 2 * correlate(region, ref_c, "valid")
            iy = xp.asarray(whole[rows] - lo)[:, None]
            ix = xp.asarray(whole[cols] - lo)[None, :]
            ssd[..., xp.asarray(rows)[:, None], xp.asarray(cols)[None, :]] = table[..., iy, ix]

    flat = ssd.reshape((*lead, -1))
    best = flat.argmin(axis=-1)
    value = xp.maximum(xp.take_along_axis(flat, best[..., None], axis=-1)[..., 0], 0)
    if not return_shift:
        return value
    grid = xp.asarray(shifts)
    shift = xp.stack([grid[best // shifts.size], grid[best % shifts.size]], axis=-1)
    return value, shift


def error_ratio(
    blurred: Any,
    sharp: Any,
    estimated_kernel: Any,
    true_kernel: Any,
    deconvolve_fn: Callable[[Any, Any], Any] | None = None,
    *,
    max_shift: float = 5.0,
    step: float = 0.25,
    crop: int = 15,
) -> Any:
    """Levin et al. (CVPR 2009) error ratio of an estimated kernel.

    ``ER = SSD(deconvolve(blurred, estimated), sharp) / SSD(deconvolve(blurred, true), sharp)``
    with both SSDs from :func:`aligned_ssd` and both deconvolutions by the same
    non-blind method, so the ratio isolates the kernel error: 1 for the true
    kernel, and values above about 2-3 count as failures.

    Levin et al. deconvolve with their IRLS sparse-prior solver (``deconvSps``,
    ``|grad|^0.8``, 70 CG steps).  The default here is
    :func:`kernels_gpu.deconv.deconvolve` with its defaults (Krishnan & Fergus,
    ``alpha = 2/3``, ``lam = 2000``), a similar sparse prior that is much faster
    and batched; absolute ERs therefore differ somewhat from published ones.

    Parameters
    ----------
    blurred, sharp : (B, H, W) or (H, W) float
        Blurred images and their ground truth, same size, intensities in [0, 1].
    estimated_kernel, true_kernel : (h, w) or (B, h, w) float
        Convolution orientation; the two sizes may differ (estimates are often
        a few pixels larger).  Each is normalised to sum 1 first; a translation
        of up to ``max_shift`` pixels is absorbed by the aligned SSD.
    deconvolve_fn : callable, optional
        ``deconvolve_fn(blurred, kernel) -> deconvolved`` of ``blurred``'s shape.
    max_shift, step, crop
        Passed to :func:`aligned_ssd` (Levin's values by default).

    Returns
    -------
    (B,) or () float64; ``inf`` if only the true kernel gives a perfect
    reconstruction, 1 if both do.

    >>> import numpy as np
    >>> from kernels_gpu.conv import convolve
    >>> from kernels_gpu.kernels import delta
    >>> sharp = np.kron(np.random.default_rng(0).random((8, 8)), np.ones((6, 6)))
    >>> kernel = np.zeros((7, 7)); kernel[3, :] = 1 / 7
    >>> blurred = convolve(np.pad(sharp, 3, mode="symmetric"), kernel, "valid")
    >>> grid = {"max_shift": 2, "step": 0.5, "crop": 4}  # a coarse shift search keeps the example quick
    >>> float(error_ratio(blurred, sharp, kernel, kernel, **grid))  # the true kernel: 1
    1.0
    >>> bool(error_ratio(blurred, sharp, delta(7), kernel, **grid) > 3)  # no deblurring at all: a failure
    True
    """
    if deconvolve_fn is None:
        from .deconv import deconvolve as deconvolve_fn
    xp = get_array_module(blurred, sharp, estimated_kernel, true_kernel)
    blurred = xp.asarray(blurred)
    estimated = normalize(xp.asarray(estimated_kernel, dtype=xp.float64))
    truth = normalize(xp.asarray(true_kernel, dtype=xp.float64))
    kw = {"max_shift": max_shift, "step": step, "crop": crop}
    ssd_estimated = aligned_ssd(deconvolve_fn(blurred, estimated), sharp, **kw)
    ssd_true = aligned_ssd(deconvolve_fn(blurred, truth), sharp, **kw)
    positive = ssd_true > 0
    ratio = ssd_estimated / xp.where(positive, ssd_true, 1)
    return xp.where(positive, ratio, xp.where(ssd_estimated > 0, xp.inf, 1.0))
