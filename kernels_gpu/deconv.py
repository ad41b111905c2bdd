"""Non-blind deconvolution with a hyper-Laplacian gradient prior (Krishnan & Fergus, NIPS 2009).

Solves, for each image of a batch,

    min_x  (lam / 2) ||k * x - y||^2 + sum_pixels |d_x x|^alpha + |d_y x|^alpha

by half-quadratic splitting: auxiliary gradients ``w`` are coupled to ``grad x``
with weight ``beta / 2``, and ``beta`` grows geometrically (continuation).  Each
inner iteration alternates

* the **w-step**, an independent scalar problem per pixel,
  ``min_w |w|^alpha + beta/2 (w - v)^2`` with ``v`` a gradient of ``x``, solved
  in closed form (soft threshold for ``alpha = 1``, a quartic root for
  ``alpha = 2/3``) instead of the original lookup table, so it is a handful of
  elementwise array operations on CPU or GPU;
* the **x-step**, a quadratic problem diagonal in the Fourier domain.

Boundaries.  The FFT makes the model circular, and a real image is not periodic:
deconvolving it as it is rings from every border.  The image is therefore
extended by symmetric padding (at least the kernel size, then up to a 5-smooth,
FFT-fast size) and the padded image's outer borders are blended into its
circular blur (:func:`~kernels_gpu.boundary.edgetaper`), so the periodic seam
lies far outside the image and is smooth.  That alone still leaves errors
several times the interior's within a kernel length of the border (and a
little beyond), because a mirrored blurred image is not the blur of any sharp
image when the kernel is not symmetric.  So, beyond the paper, the data term
is restricted to the observed pixels (a free boundary: the padding becomes an
unknown of the solve, as in Levin et al.'s ``deconvSps``).  That x-step is no
longer diagonal in the Fourier domain; it is refined by a few conjugate-gradient
steps preconditioned by the paper's Fourier x-step, warm-started from the
previous iterate.  ``cg_iterations=0`` gives the paper's x-step on the padded
image.  On the 32 Levin et al. image/kernel pairs (sigma = 0.01, a 'valid' blur
so the scene beyond the border is real), the default of 5 steps raised the
mean PSNR from 27.6 to 31.0 dB (worst pair 20.3 to 27.5 dB) at about twice the
run time.

Reference: D. Krishnan, R. Fergus, "Fast Image Deconvolution using
Hyper-Laplacian Priors", NIPS 2009 (``fast_deconv.m``, ``solve_image.m``).
"""

from __future__ import annotations

import math
from typing import Any

from .backend import get_array_module, irfft2, next_fast_len, rfft2
from .boundary import edgetaper
from .conv import kernel_otf
from .gradients import circular_gradients, circular_gradients_adjoint, difference_otf_energy

__all__ = ["DEFAULT_LAMBDA", "deconvolve", "solve_w"]

#: Default data weight for images scaled to [0, 1], tuned for the default
#: alpha = 2/3.  Krishnan & Fergus suggest lambda ~ 2000-3000 for natural images.
#: Measured on the 32 Levin et al. image/kernel pairs with Gaussian noise
#: sigma = 0.01: mean PSNR 30.7 / 31.0 / 30.2 dB at lambda = 1000 / 2000 / 3000
#: (alpha = 2/3).  alpha = 1 peaks lower, at lambda ~ 500-1000, and loses about
#: 2 dB at 2000.  Lower lambda for noisier inputs.
DEFAULT_LAMBDA = 2000.0

# alpha = 2/3 w-step, written for u = w / v (see _solve_w_two_thirds).  A nonzero
# minimiser exists iff c = 8 / (27 beta^3 v^4) < 1/16, i.e. |v| > _THRESHOLD_23 * beta^(-3/4).
_THRESHOLD_23 = (128.0 / 27.0) ** 0.25


def solve_w(v: Any, beta: float, alpha: float) -> Any:
    """Elementwise minimiser of ``|w|^alpha + beta / 2 (w - v)^2``.

    Parameters
    ----------
    v : (...) float array
        Gradients of the current image estimate.
    beta : float > 0
        Half-quadratic coupling weight.
    alpha : {1, 2/3}
        Exponent of the prior.  ``alpha = 1`` is a soft threshold at ``1 / beta``;
        ``alpha = 2/3`` uses the closed-form quartic root (Ferrari's method).

    Returns
    -------
    (...) array of ``v``'s dtype: the global minimiser for every element.

    >>> import numpy as np
    >>> np.round(solve_w(np.array([-2.0, 0.05, 0.5]), beta=10.0, alpha=1.0), 6).tolist()  # soft threshold at 0.1
    [-1.9, 0.0, 0.4]
    >>> w = solve_w(np.array([0.01, -3.0]), beta=10.0, alpha=2 / 3)
    >>> float(w[0]), bool(-3.0 < w[1] < -1.5)  # small gradients vanish, large ones shrink a little
    (0.0, True)
    """
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    if math.isclose(alpha, 1.0):
        xp = get_array_module(v)
        return (xp.sign(v) * xp.maximum(xp.abs(v) - 1.0 / beta, 0)).astype(v.dtype, copy=False)
    if math.isclose(alpha, 2.0 / 3.0):
        return _solve_w_two_thirds(v, beta)
    raise ValueError(f"alpha must be 1 or 2/3 (closed-form w-steps), got {alpha}")


