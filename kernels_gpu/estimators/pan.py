"""The blind deconvolution framework of Pan et al., batched: shared by ``pan-l0`` and ``dark-channel``.

Pan, Hu, Su & Yang, "Deblurring text images via L0-regularized intensity and
gradient prior", CVPR 2014, following the authors' MATLAB code (``blind_deconv.m``,
``blind_deconv_main.m``, ``L0Deblur_whole.m``, ``estimate_psf.m``) and its demo
defaults.  The dark channel estimator (:mod:`.dark_channel`, Pan, Sun, Pfister &
Yang, CVPR 2016) uses the same framework: only the pixel term of the latent-image
step differs (a :class:`PixelTerm`; :mod:`.pan_l0` has the intensity term).

Coarse to fine over scales ``sqrt(0.5)^s`` (kernel sizes ``ceil(ks ratio^s)``
made odd, down to about 5 px); at the coarsest scale the kernel starts as a
2-pixel horizontal bar, and it is carried up as ``resizeKer`` does: MATLAB's
bicubic ``imresize`` by ``sqrt 2`` (:func:`kernels_gpu.pyramid.imresize_cubic`), clipped,
Pan's ``fixsize``, normalised.  At every scale the blurred window is downsampled from the
full window by Levin's ``downSmpImC`` and padded once to a fast FFT size (``opt_fft_size``)
``>= H + ks - 1`` by the Liu & Jia wrap boundary; then, ``iterations`` times:

1. latent image: L0 intensity + gradient prior by half-quadratic splitting
   (``L0Deblur_whole``), started from the blurred window: ``beta_p`` from
   ``2 lam_pixel``, doubled until 8; inside, ``beta`` from ``2 lam_grad``,
   doubled until 1e5; cropped back to the window;
2. salient gradients (``threshold_pxpy_v1``): the latent's 2x2 gradients with
   ``|grad|^2`` below a threshold are zeroed.  The threshold is estimated once,
   on the coarsest blurred window (the largest multiple of 6e-5 such that each
   of 4 orientation bins keeps ``max(20 ks, 10)`` pixels: a per-image
   partition), restarts from that value at every scale and is divided by 1.1
   after each use (times 0.81 while it would mask everything);
3. kernel: ``min |Sx (*) k - Bx|^2 + |Sy (*) k - By|^2 + 2 |k|^2`` on the
   ``ks x ks`` support by 20 conjugate-gradient steps from the uniform kernel
   (per-sample CG scalars, see :func:`._common.cg_kernel_step`); entries below
   5 % of the peak zeroed, normalised, 8-connected components lighter than 0.1
   removed, clipped, normalised;
4. ``lam <- max(lam / 1.1, 1e-4)`` for both weights (carried across scales).

After each scale the kernel is centred on its centroid (``adjust_psf_center``);
at the finest, entries below 1/20 of the peak are zeroed.  At the coarsest
scale, if ``0 < threshold < lam_grad / 10`` both weights become the threshold
(text version only).

Batching: a batch of windows ``(B, H, W)`` that share a kernel size runs as one
array; everything is elementwise, an FFT over the last two axes, a per-image
partition, or a small per-sample CG.  The few per-image scalars that steer loops
(``lam``, the gradient threshold, the ``beta`` schedules) live on the host, so
images whose schedules differ still share every array operation (an image that
has finished a loop is held fixed while the others go on).  On the CPU a large
batch is cut into chunks of a few windows (:data:`CPU_CHUNK_BYTES`): the latent
step streams its arrays through hundreds of elementwise passes per scale, and
121 windows at once ran 1.6 times slower per window than one at a time.

Boundary: the Liu & Jia wrap boundary of the reference, not the project's
edgetaper.  The wrap pads the window with a smooth periodic extension and keeps
every observed pixel as data (the latent is solved on the padded grid and
cropped), where edgetaper would overwrite a kernel-wide band of each window with
its own blur, a band that is a large share of a 228 px window at 55 px kernels.
It costs three small Laplace solves (DST-I) per window and scale.

Departures from the reference code (version 2 removed two more: a bilinear kernel
zoom between scales and 5-smooth FFT grids):

* the latent images are float32 where MATLAB computes in double (the CG kernel
  step runs in float64 on its small normal equations); the L0 thresholds make
  the result sensitive to such rounding, and BENCHMARKS.md measures how much:
  float64 latents score inside the spread of inputs re-drawn below their
  quantisation step, at 1.76 times the CPU time;
* windows whose grey levels leave [0, 1] are min-max normalised (the reference
  expects [0, 1] images; its weights are absolute);
* the final kernel is centred once more after the last threshold (an integer
  shift), so that every kernel meets the project's contract (centroid within
  half a pixel of the middle); the reference centres only before it.

``beta_pixel_max`` is 8, as in the reference's
``L0Deblur_whole_fast`` and the dark channel code; one public copy of
``L0Deblur_whole`` (a derivative repository) runs that loop up to 2e3 instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .. import kernels as kops
from ..backend import get_array_module, irfft2, rfft2, to_numpy
from ..boundary import wrap_boundary
from ..conv import kernel_otf
from ..gradients import circular_gradients, circular_gradients_adjoint, difference_otf_energy, valid_gradients
from ..pyramid import imresize_cubic, levin_downsample
from ._common import cg_kernel_step, fix_size, normalize_windows, opt_fft_size, per_image

__all__ = [
    "CPU_CHUNK_BYTES",
    "PanParams",
    "PixelTerm",
    "bar_kernel",
    "blind_deconv",
    "clean_kernel",
    "gradient_threshold",
    "l0_deblur",
    "pyramid",
    "salient_gradients",
    "upscale_kernel",
]


@dataclass(frozen=True)
class PanParams:
    """Parameters shared by ``pan-l0`` and ``dark-channel`` (the reference demo's defaults).

    lam_pixel : initial weight of the L0 pixel term (intensity, or dark channel)
    lam_grad : initial weight of the L0 gradient term
    lam_ratio : per-iteration decay of both weights (carried across scales)
    lam_min : floor of both weights
    iterations : latent/kernel alternations per scale (``xk_iter``)
    scale_factor : size ratio between pyramid levels
    min_kernel_size : the coarsest kernel is about this size
    kappa : growth of ``beta`` and ``beta_pixel`` in the half-quadratic splitting
    beta_max : end of the gradient continuation
    beta_pixel_max : end of the pixel-term continuation
    kernel_weight : Tikhonov weight of the kernel step
    cg_iterations, cg_tol : conjugate-gradient steps and residual tolerance of the kernel step
    cg_threshold : after each kernel step, entries below this fraction of the peak are zeroed
    min_component_mass : 8-connected components lighter than this are removed
    min_kernel_value : entries below this (after normalisation) are zeroed at each step; 0 disables
    kernel_threshold : at the finest scale, entries below this fraction of the peak are zeroed
    gradient_pixels : salient-gradient selection keeps ``max(gradient_pixels * ks, 10)`` per orientation
    threshold_step : grid of the salient-gradient threshold
    threshold_decay : the threshold is divided by this after each use
    threshold_retry : factor applied while the threshold would mask every gradient
    coarse_lambda_rule : at the coarsest scale, use the threshold as both weights when it is below lam_grad / 10

    >>> params = PanParams()
    >>> params.iterations, round(params.scale_factor, 4), params.beta_pixel_max
    (5, 0.7071, 8.0)
    >>> PanParams(kappa=1.0)
    Traceback (most recent call last):
    ValueError: PanParams: kappa must be > 1, got 1.0
    """

    lam_pixel: float = 4e-3
    lam_grad: float = 4e-3
    lam_ratio: float = 1 / 1.1
    lam_min: float = 1e-4
    iterations: int = 5
    scale_factor: float = math.sqrt(0.5)
    min_kernel_size: int = 5
    kappa: float = 2.0
    beta_max: float = 1e5
    beta_pixel_max: float = 8.0
    kernel_weight: float = 2.0
    cg_iterations: int = 20
    cg_tol: float = 1e-5
    cg_threshold: float = 0.05
    min_component_mass: float = 0.1
    min_kernel_value: float = 0.0
    kernel_threshold: float = 0.05
    gradient_pixels: int = 20
    threshold_step: float = 6e-5
    threshold_decay: float = 1.1
    threshold_retry: float = 0.81
    coarse_lambda_rule: bool = True

    def __post_init__(self) -> None:
        name = type(self).__name__
        if not (self.lam_pixel > 0 and self.lam_grad > 0 and self.lam_min > 0):
            raise ValueError(f"{name}: lam_pixel, lam_grad and lam_min must be > 0")
        if not 0 < self.lam_ratio <= 1:
            raise ValueError(f"{name}: lam_ratio must be in (0, 1], got {self.lam_ratio}")
        if self.iterations < 1 or self.cg_iterations < 1:
            raise ValueError(f"{name}: iterations and cg_iterations must be >= 1")
        if not 0 < self.scale_factor < 1:
            raise ValueError(f"{name}: scale_factor must be in (0, 1), got {self.scale_factor}")
        if self.min_kernel_size < 3:
            raise ValueError(f"{name}: min_kernel_size must be >= 3, got {self.min_kernel_size}")
        if self.kappa <= 1:
            raise ValueError(f"{name}: kappa must be > 1, got {self.kappa}")
        if not (self.beta_max > 0 and self.beta_pixel_max > 0 and self.kernel_weight >= 0 and self.cg_tol >= 0):
            raise ValueError(f"{name}: beta_max and beta_pixel_max must be > 0, kernel_weight and cg_tol >= 0")
        for field in ("cg_threshold", "min_component_mass", "min_kernel_value", "kernel_threshold"):
            if not 0 <= getattr(self, field) < 1:
                raise ValueError(f"{name}: {field} must be in [0, 1), got {getattr(self, field)}")
        if self.gradient_pixels < 1 or self.threshold_step <= 0:
            raise ValueError(f"{name}: gradient_pixels must be >= 1 and threshold_step > 0")
        if self.threshold_decay < 1 or not 0 < self.threshold_retry < 1:
            raise ValueError(f"{name}: threshold_decay must be >= 1 and threshold_retry in (0, 1)")


class PixelTerm(Protocol):
    """The pixel term of the latent-image step of :func:`l0_deblur` (intensity or dark channel).

    >>> import numpy as np
    >>> from kernels_gpu.estimators.pan_l0 import intensity_term  # a PixelTerm
    >>> latent, lam = np.array([[[0.05, 0.75]]], dtype=np.float32), np.array([4e-3])
    >>> beta = intensity_term.beta_start(latent, lam)
    >>> beta.tolist(), intensity_term(latent, lam, beta).tolist()  # 0.05^2 < lam / beta = 0.5 < 0.75^2
    ([0.008], [[[0.0, 0.75]]])
    """

    def beta_start(self, latent: Any, lam: np.ndarray) -> np.ndarray:
        """First ``beta_p`` of each image, ``(B,)`` host float64, from the blurred images and the weights ``lam``."""
        ...

    def __call__(self, latent: Any, lam: np.ndarray, beta: np.ndarray) -> Any:
        """The auxiliary ``u`` ``(B, H, W)`` of ``latent`` ``(B, H, W)`` for weights ``lam`` and ``beta`` ``(B,)``."""
        ...


def l0_deblur(
    blurred: Any, kotf: Any, lam_pixel: np.ndarray, lam_grad: np.ndarray, term: PixelTerm, params: PanParams
) -> Any:
    """Latent images under the L0 pixel + gradient prior (``L0Deblur_whole``), batched.

    Minimises ``|k (*) S - B|^2 + lam_pixel |P(S)|_0 + lam_grad |grad S|_0`` by half-quadratic
    splitting, circularly on the (already wrap-padded) grid, from ``S = B``: an outer loop over
    ``beta_p`` (from ``term.beta_start``, times ``kappa`` until ``beta_pixel_max``) sets the pixel
    auxiliary ``u = term(S)``; an inner loop over ``beta`` (from ``2 lam_grad``, times ``kappa``
    until ``beta_max``) hard-thresholds the circular gradients at ``lam_grad / beta`` and solves
    ``S = F^-1[(conj(K) F B + beta F D^T g + beta_p F u) / (|K|^2 + beta |F D|^2 + beta_p)]``.

    Parameters
    ----------
    blurred : (B, H, W) float32, the padded blurred windows
    kotf : (B, H, W//2+1) complex, kernel transfer functions on that grid
    lam_pixel, lam_grad : (B,) host float64 weights per image
    term : the pixel term (:data:`intensity_term` or the dark channel's)

    Returns
    -------
    (B, H, W) float32 latent images.

    >>> import numpy as np
    >>> from kernels_gpu.conv import kernel_otf
    >>> from kernels_gpu.kernels import delta
    >>> from kernels_gpu.estimators.pan_l0 import intensity_term
    >>> rng = np.random.default_rng(0)
    >>> blurred = (np.kron(rng.random((1, 6, 6)), np.ones((8, 8))) + 0.02 * rng.standard_normal((1, 48, 48)))
    >>> blurred = blurred.astype(np.float32)
    >>> weights = np.array([4e-3])
    >>> latent = l0_deblur(blurred, kernel_otf(delta(3, (1,)), (48, 48)), weights, weights, intensity_term, PanParams())
    >>> def edges(x):
    ...     return float((np.abs(np.diff(x, axis=-1)) > 1e-3).mean())
    >>> latent.shape, latent.dtype, edges(latent) < edges(blurred) / 2  # the noise's gradients go
    ((1, 48, 48), dtype('float32'), True)
    """
    xp = get_array_module(blurred)
    H, W = blurred.shape[-2:]
    dtype = blurred.dtype
    lam_pixel = np.asarray(lam_pixel, dtype=np.float64)
    lam_grad = np.asarray(lam_grad, dtype=np.float64)
    data = kotf.conj() * rfft2(blurred)
    ktk = (kotf.real**2 + kotf.imag**2).astype(dtype)
    dtd = difference_otf_energy((H, W), xp, dtype)
    latent = blurred
    gx = gy = adj = sq = keep = den = None
    beta_pixel = np.asarray(term.beta_start(blurred, lam_pixel), dtype=np.float64)
    while True:
        outer = beta_pixel < params.beta_pixel_max
        if not outer.any():
            return latent
        bp_host = np.where(outer, beta_pixel, 1.0)
        u = term(latent, lam_pixel, bp_host)
        bp = per_image(xp, np.where(outer, beta_pixel, 0.0), dtype)
        fixed = rfft2(u)
        fixed *= bp
        fixed += data
        den_fixed = ktk + bp
        beta = 2 * lam_grad
        while True:
            inner = outer & (beta < params.beta_max)
            if not inner.any():
                break
            b = per_image(xp, beta, dtype)
            if gx is None:  # work arrays, reused: fresh large arrays cost page faults on every step
                gx, gy, adj, sq = (xp.empty_like(latent) for _ in range(4))
                keep = xp.empty(latent.shape, dtype=bool)
                den = xp.empty(data.shape, dtype=dtype)
            circular_gradients(latent, out=(gx, gy))
            xp.multiply(gx, gx, out=adj)
            adj += xp.multiply(gy, gy, out=sq)
            xp.greater_equal(adj, per_image(xp, lam_grad / beta, dtype), out=keep)
            gx *= keep
            gy *= keep
            fs = rfft2(circular_gradients_adjoint(gx, gy, out=adj))
            fs *= b
            fs += fixed
            xp.multiply(dtd, b, out=den)
            den += den_fixed
            fs /= den
            new = irfft2(fs, s=(H, W), overwrite=True)
            latent = new if inner.all() else xp.where(per_image(xp, inner, bool), new, latent)
            beta = beta * params.kappa
        beta_pixel = beta_pixel * params.kappa


def pyramid(kernel_size: int, params: PanParams) -> tuple[list[int], list[float]]:
    """Kernel sizes and image ratios, finest first (``blind_deconv.m``): ``ceil(ks r^s)`` made odd.

    >>> sizes, ratios = pyramid(25, PanParams())
    >>> sizes, [round(r, 3) for r in ratios]
    ([25, 19, 13, 9, 7], [1.0, 0.707, 0.5, 0.354, 0.25])
    """
    r = params.scale_factor
    levels = max(math.floor(math.log(params.min_kernel_size / kernel_size) / math.log(r)), 0) + 1
    ratios = [float(v) for v in r ** np.arange(levels)]
    sizes = [math.ceil(kernel_size * v) for v in ratios]
    sizes = [s + 1 - s % 2 for s in sizes]
    return sizes, ratios


def bar_kernel(size: int, batch: int, xp: Any) -> Any:
    """The coarsest scale's start: ``k(c, c:c+1) = 1/2`` with MATLAB's ``c = (size - 1) / 2`` (1-based).

    >>> import numpy as np
    >>> kernel = bar_kernel(5, 1, np)
    >>> kernel.shape, kernel[0, 1].tolist(), float(kernel.sum())  # row 1, columns 1-2 (MATLAB's k(2, 2:3))
    ((1, 5, 5), [0.0, 0.5, 0.5, 0.0, 0.0], 1.0)
    """
    k = xp.zeros((batch, size, size), dtype=xp.float32)
    c = (size - 1) // 2 - 1
    k[:, max(c, 0), max(c, 0) : max(c, 0) + 2] = 0.5
    return k


def upscale_kernel(kernel: Any, size: int, ratio: float) -> Any:
    """Carry kernels to the next finer scale (``resizeKer``).

    Bicubic ``imresize`` by ``1 / ratio``, negative lobes clipped, ``fixsize`` to ``size``, normalised.

    >>> import numpy as np
    >>> finer = upscale_kernel(bar_kernel(5, 2, np), 7, PanParams().scale_factor)
    >>> finer.shape, np.round(finer.sum(axis=(-2, -1)), 6).tolist(), bool((finer >= 0).all())
    ((2, 7, 7), [1.0, 1.0], True)
    """
    xp = get_array_module(kernel)
    zoomed = xp.maximum(imresize_cubic(kernel, 1 / ratio), 0)
    return kops.normalize(fix_size(zoomed, size))


def gradient_threshold(gx: Any, gy: Any, kernel_size: int, params: PanParams) -> np.ndarray:
    """Per-image threshold on ``|grad|^2`` (``threshold_pxpy_v1``'s estimate), ``(B,)`` on the host.

    Pixels are split by gradient orientation ``atan(gy / gx)`` into 4 bins ([0, pi/4),
    [pi/4, pi/2), [-pi/4, 0), [-pi/2, -pi/4)); the threshold is the largest multiple of
    ``threshold_step`` (up to 2) such that every bin keeps ``max(gradient_pixels * ks, 10)``
    pixels at or above it: the smallest over bins of that many-th largest ``|grad|^2``,
    rounded down to the grid, found by one partition per bin.  0 when a bin has too few pixels.

    >>> import numpy as np
    >>> from kernels_gpu.gradients import valid_gradients
    >>> gx, gy = valid_gradients(np.random.default_rng(0).random((1, 32, 32)))
    >>> params = PanParams()
    >>> threshold = gradient_threshold(gx, gy, 3, params)
    >>> bool(threshold[0] > 0), round(float(threshold[0] / params.threshold_step), 6).is_integer()
    (True, True)
    >>> gradient_threshold(gx, gy, 3, PanParams(gradient_pixels=1000)).tolist()  # fewer pixels than asked for
    [0.0]
    """
    xp = get_array_module(gx)
    batch = gx.shape[0]
    gx = gx.reshape(batch, -1).astype(xp.float64)
    gy = gy.reshape(batch, -1).astype(xp.float64)
    magnitude = gx * gx + gy * gy
    top = math.floor(2 / params.threshold_step + 1e-9) * params.threshold_step
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = gy / gx  # atan is monotonic: compare the ratio with tan(+-pi/4) = +-1 instead
    bins = [
        (ratio >= 0) & (ratio < 1),
        (ratio >= 1) & (ratio < xp.inf),
        (ratio >= -1) & (ratio < 0),
        ratio < -1,
    ]
    need = max(params.gradient_pixels * kernel_size, 10)
    n = magnitude.shape[-1]
    if need > n:
        return np.zeros(batch)
    lowest = None
    for members in bins:
        values = xp.where(members & (magnitude <= top), magnitude, -1.0)
        kth = xp.partition(values, n - need, axis=-1)[:, n - need]
        lowest = kth if lowest is None else xp.minimum(lowest, kth)
    lowest = np.maximum(to_numpy(lowest), 0.0)
    step = params.threshold_step
    steps = np.floor(lowest / step)
    steps = np.where((steps + 1) * step <= lowest, steps + 1, steps)  # the division may round either way
    steps = np.where(steps * step > lowest, steps - 1, steps)
    return steps * step


def salient_gradients(latent: Any, threshold: np.ndarray, params: PanParams) -> tuple[Any, Any, np.ndarray]:
    """The latent's 2x2 gradients with ``|grad|^2 < threshold`` zeroed, and the next threshold.

    While a threshold would zero every gradient of an image, it is multiplied by
    ``threshold_retry``; the returned threshold is the one used divided by ``threshold_decay``.

    >>> import numpy as np
    >>> latent = np.random.default_rng(0).random((1, 16, 16))
    >>> gx, gy, following = salient_gradients(latent, np.array([0.5]), PanParams())
    >>> kept = float(((gx * gx + gy * gy) > 0).mean())
    >>> 0 < kept < 0.5, np.round(following, 6).tolist()  # the strongest gradients; the next threshold is 0.5 / 1.1
    (True, [0.454545])
    """
    xp = get_array_module(latent)
    gx, gy = valid_gradients(latent)
    magnitude = gx * gx + gy * gy
    peak = to_numpy(magnitude.max(axis=(-2, -1))).astype(np.float64)
    used = np.asarray(threshold, dtype=np.float64).copy()
    for b in range(len(used)):
        if peak[b] <= 0:
            used[b] = 0.0
            continue
        while peak[b] < used[b]:
            used[b] *= params.threshold_retry
    keep = magnitude >= per_image(xp, used, magnitude.dtype)
    return gx * keep, gy * keep, used / params.threshold_decay


def clean_kernel(kernel: Any, params: PanParams) -> Any:
    """Per-step kernel clean-up: 5 % of peak threshold, normalise, drop light components, clip, normalise.

    >>> import numpy as np
    >>> kernel = np.zeros((1, 7, 7)); kernel[0, 3, 1:6] = [0.1, 0.3, 0.3, 0.29, 0.01]
    >>> kernel[0, 0, 0], kernel[0, 6, 6] = 0.05, -0.1  # a speck and a negative lobe
    >>> k = clean_kernel(kernel, PanParams())
    >>> np.round(k[0, 3], 3).tolist(), int((k > 0).sum()), round(float(k.sum()), 6)
    ([0.0, 0.101, 0.303, 0.303, 0.293, 0.0, 0.0], 4, 1.0)
    """
    xp = get_array_module(kernel)
    k = kops.normalize(kops.threshold(xp.maximum(kernel, 0), params.cg_threshold))
    if params.min_component_mass > 0:
        k = kops.remove_small_components(k, params.min_component_mass)
    k = xp.maximum(k, 0)
    if params.min_kernel_value > 0:
        k = xp.where(k < params.min_kernel_value, 0, k)
    return _normalize_or_delta(k)


def _normalize_or_delta(kernel: Any) -> Any:
    """Normalise to sum 1; a kernel with no mass left becomes a delta."""
    xp = get_array_module(kernel)
    k = kops.normalize(kernel)
    empty = k.sum(axis=(-2, -1), keepdims=True) <= 0
    if bool(empty.any()):
        k = xp.where(empty, kops.delta(k.shape[-1], k.shape[:-2], xp=xp, dtype=k.dtype), k)
    return k


def _unit_range(windows: Any) -> Any:
    """Windows as they are when in [0, 1]; a window with values outside is min-max normalised."""
    xp = get_array_module(windows)
    lo = windows.min(axis=(-2, -1), keepdims=True)
    hi = windows.max(axis=(-2, -1), keepdims=True)
    outside = (lo < 0) | (hi > 1)
    if not bool(outside.any()):
        return windows
    return xp.where(outside, normalize_windows(windows), windows)


def _one_scale(
    blurred: Any,
    kernel: Any,
    lam_pixel: np.ndarray,
    lam_grad: np.ndarray,
    threshold: np.ndarray,
    params: PanParams,
    term: PixelTerm,
    joint: bool = False,
) -> tuple[Any, np.ndarray, np.ndarray]:
    """``blind_deconv_main``: ``iterations`` latent/kernel alternations at one scale (one kernel if ``joint``)."""
    xp = get_array_module(blurred)
    H, W = blurred.shape[-2:]
    size = kernel.shape[-1]
    shape = (opt_fft_size(H + size - 1), opt_fft_size(W + size - 1))
    padded = wrap_boundary(blurred, shape)
    blurred_grads = valid_gradients(blurred)
    for _ in range(params.iterations):
        latent = l0_deblur(padded, kernel_otf(kernel, shape), lam_pixel, lam_grad, term, params)
        gx, gy, threshold = salient_gradients(latent[:, :H, :W], threshold, params)
        k = cg_kernel_step(
            (gx, gy), blurred_grads, size, params.kernel_weight, params.cg_iterations, params.cg_tol, joint
        )
        kernel = clean_kernel(k, params).astype(xp.float32)
        lam_pixel = np.maximum(lam_pixel * params.lam_ratio, params.lam_min)
        lam_grad = np.maximum(lam_grad * params.lam_ratio, params.lam_min)
    return kernel, lam_pixel, lam_grad


#: On the CPU a batch runs in chunks whose padded finest-scale windows take at most this many bytes
#: per float32 array: the latent-image step makes hundreds of elementwise passes per scale, and
#: arrays that stay in the processor's cache make them several times cheaper than one large batch
#: streamed from memory (BENCHMARKS.md).  Every window's arithmetic is the same either way.
CPU_CHUNK_BYTES = 2 << 20


def blind_deconv(windows: Any, kernel_size: int, params: PanParams, term: PixelTerm, joint: bool = False) -> Any:
    """The coarse-to-fine framework of Pan et al. (``blind_deconv.m``) with the pixel term ``term``.

    Parameters
    ----------
    windows : (B, H, W) float, grey levels in [0, 1] (a window outside [0, 1] is min-max normalised)
    kernel_size : odd int >= 3
    params : PanParams (or a subclass)
    term : the pixel term of the latent-image step
    joint : one kernel for all windows (windows of one image): each window keeps its latent
        image, its weights and its gradient threshold, and the CG kernel step averages the
        windows' normal equations (``joint=True`` of :func:`._common.cg_kernel_step`)

    Returns
    -------
    (B, kernel_size, kernel_size) float32 kernels: sum 1, centred, convolution orientation;
    ``(1, kernel_size, kernel_size)`` when ``joint``.

    >>> import numpy as np
    >>> from kernels_gpu.estimators.pan_l0 import PanL0Params, intensity_term
    >>> windows = np.random.default_rng(0).random((2, 48, 48), dtype=np.float32)
    >>> params = PanL0Params(iterations=1, cg_iterations=5)
    >>> blind_deconv(windows, 7, params, intensity_term).shape
    (2, 7, 7)
    >>> blind_deconv(windows, 7, params, intensity_term, joint=True).shape
    (1, 7, 7)
    """
    xp = get_array_module(windows)
    if xp is np and len(windows) > 1 and not joint:
        H, W = windows.shape[-2:]
        per_window = 4 * opt_fft_size(H + kernel_size - 1) * opt_fft_size(W + kernel_size - 1)
        chunk = max(1, CPU_CHUNK_BYTES // per_window)
        if chunk < len(windows):
            starts = range(0, len(windows), chunk)
            return np.concatenate([_blind_deconv(windows[i : i + chunk], kernel_size, params, term) for i in starts])
    return _blind_deconv(windows, kernel_size, params, term, joint)


def _blind_deconv(windows: Any, kernel_size: int, params: PanParams, term: PixelTerm, joint: bool = False) -> Any:
    xp = get_array_module(windows)
    y = _unit_range(xp.asarray(windows, dtype=xp.float32))
    batch = y.shape[0]
    sizes, ratios = pyramid(kernel_size, params)
    lam_pixel = np.full(batch, params.lam_pixel)
    lam_grad = np.full(batch, params.lam_grad)
    kernel, threshold = None, None
    for level in range(len(sizes) - 1, -1, -1):
        size = sizes[level]
        if kernel is None:
            kernel = bar_kernel(size, 1 if joint else batch, xp)
        else:
            kernel = upscale_kernel(kernel, size, params.scale_factor)
        blurred = levin_downsample(y, ratios[level])
        if threshold is None:
            threshold = gradient_threshold(*valid_gradients(blurred), size, params)
            if params.coarse_lambda_rule:
                low = (threshold > 0) & (threshold < lam_grad / 10)
                lam_grad = np.where(low, threshold, lam_grad)
                lam_pixel = np.where(low, threshold, lam_pixel)
        kernel, lam_pixel, lam_grad = _one_scale(blurred, kernel, lam_pixel, lam_grad, threshold, params, term, joint)
        kernel = _normalize_or_delta(xp.maximum(kops.center(kernel), 0))
    kernel = _normalize_or_delta(kops.threshold(kernel, params.kernel_threshold))
    # the reference centres before this threshold, which can move the centroid by more than half a pixel
    kernel = _normalize_or_delta(kops.center(kernel))
    return kernel.astype(xp.float32, copy=False)
