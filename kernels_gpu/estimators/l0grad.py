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
from ..pyramid import downsample, kernel_sizes, upsample
from ._common import crop_to_fast, difference_otf_energy, extract_kernel, normalize_windows

__all__ = ["L0GradParams", "estimate"]


@dataclass(frozen=True)
class L0GradParams:
    """Parameters of ``l0grad`` (defaults of the IPOL reference).

    lam : initial L0 weight lambda
    lam_ratio : per-iteration decay of lambda
    lam_min : floor of lambda
    gamma : Tikhonov weight of the kernel step (unnormalised FFT, images in [0, 1])
    iterations : kernel/image alternations per scale
    scale_factor : image and kernel size ratio between pyramid levels
    beta_max : end of the half-quadratic continuation
    kernel_threshold : entries below this fraction of the peak are zeroed
    min_component_mass : 8-connected components lighter than this are removed
    """

    lam: float = 4e-3
    lam_ratio: float = 1 / 1.1
    lam_min: float = 1e-4
    gamma: float = 20.0
    iterations: int = 5
    scale_factor: float = 0.5
    beta_max: float = 1e5
    kernel_threshold: float = 0.05
    min_component_mass: float = 0.1
    salient_per_bin: float = 0.0
    solver: str = "fourier"
    border_mask: float = 0.0
    final_kernel_step: bool = False
    noise_weight: float = 0.0
    cg_iterations: int = 20

    def __post_init__(self) -> None:
        if not (self.lam > 0 and self.lam_min > 0 and self.gamma > 0 and self.beta_max > 2 * self.lam):
            raise ValueError("l0grad: lam, lam_min, gamma must be > 0 and beta_max > 2 * lam")
        if not 0 < self.lam_ratio <= 1:
            raise ValueError(f"l0grad: lam_ratio must be in (0, 1], got {self.lam_ratio}")
        if not 0 < self.scale_factor < 1:
            raise ValueError(f"l0grad: scale_factor must be in (0, 1), got {self.scale_factor}")
        if self.iterations < 1:
            raise ValueError(f"l0grad: iterations must be >= 1, got {self.iterations}")
        if not (0 <= self.kernel_threshold < 1 and 0 <= self.min_component_mass < 1):
            raise ValueError("l0grad: kernel_threshold and min_component_mass must be in [0, 1)")


def _gradient_energy_sum(u: Any) -> tuple[Any, Any]:
    """Circular forward differences of ``u`` along x and y."""
    xp = get_array_module(u)
    gx = xp.empty_like(u)
    gx[..., :-1] = u[..., 1:] - u[..., :-1]
    gx[..., -1] = u[..., 0] - u[..., -1]
    gy = xp.empty_like(u)
    gy[..., :-1, :] = u[..., 1:, :] - u[..., :-1, :]
    gy[..., -1, :] = u[..., 0, :] - u[..., -1, :]
    return gx, gy


def _neg_divergence(gx: Any, gy: Any) -> Any:
    """``D^T g`` for circular forward differences ``D`` (minus the backward divergence)."""
    xp = get_array_module(gx)
    out = xp.empty_like(gx)
    out[..., 1:] = gx[..., :-1] - gx[..., 1:]
    out[..., 0] = gx[..., -1] - gx[..., 0]
    out[..., 1:, :] += gy[..., :-1, :] - gy[..., 1:, :]
    out[..., 0, :] += gy[..., -1, :] - gy[..., 0, :]
    return out


def l0_image_step(fv: Any, kotf: Any, dtd: Any, v: Any, lam: float, beta_max: float) -> tuple[Any, Any]:
    """L0-gradient latent image for kernels ``kotf``: returns ``(u, F u)``.

    Minimises ``|k * u - v|^2 + lam |grad u|_0`` by half-quadratic splitting
    (Xu et al. 2011), starting from ``u = v``.

    fv : (B, H, W//2+1) complex, F of the blurred windows
    kotf : (B, H, W//2+1) complex, kernel transfer functions
    dtd : (H, W//2+1) real, ``|F dx|^2 + |F dy|^2``
    v : (B, H, W) real, the blurred windows (start point)
    """
    xp = get_array_module(v)
    H, W = v.shape[-2:]
    ktf = kotf.conj() * fv
    ktk = (kotf.real**2 + kotf.imag**2).astype(v.dtype)
    u = v
    fu = fv
    beta = 2 * lam
    while beta < beta_max:
        gx, gy = _gradient_energy_sum(u)
        keep = (gx * gx + gy * gy) >= (lam / beta)
        gx *= keep
        gy *= keep
        fdiv = rfft2(_neg_divergence(gx, gy))
        fdiv *= beta
        fdiv += ktf
        fdiv /= ktk + beta * dtd
        fu = fdiv
        u = irfft2(fu, s=(H, W))
        beta *= 2
    return u, (fu if u is not v else xp.asarray(fv))


def salient_gradients(u: Any, count: int) -> tuple[Any, Any]:
    """Gradients of ``u`` kept only where they are among the ``count`` strongest of their orientation bin."""
    xp = get_array_module(u)
    gx, gy = _gradient_energy_sum(u)
    pm = gx * gx + gy * gy
    B = u.shape[0]
    # 4 orientation bins of the gradient direction, as in Cho & Lee / Pan's threshold_pxpy
    angle = xp.arctan2(gy, gx)
    a = xp.mod(angle, xp.pi)  # direction modulo pi
    bins = xp.minimum((a / (xp.pi / 4)).astype(xp.int32), 3)
    flat = pm.reshape(B, -1)
    fb = bins.reshape(B, -1)
    th = xp.full((B,), xp.inf, dtype=pm.dtype)
    n = flat.shape[1]
    count = min(count, n)
    for b in range(4):
        vals = xp.where(fb == b, flat, -1)
        kth = -xp.partition(-vals, count - 1, axis=1)[:, count - 1]
        th = xp.minimum(th, kth)
    th = xp.maximum(th, 0)
    keep = pm >= th.reshape(B, 1, 1)
    return gx * keep, gy * keep