def _solve_w_two_thirds(v: Any, beta: float) -> Any:
    """``alpha = 2/3`` w-step by Ferrari's method on a one-parameter quartic.

    For ``w != 0`` the stationarity condition ``(2/3) sign(w) |w|^(-1/3) + beta (w - v) = 0``,
    cubed, is the quartic ``w (w - v)^3 + 8 / (27 beta^3) = 0`` (Krishnan & Fergus, eq. 12).
    Writing ``w = v (1 + s)`` turns it into ``s^4 + s^3 + c = 0`` with the single
    parameter ``c = 8 / (27 beta^3 v^4) > 0``: the coefficients no longer span
    many orders of magnitude, which keeps float32 accurate.

    Ferrari: with ``s = y - 1/4`` the depressed quartic is
    ``y^4 - (3/8) y^2 + (1/8) y + (c - 3/256) = 0``; its resolvent cubic reduces
    to ``(m - 1/8)^3 = c m``, which has exactly one real root when
    ``c < 27/256`` (Cardano, no complex arithmetic).  The quartic then factors
    into two real quadratics whose four roots are the candidates.

    Root selection (as in the paper): keep the real root with
    ``|v| / 2 < sign(v) w < |v|``, i.e. ``-1/2 < s < 0``, else ``w = 0``.  On that
    interval ``s^3 (s + 1)`` increases monotonically from ``-1/16`` to 0, so
    the root is unique and exists iff ``c < 1/16``.  For ``alpha = 2/3`` that
    existence bound coincides with the point where the local minimum's energy
    falls below ``E(0) = beta v^2 / 2``; the explicit energy comparison below
    only guards rounding at the boundary.
    """
    xp = get_array_module(v)
    dtype = v.dtype
    a = xp.abs(v)
    # c <= 1/16 by construction: elements at or below the threshold get c = 1/16,
    # whose root s = -1/2 fails the strict interval test, so they become 0
    # without ever forming 1 / v^4 (which overflows float32 for tiny v).
    # The floor on c keeps Cardano's division below finite for huge |v|, where
    # c underflows; s ~ -c^(1/3) is then far below the dtype's resolution anyway.
    threshold = _THRESHOLD_23 * beta**-0.75
    c = xp.maximum((threshold / xp.maximum(a, threshold)) ** 4 / 16, 1e-30)

    # Resolvent cubic: m = 1/8 + t with t^3 - c t - c/8 = 0.  Cardano's two
    # cube roots have product c/3, so the second is formed by division: no
    # cancellation for small c.
    big = xp.cbrt(c / 16 + xp.sqrt(xp.maximum(c * c / 256 - c**3 / 27, 0)))
    m = 0.125 + big + c / (3 * big)
    r2m = xp.sqrt(2 * m)

    best = xp.zeros_like(v)
    for sigma in (1.0, -1.0):
        # y^2 - sigma sqrt(2m) y + (p/2 + m + sigma q / (2 sqrt(2m))) = 0, p = -3/8, q = 1/8
        disc = -2 * m + 0.75 - sigma / (4 * r2m)
        root_disc = xp.sqrt(xp.maximum(disc, 0))
        for sign in (1.0, -1.0):
            s = (sigma * r2m + sign * root_disc) / 2 - 0.25
            ok = (disc >= 0) & (s > -0.5) & (s < 0)
            best = xp.where(ok, s, best)
    w = (v * (1 + best)).astype(dtype, copy=False)

    energy_w = xp.abs(w) ** (2.0 / 3.0) + beta / 2 * (w - v) ** 2
    energy_0 = beta / 2 * v * v
    return xp.where(energy_w < energy_0, w, 0).astype(dtype, copy=False)


def _odd_kernel(kernel: Any) -> Any:
    """Kernels of odd size, with the same 'same'-mode alignment as :func:`~kernels_gpu.conv.convolve`.

    :func:`~kernels_gpu.conv.kernel_otf` puts pixel ``h // 2`` at the origin, while
    'same' convolution (scipy's convention) is centred on ``(h - 1) // 2``; they
    differ by one pixel for even sizes.  A zero row/column in front of an even
    axis makes both conventions agree.
    """
    xp = get_array_module(kernel)
    h, w = kernel.shape[-2:]
    widths = [(0, 0)] * (kernel.ndim - 2) + [(1 - h % 2, 0), (1 - w % 2, 0)]
    return xp.pad(kernel, widths) if h % 2 == 0 or w % 2 == 0 else kernel


