"""``l0grad``: blind kernel estimation with the L0 gradient prior, batched.

Method of Anger, Facciolo & Delbracio, "Blind image deblurring using the l0
gradient prior", IPOL 2019 (article 243), itself a careful reading of Pan et al.
and Xu et al.  Coarse-to-fine; at each scale, ``iterations`` times:

1. kernel step, closed form in the Fourier domain
   ``K = sum_d conj(F du) F dv / (sum_d |F du|^2 + gamma)`` with circular
   forward differences ``d``; then keep the central ``ks x ks`` support, clip,
   drop entries below 5 % of the peak and components lighter than 10 %, centre,
   normalise;
2. image step, L0-gradient half-quadratic splitting: ``beta`` from ``2 lambda``,
   doubled until ``beta_max``; hard-threshold the gradients where
   ``|grad u|^2 < lambda / beta``, then solve the quadratic ``u`` update by FFT;
3. ``lambda <- max(lambda * lambda_ratio, lambda_min)`` (the decay carries across scales).

Where this departs from the reference, measured on the Levin et al. 2009 pairs
(``benchmarks/levin_quality.py``; BENCHMARKS.md has the tables):

* a noise-adaptive (Wiener) term in the kernel step: the denominator gets
  ``noise_weight * N * sigma^2 / |k|^2 * |F d|^2``, the power of the noise in the
  blurred gradients over the power of the current kernel, with ``sigma`` estimated
  per window (median absolute deviation of the finest diagonal Haar coefficients).
  A flat ``gamma`` alone either leaves speckle in large kernels on noisy windows or
  over-smooths clean ones;
* one more kernel step after the last image step of the finest scale (the
  reference stops with an image step whose result it never uses);
* ``gamma`` 15 (reference 20), initial ``lambda`` 5e-3 (4e-3) and a kernel
  threshold of 8 % of the peak (5 %).

Every step is elementwise or an FFT over the last two axes, so a batch of windows
``(B, H, W)`` that share a kernel size runs as one array, on NumPy or CuPy.

Pre-processing (per window, as in the reference): min-max normalisation to [0, 1],
crop to an FFT-friendly size, edge taper with a ``ks x ks`` box.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import kernels as kops
from ..backend import get_array_module, irfft2, rfft2
from ..boundary import edgetaper
from ..conv import kernel_otf
from ..gradients import circular_gradients, circular_gradients_adjoint, difference_otf_energy
from ..pyramid import downsample, kernel_sizes, upsample
from ._common import crop_to_fast, extract_kernel, normalize_windows

__all__ = ["L0GradParams", "estimate", "estimate_joint", "kernel_step", "l0_image_step", "noise_sigma"]


@dataclass(frozen=True)
class L0GradParams:
    """Parameters of ``l0grad``.

    lam : initial L0 weight lambda
    lam_ratio : per-iteration decay of lambda (carried across scales)
    lam_min : floor of lambda
    gamma : Tikhonov weight of the kernel step (unnormalised FFT, images in [0, 1])
    noise_weight : weight of the noise-adaptive (Wiener) term of the kernel step; 0 disables it
    iterations : kernel/image alternations per scale
    final_kernel_step : one more kernel step after the last image step of the finest scale
    scale_factor : image and kernel size ratio between pyramid levels
    beta_max : end of the half-quadratic continuation of the image step
    kernel_threshold : entries below this fraction of the peak are zeroed
    min_component_mass : 8-connected components lighter than this are removed

    >>> params = L0GradParams(gamma=30)
    >>> params.gamma, params.iterations, params.scale_factor
    (30, 5, 0.5)
    >>> L0GradParams(scale_factor=2)
    Traceback (most recent call last):
    ValueError: l0grad: scale_factor must be in (0, 1), got 2
    """

    lam: float = 5e-3
    lam_ratio: float = 1 / 1.1
    lam_min: float = 1e-4
    gamma: float = 15.0
    noise_weight: float = 0.1
    iterations: int = 5
    final_kernel_step: bool = True
    scale_factor: float = 0.5
    beta_max: float = 1e5
    kernel_threshold: float = 0.08
    min_component_mass: float = 0.1

    def __post_init__(self) -> None:
        if not (self.lam > 0 and self.lam_min > 0 and self.gamma > 0 and self.beta_max > 2 * self.lam):
            raise ValueError("l0grad: lam, lam_min and gamma must be > 0 and beta_max > 2 * lam")
        if self.noise_weight < 0:
            raise ValueError(f"l0grad: noise_weight must be >= 0, got {self.noise_weight}")
        if not 0 < self.lam_ratio <= 1:
            raise ValueError(f"l0grad: lam_ratio must be in (0, 1], got {self.lam_ratio}")
        if not 0 < self.scale_factor < 1:
            raise ValueError(f"l0grad: scale_factor must be in (0, 1), got {self.scale_factor}")
        if self.iterations < 1:
            raise ValueError(f"l0grad: iterations must be >= 1, got {self.iterations}")
        if not (0 <= self.kernel_threshold < 1 and 0 <= self.min_component_mass < 1):
            raise ValueError("l0grad: kernel_threshold and min_component_mass must be in [0, 1)")


def noise_sigma(v: Any) -> Any:
    """Noise level of each window, ``(B, 1, 1)``: MAD of the finest diagonal Haar coefficients / 0.6745.

    >>> import numpy as np
    >>> windows = 0.5 + 0.05 * np.random.default_rng(0).standard_normal((2, 64, 64))
    >>> sigma = noise_sigma(windows)
    >>> sigma.shape, np.round(sigma.ravel(), 2).tolist()  # the noise added: 0.05
    ((2, 1, 1), [0.05, 0.05])
    """
    xp = get_array_module(v)
    H, W = v.shape[-2:]
    a = v[..., : H - H % 2, : W - W % 2]
    d = (a[..., 0::2, 0::2] - a[..., 0::2, 1::2] - a[..., 1::2, 0::2] + a[..., 1::2, 1::2]) / 2
    flat = xp.abs(d).reshape((*d.shape[:-2], -1))
    return (xp.median(flat, axis=-1) / 0.6745).reshape((*d.shape[:-2], 1, 1))


def l0_image_step(fv: Any, kotf: Any, dtd: Any, v: Any, lam: float, beta_max: float) -> tuple[Any, Any]:
    """L0-gradient latent images for the kernels ``kotf``; returns ``(u, F u)``.

    Minimises ``|k * u - v|^2 + lam |grad u|_0`` by half-quadratic splitting
    (Xu et al. 2011) from ``u = v``, with ``beta`` doubling from ``2 lam`` to ``beta_max``.

    fv : (B, H, W//2+1) complex, F of the blurred windows
    kotf : (B, H, W//2+1) complex, kernel transfer functions
    dtd : (H, W//2+1) real, ``|F dx|^2 + |F dy|^2``
    v : (B, H, W) real, the blurred windows

    >>> import numpy as np
    >>> from kernels_gpu.backend import rfft2
    >>> from kernels_gpu.conv import kernel_otf
    >>> from kernels_gpu.gradients import difference_otf_energy
    >>> from kernels_gpu.kernels import delta
    >>> rng = np.random.default_rng(0)
    >>> v = np.kron(rng.random((1, 4, 4)), np.ones((8, 8))) + 0.02 * rng.standard_normal((1, 32, 32))
    >>> kotf, dtd = kernel_otf(delta(3, (1,)), (32, 32)), difference_otf_energy((32, 32), np)  # no blur
    >>> u, fu = l0_image_step(rfft2(v), kotf, dtd, v, 1e-2, 1e5)
    >>> def edges(x):
    ...     return float((np.abs(np.diff(x, axis=-1)) > 1e-3).mean())
    >>> u.shape, edges(u) < edges(v) / 2  # noise gone, the blocks' edges kept: far fewer non-zero gradients
    ((1, 32, 32), True)
    """
    H, W = v.shape[-2:]
    ktf = kotf.conj() * fv
    ktk = (kotf.real**2 + kotf.imag**2).astype(v.dtype)
    u, fu = v, fv
    beta = 2 * lam
    while beta < beta_max:
        gx, gy = circular_gradients(u)
        keep = (gx * gx + gy * gy) >= (lam / beta)
        gx *= keep
        gy *= keep
        # (K^T v + beta D^T g) / (|K|^2 + beta |D|^2), built in place to spare temporaries
        fu = rfft2(circular_gradients_adjoint(gx, gy))
        fu *= beta
        fu += ktf
        fu /= ktk + beta * dtd
        u = irfft2(fu, s=(H, W))
        beta *= 2
    return u, fu


def kernel_step(
    fu: Any,
    fv: Any,
    dtd: Any,
    gamma: float,
    size: int,
    shape: tuple[int, int],
    wiener: Any = 0,
    joint: bool = False,
) -> Any:
    """Closed-form Fourier kernel (uncleaned) ``(B, size, size)`` from latent and blurred spectra.

    ``K = |D|^2 conj(U) V / (|D|^2 (|U|^2 + wiener) + gamma)``: the least-squares
    fit of the blurred gradients by the latent gradients, over the whole grid,
    then the ``size x size`` support around the origin.

    ``joint=True`` fits one kernel to all ``B`` windows: the numerator and the data part of
    the denominator are averaged over the windows (the normal equations of the mean of the
    windows' data terms, with the prior ``gamma`` once), and the result is ``(1, size, size)``.
    ``B`` copies of one window then give that window's own kernel.

    >>> import numpy as np
    >>> from kernels_gpu.backend import rfft2
    >>> from kernels_gpu.gradients import difference_otf_energy
    >>> u = np.random.default_rng(0).random((2, 32, 32), dtype=np.float32)
    >>> fu = rfft2(u)
    >>> dtd = difference_otf_energy((32, 32), np)
    >>> kernel_step(fu, fu, dtd, 1e-3, 5, (32, 32)).shape
    (2, 5, 5)
    >>> kernel_step(fu, fu, dtd, 1e-3, 5, (32, 32), joint=True).shape
    (1, 5, 5)
    """
    num = dtd * (fu.conj() * fv)
    den = dtd * (fu.real**2 + fu.imag**2 + wiener)
    if joint:
        num = num.mean(axis=-3, keepdims=True)
        den = den.mean(axis=-3, keepdims=True)
    return extract_kernel(irfft2(num / (den + gamma), s=shape), size)


def estimate(windows: Any, kernel_size: int, params: L0GradParams | None = None) -> Any:
    """Estimate one blur kernel per window.

    Parameters
    ----------
    windows : (B, H, W) float, grey levels in any range (each window is min-max normalised)
    kernel_size : odd int >= 3, the support of the kernels to estimate
    params : L0GradParams, the defaults when None

    Returns
    -------
    (B, kernel_size, kernel_size) float32 kernels: sum 1, centred, convolution
    orientation, on the device of ``windows``.

    >>> import numpy as np
    >>> windows = np.random.default_rng(0).random((2, 64, 64), dtype=np.float32)
    >>> k = estimate(windows, 9)
    >>> k.shape, k.dtype.name, bool(np.allclose(k.sum(axis=(1, 2)), 1, atol=1e-5))
    ((2, 9, 9), 'float32', True)
    """
    return _coarse_to_fine(windows, kernel_size, params or L0GradParams(), joint=False)


def estimate_joint(windows: Any, kernel_size: int, params: L0GradParams | None = None) -> Any:
    """Estimate one blur kernel shared by all windows (joint estimation from several windows of one image).

    The same coarse-to-fine alternation as :func:`estimate`, with one latent image per window
    and one kernel for all: the kernel step averages the windows' Fourier normal equations
    (``joint=True`` of :func:`kernel_step`), so every window's evidence shapes the one kernel,
    and each latent image step uses that kernel.

    Parameters
    ----------
    windows : (K, H, W) float, windows of one image (same blur), any grey-level range
    kernel_size : odd int >= 3
    params : L0GradParams, the defaults when None

    Returns
    -------
    (kernel_size, kernel_size) float32 kernel: sum 1, centred, on the device of ``windows``.

    >>> import numpy as np
    >>> windows = np.random.default_rng(0).random((3, 64, 64), dtype=np.float32)
    >>> estimate_joint(windows, 9).shape
    (9, 9)
    """
    return _coarse_to_fine(windows, kernel_size, params or L0GradParams(), joint=True)[0]


def _coarse_to_fine(windows: Any, kernel_size: int, params: L0GradParams, joint: bool) -> Any:
    """The estimation of :func:`estimate` (``joint=False``, ``(B, k, k)``) or :func:`estimate_joint` (``(1, k, k)``)."""
    xp = get_array_module(windows)
    v = normalize_windows(crop_to_fast(xp.asarray(windows, dtype=xp.float32)))
    box = xp.full((kernel_size, kernel_size), 1.0 / kernel_size**2, dtype=xp.float32)
    v = edgetaper(v, box)

    sizes = kernel_sizes(kernel_size, params.scale_factor)
    levels = [v]
    for _ in sizes[1:]:
        levels.append(downsample(levels[-1], 1 / params.scale_factor))

    lam = max(params.lam, params.lam_min)
    u = levels[-1]
    k = None
    for level in range(len(sizes) - 1, -1, -1):
        vs, ks = levels[level], sizes[level]
        shape = vs.shape[-2:]
        if u.shape[-2:] != shape:
            u = upsample(u, shape)
        fv, fu = rfft2(vs), rfft2(u)
        dtd = difference_otf_energy(shape, xp)
        noise_power = params.noise_weight * shape[0] * shape[1] * noise_sigma(vs) ** 2
        kernel_power = 1.0 / ks  # before the first estimate at this size: a straight line's
        steps = params.iterations + int(params.final_kernel_step and level == 0)
        for step in range(steps):
            k = kops.clean(
                kernel_step(fu, fv, dtd, params.gamma, ks, shape, noise_power / kernel_power, joint),
                params.kernel_threshold,
                params.min_component_mass,
            )
            kernel_power = (k * k).sum(axis=(-2, -1), keepdims=True)
            if step == params.iterations:
                break
            u, fu = l0_image_step(fv, kernel_otf(k, shape), dtd, vs, lam, params.beta_max)
            lam = max(lam * params.lam_ratio, params.lam_min)
    return k.astype(xp.float32, copy=False)