def noise_sigma(v: Any) -> Any:
    """Per-window noise level: MAD of the finest diagonal Haar coefficients (Donoho), shape (B, 1, 1)."""
    xp = get_array_module(v)
    H, W = v.shape[-2:]
    a = v[..., : H - H % 2, : W - W % 2]
    d = (a[..., 0::2, 0::2] - a[..., 0::2, 1::2] - a[..., 1::2, 0::2] + a[..., 1::2, 1::2]) / 2
    flat = xp.abs(d).reshape(d.shape[:-2] + (-1,))
    return (xp.median(flat, axis=-1) / 0.6745).reshape(d.shape[:-2] + (1, 1))


def kernel_step(fu, fv, dtd, gamma, size, shape, gsal=None, fgv=None, solver="fourier", k0=None, wiener=None):
    """Kernel of size ``size`` from latent and blurred spectra (uncleaned)."""
    if gsal is not None:
        fx, fy = rfft2(gsal[0]), rfft2(gsal[1])
        num = fx.conj() * fgv[0] + fy.conj() * fgv[1]
        den = fx.real**2 + fx.imag**2 + fy.real**2 + fy.imag**2
    else:
        num = dtd * (fu.conj() * fv)
        den = dtd * (fu.real**2 + fu.imag**2 + (wiener if wiener is not None else 0))
    if solver == "support":
        return _support_solve(num, den, gamma, size, shape, k0, 20)
    full = irfft2(num / (den + gamma), s=shape)
    return extract_kernel(full, size)


def _support_solve(num: Any, den_m: Any, gamma: float, size: int, shape, k0: Any, iters: int) -> Any:
    """min_k |g_u * k - g_v|^2 + gamma |k|^2 with k supported on size x size, by batched CG.

    num: conj(F g_u) F g_v summed over directions; den_m: sum |F g_u|^2 (real).
    """
    from ..conv import convolve
    xp = get_array_module(num)
    c = extract_kernel(irfft2(num, s=shape), size)  # cross-correlation at lags within the support
    R = extract_kernel(irfft2(den_m.astype(num.real.dtype), s=shape), 2 * size - 1)  # autocorrelation lags
    def A(k):
        return convolve(k, R, "full")[..., size - 1 : 2 * size - 1, size - 1 : 2 * size - 1] + gamma * k
    k = k0.astype(c.dtype) if k0 is not None else xp.full_like(c, 1.0 / size**2)
    r = c - A(k)
    p = r.copy()
    rs = (r * r).sum(axis=(-2, -1), keepdims=True)
    for _ in range(iters):
        Ap = A(p)
        pAp = (p * Ap).sum(axis=(-2, -1), keepdims=True)
        alpha = rs / xp.where(pAp > 0, pAp, 1)
        k = k + alpha * p
        r = r - alpha * Ap
        rn = (r * r).sum(axis=(-2, -1), keepdims=True)
        p = r + (rn / xp.where(rs > 0, rs, 1)) * p
        rs = rn
    return k


def estimate(windows: Any, kernel_size: int, params: L0GradParams | None = None) -> Any:
    """Estimate one blur kernel per window.

    Parameters
    ----------
    windows : (B, H, W) float, grey levels in any range (each window is min-max normalised)
    kernel_size : odd int >= 3, the support of the kernels to estimate
    params : L0GradParams, defaults of the reference when None

    Returns
    -------
    (B, kernel_size, kernel_size) float32 kernels, sum 1, centred, convolution orientation,
    on the device of ``windows``.
    """
    params = params or L0GradParams()
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
        if u.shape[-2:] != vs.shape[-2:]:
            u = upsample(u, vs.shape[-2:])
        shape = vs.shape[-2:]
        fv = rfft2(vs)
        fu = rfft2(u)
        dtd = difference_otf_energy(shape, xp)
        gvx, gvy = _gradient_energy_sum(vs)
        mask = None
        if params.border_mask > 0:
            b = int(round(params.border_mask * ks))
            mask = xp.zeros(shape, dtype=vs.dtype)
            mask[b:shape[0]-b, b:shape[1]-b] = 1
            gvx, gvy = gvx * mask, gvy * mask
        fgv = (rfft2(gvx), rfft2(gvy))
        wiener = None
        if params.noise_weight > 0:
            sigma2 = noise_sigma(vs) ** 2
        for it in range(params.iterations + (1 if (params.final_kernel_step and level == 0) else 0)):
            gsal = salient_gradients(u, int(params.salient_per_bin * ks)) if params.salient_per_bin > 0 else None
            if mask is not None:
                if gsal is None:
                    gsal = _gradient_energy_sum(u)
                gsal = (gsal[0] * mask, gsal[1] * mask)
            k0 = k if (k is not None and k.shape[-1] == ks) else None
            if params.noise_weight > 0:
                power = (k0 * k0).sum(axis=(-2, -1), keepdims=True) if k0 is not None else 1.0 / ks
                wiener = params.noise_weight * shape[0] * shape[1] * sigma2 / power
            k = kops.clean(kernel_step(fu, fv, dtd, params.gamma, ks, shape, gsal, fgv, params.solver, k0, wiener),
                           params.kernel_threshold, params.min_component_mass)
            from ..conv import kernel_otf

            if it == params.iterations:
                break
            u, fu = l0_image_step(fv, kernel_otf(k, shape), dtd, vs, lam, params.beta_max)
            lam = max(lam * params.lam_ratio, params.lam_min)
    return k.astype(xp.float32, copy=False)