def _parseval_weights(shape: tuple[int, int], xp: Any, dtype: Any) -> Any:
    """Multiplicity of each rfft2 coefficient in the full spectrum (1 or 2), for inner products."""
    W = shape[1]
    weights = xp.full(W // 2 + 1, 2, dtype=dtype)
    weights[0] = 1
    if W % 2 == 0:
        weights[-1] = 1
    return weights


def _masked_refine(
    x_hat: Any,
    rhs: Any,
    k_otf: Any,
    observed: Any,
    ratio_d: Any,
    denominator: Any,
    weights: Any,
    iterations: int,
) -> Any:
    """Conjugate-gradient steps on the x-step with the data term restricted to observed pixels.

    Solves ``(K^T M K + (beta/lam) D^T D) x = K^T M y + (beta/lam) D^T w`` with ``M``
    the mask of the original (unpadded) image, preconditioned by the circulant
    operator ``K^T K + (beta/lam) D^T D`` of the plain Fourier x-step.  The
    padding is then an unknown (free boundary) instead of data, so the padded
    values, which no kernel could have produced, stop pulling on the image near
    its border.  Everything stays in the rfft2 domain (inner products by
    Parseval), so one step costs two FFTs.
    """
    xp = get_array_module(x_hat)
    shape = observed.shape

    def apply(v_hat: Any) -> Any:
        blurred = irfft2(k_otf * v_hat, s=shape) * observed
        return xp.conj(k_otf) * rfft2(blurred) + ratio_d * v_hat

    def inner(a: Any, b: Any) -> Any:
        return (weights * (a.real * b.real + a.imag * b.imag)).sum(axis=(-2, -1), keepdims=True)

    def safe_div(num: Any, den: Any) -> Any:
        return xp.where(den > 0, num / xp.where(den > 0, den, 1), 0)

    residual = rhs - apply(x_hat)
    direction = residual / denominator
    rz = inner(residual, direction)
    for _ in range(iterations):
        image_dir = apply(direction)
        step = safe_div(rz, inner(direction, image_dir))
        x_hat = x_hat + step * direction
        residual = residual - step * image_dir
        z = residual / denominator
        rz_new = inner(residual, z)
        direction = z + safe_div(rz_new, rz) * direction
        rz = rz_new
    return x_hat


def deconvolve(
    blurred: Any,
    kernel: Any,
    lam: float = DEFAULT_LAMBDA,
    alpha: float = 2.0 / 3.0,
    *,
    beta_init: float = 1.0,
    beta_rate: float = 2.0 * math.sqrt(2.0),
    beta_max: float = 256.0,
    inner_iterations: int = 1,
    pad: int | None = None,
    cg_iterations: int = 5,
) -> Any:
    """Krishnan-Fergus hyper-Laplacian deconvolution of a batch of images.

    Parameters
    ----------
    blurred : (B, H, W) or (H, W) float
        Blurred images, intensities in about [0, 1] (``lam`` assumes that scale).
        Integer input is converted to float32; float64 stays float64.
    kernel : (h, w) or (B, h, w) float
        Blur kernels in convolution orientation, ``blurred = convolve(sharp, kernel, "same")``,
        each summing to 1.  One kernel for the whole batch or one per image;
        even sizes are allowed.
    lam : float
        Weight of the data term.  The default :data:`DEFAULT_LAMBDA` (2000) suits
        ``alpha = 2/3`` and noise of about 1% of the intensity range; use about
        1000 with ``alpha = 1``.
    alpha : {2/3, 1}
        Exponent of the gradient prior; 2/3 fits natural images (the paper's choice).
    beta_init, beta_rate, beta_max : float
        Continuation: ``beta = beta_init, beta_init * beta_rate, ...`` while
        ``beta < beta_max``.  The defaults (1, 2 sqrt 2, 256) give 6 outer
        iterations, as in the paper.
    inner_iterations : int
        Alternations of w-step and x-step per ``beta`` (1 in the paper).
    pad : int, optional
        Symmetric padding on each side, at least half the larger kernel side;
        default the larger kernel side.  The bottom and right are padded
        further, up to a 5-smooth (FFT-fast) size.
    cg_iterations : int
        Conjugate-gradient steps per x-step on the free-boundary data term (see
        the module notes); 0 is the paper's Fourier x-step on the padded image.
        The default 5 is close to converged: 15 steps gained 0.2 dB more on the
        Levin et al. set.

    Returns
    -------
    Array of ``blurred``'s shape and of dtype float32 (float64 for float64 input):
    the deconvolved images, on ``blurred``'s device.

    >>> import numpy as np
    >>> from kernels_gpu.conv import convolve
    >>> from kernels_gpu.metrics import psnr
    >>> sharp = np.kron(np.random.default_rng(0).random((8, 8)), np.ones((6, 6)))  # 48 x 48 blocks
    >>> kernel = np.zeros((7, 7)); kernel[3, :] = 1 / 7  # a horizontal motion blur
    >>> blurred = convolve(np.pad(sharp, 3, mode="symmetric"), kernel, "valid")
    >>> restored = deconvolve(blurred, kernel)
    >>> restored.shape, bool(psnr(restored, sharp) > psnr(blurred, sharp) + 10)  # > 10 dB closer to the sharp image
    ((48, 48), True)
    """
    xp = get_array_module(blurred, kernel)
    dtype = xp.result_type(xp.asarray(blurred).dtype, xp.float32)
    y = xp.asarray(blurred, dtype=dtype)
    k = _odd_kernel(xp.asarray(kernel, dtype=dtype))
    if y.ndim not in (2, 3) or k.ndim not in (2, 3):
        raise ValueError(f"expected (B, H, W) or (H, W) images and kernels, got {y.shape} and {k.shape}")
    if k.ndim == 3 and y.ndim == 3 and k.shape[0] not in (1, y.shape[0]):
        raise ValueError(f"{k.shape[0]} kernels for {y.shape[0]} images")
    if k.ndim == 3 and y.ndim == 2:
        raise ValueError("a batch of kernels needs a batch of images")
    if lam <= 0 or beta_init <= 0 or beta_rate <= 1 or inner_iterations < 1 or cg_iterations < 0:
        raise ValueError("need lam > 0, beta_init > 0, beta_rate > 1, inner_iterations >= 1, cg_iterations >= 0")
    H, W = y.shape[-2:]
    h, w = k.shape[-2:]
    if h > H or w > W:
        raise ValueError(f"kernel {h}x{w} is larger than the image {H}x{W}")

    # Symmetric extension: `pad` on the top/left, `pad` plus whatever reaches a
    # fast FFT size on the bottom/right.  The crop below undoes it exactly.
    pad = max(h, w) if pad is None else int(pad)
    if pad < max(h, w) // 2:
        # Less would let the circular kernel wrap observed pixels onto each other.
        raise ValueError(f"pad {pad} is less than half the kernel size {max(h, w)}")
    shape = (next_fast_len(H + 2 * pad), next_fast_len(W + 2 * pad))
    widths = [(0, 0)] * (y.ndim - 2) + [(pad, shape[0] - H - pad), (pad, shape[1] - W - pad)]
    y_ext = xp.pad(y, widths, mode="symmetric")
    y_pad = edgetaper(y_ext, k)

    # Reused by every x-step: |K|^2, |D_x|^2 + |D_y|^2, and the data terms.
    k_otf = kernel_otf(k, shape)
    k_energy = (k_otf.real**2 + k_otf.imag**2).astype(dtype, copy=False)
    d_energy = difference_otf_energy(shape, xp, dtype)
    y_hat = rfft2(y_pad)
    if cg_iterations:
        observed = xp.zeros(shape, dtype=dtype)
        observed[pad : pad + H, pad : pad + W] = 1
        # The raw extension, not the tapered one: under the mask both are `y` when
        # the pad covers the taper, and only the raw one is `y` when it does not.
        kty = xp.conj(k_otf) * rfft2(y_ext * observed)
        weights = _parseval_weights(shape, xp, dtype)
    else:
        kty = xp.conj(k_otf) * y_hat

    # CG starts from the previous iterate (first: the padded blurred image).
    # Starting each beta from the plain Fourier x-step instead would re-inject the
    # padding's inconsistency, which a few CG steps cannot remove for long kernels.
    x, x_hat = y_pad, y_hat
    beta = beta_init
    while beta < beta_max:
        ratio = beta / lam
        ratio_d = ratio * d_energy
        denominator = k_energy + ratio_d
        for _ in range(inner_iterations):
            gx, gy = circular_gradients(x)
            wx, wy = solve_w(gx, beta, alpha), solve_w(gy, beta, alpha)
            rhs = kty + ratio * rfft2(circular_gradients_adjoint(wx, wy))
            if cg_iterations:
                x_hat = _masked_refine(x_hat, rhs, k_otf, observed, ratio_d, denominator, weights, cg_iterations)
            else:
                x_hat = rhs / denominator
            x = irfft2(x_hat, s=shape).astype(dtype, copy=False)
        beta *= beta_rate
    return xp.ascontiguousarray(x[..., pad : pad + H, pad : pad + W])
