"""``dark-channel``: blind kernel estimation with the dark channel prior, batched.

Pan, Sun, Pfister & Yang, "Blind image deblurring using dark channel prior",
CVPR 2016, following the authors' MATLAB code (``dark_channel.m``,
``assign_dark_channel_to_pixel.m``) and its demo defaults.  The framework is the
one of ``pan-l0`` (:func:`.pan.blind_deconv`: pyramid, wrap boundary, salient
gradients, CG kernel step, clean-up); what differs:

* the pixel term of the latent-image step acts on the **dark channel**
  ``D(S)(x) = min over the 35x35 patch around x of S`` (replicate padding):
  ``u`` is ``S`` with, for every patch whose minimum ``J`` has
  ``J^2 < lam / beta_p``, the patch's arg-min pixel set to 0
  (``assign_dark_channel_to_pixel``), a 17 px border left as ``S``;
* ``beta_p`` starts at ``lam / otsu(S^2)`` (MATLAB's ``graythresh``: 256 bins on
  [0, 1]) per image instead of ``2 lam``;
* after each kernel step, entries below 3e-4 are also zeroed; no coarse-scale
  weight rule.

Batching the minimum and its arg-min.  :func:`dark_channel` is a separable
running minimum (``minimum_filter1d``, rows then columns) over 64-bit keys that
pack the value (its float32 bits mapped to an order-preserving integer) above
the pixel's column and row: the minimum key of a window gives the minimum and
MATLAB's arg-min at once, ties broken as ``min(patch(:))`` does (first in
column-major order: lowest column, then lowest row, replicate-padded copies
included).  The write-back is one scatter of zeros to the arg-min pixels of the
thresholded windows.

Where the write-back departs from the reference.  The reference visits windows
in raster order and writes a window's value to its arg-min pixel only when the
window's *current* minimum, after the writes of earlier windows, differs from
that value.  Writes of kept values are no-ops (a window's value is its arg-min
pixel's own value), so only the zeros matter, and a window thresholded to 0 is
skipped when an earlier window already wrote a 0 inside it (its current minimum
is then 0): its arg-min pixel keeps its value unless another window, visited
before any such write, zeroes it.  The scatter zeroes every thresholded arg-min
pixel, so its ``u`` has the reference's zeros plus those.  Which pixels the
reference skips depends on the visiting order; this is the only step where the
batched result departs (writes into the replicate padding and the 17 px border
are discarded in both).  :func:`write_back_sequential` is the reference's loop in
NumPy (``write_back="sequential"``, slow, for measurement);
``benchmarks/dark_writeback.py`` compares the two (BENCHMARKS.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backend import get_array_module, ndimage, to_numpy
from ._common import per_image
from .pan import PanParams, blind_deconv

__all__ = [
    "DarkChannelParams",
    "DarkChannelTerm",
    "dark_channel",
    "estimate",
    "estimate_joint",
    "otsu_level",
    "write_back",
    "write_back_sequential",
]

_SIGN = np.int64(0x7FFFFFFF)
_OFFSET = np.int64(1 << 31)


@dataclass(frozen=True)
class DarkChannelParams(PanParams):
    """Parameters of ``dark-channel``: :class:`.pan.PanParams` (``lam_pixel`` weighs the dark channel) plus

    patch_size : side of the dark channel's minimum filter
    write_back : ``"batched"`` (one scatter) or ``"sequential"`` (the reference's loop; NumPy only, slow)

    >>> params = DarkChannelParams()
    >>> params.patch_size, params.write_back, params.min_kernel_value
    (35, 'batched', 0.0003)
    >>> DarkChannelParams(patch_size=4)
    Traceback (most recent call last):
    ValueError: DarkChannelParams: patch_size must be odd and >= 1, got 4
    """

    min_kernel_value: float = 3e-4
    coarse_lambda_rule: bool = False
    patch_size: int = 35
    write_back: str = "batched"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.patch_size < 1 or self.patch_size % 2 == 0:
            raise ValueError(f"DarkChannelParams: patch_size must be odd and >= 1, got {self.patch_size}")
        if self.write_back not in ("batched", "sequential"):
            raise ValueError(
                f"DarkChannelParams: write_back must be 'batched' or 'sequential', got {self.write_back!r}"
            )


def _ordered_keys(x: Any) -> Any:
    """float32 values as int64 keys in [0, 2^32) with the same order (-0 sorts just below +0)."""
    xp = get_array_module(x)
    bits = xp.ascontiguousarray(x, dtype=xp.float32).view(xp.int32).astype(xp.int64)
    return xp.where(bits < 0, bits ^ _SIGN, bits) + _OFFSET


def dark_channel(latent: Any, size: int) -> tuple[Any, Any]:
    """Minimum over each ``size x size`` patch (replicate padding) and where it is, batched.

    Parameters
    ----------
    latent : (B, H, W) float
    size : odd patch side

    Returns
    -------
    dark : (B, H, W) float32, the patch minima
    index : (B, H, W) int64, flat index of each patch's arg-min in the image padded by
        ``size // 2`` (edge mode), ``(H + size - 1) * (W + size - 1)`` per image; ties go to
        the first in column-major order within the patch, as MATLAB's ``min(patch(:))``.

    >>> import numpy as np
    >>> latent = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    >>> dark, index = dark_channel(latent, 3)
    >>> dark[0].tolist()  # the minimum of each 3 x 3 patch
    [[0.0, 0.0, 1.0, 2.0], [0.0, 0.0, 1.0, 2.0], [4.0, 4.0, 5.0, 6.0], [8.0, 8.0, 9.0, 10.0]]
    >>> divmod(int(index[0, 3, 3]), 6)  # the last patch's minimum: image (2, 2), i.e. (3, 3) of the 6 x 6 padding
    (3, 3)
    """
    xp = get_array_module(latent)
    nd = ndimage(xp)
    r = size // 2
    padded = xp.pad(latent.astype(xp.float32, copy=False), ((0, 0), (r, r), (r, r)), mode="edge")
    _, Hp, Wp = padded.shape
    bits = max(int(Hp - 1).bit_length(), int(Wp - 1).bit_length(), 1)
    mask = (1 << bits) - 1
    # pass 1, along rows: (value, column), so each row's lowest column wins a tie
    keys = (_ordered_keys(padded) << bits) | xp.arange(Wp, dtype=xp.int64)
    keys = nd.minimum_filter1d(keys, size, axis=-1, mode="nearest")[..., r : Wp - r]
    # pass 2, along columns: (value, column, row)
    value, column = keys >> bits, keys & mask
    keys = (value << (2 * bits)) | (column << bits) | xp.arange(Hp, dtype=xp.int64)[:, None]
    keys = nd.minimum_filter1d(keys, size, axis=-2, mode="nearest")[:, r : Hp - r, :]
    index = (keys & mask) * Wp + ((keys >> bits) & mask)
    flat = padded.reshape(padded.shape[0], -1)
    dark = xp.take_along_axis(flat, index.reshape(index.shape[0], -1), axis=-1).reshape(index.shape)
    return dark, index


def _restore_border(u: Any, latent: Any, r: int) -> Any:
    """The reference leaves a border of ``r`` pixels as it was."""
    if r == 0:
        return u
    u[..., :r, :] = latent[..., :r, :]
    u[..., -r:, :] = latent[..., -r:, :]
    u[..., :, :r] = latent[..., :, :r]
    u[..., :, -r:] = latent[..., :, -r:]
    return u


def write_back(latent: Any, dark: Any, index: Any, threshold: Any, size: int) -> Any:
    """``u``: ``latent`` with the arg-min pixel of every patch whose ``dark^2 < threshold`` set to 0, batched.

    One scatter over the padded images (every window that points at a pixel makes the same
    decision there, since the window's minimum is that pixel's value, so the scatter is
    deterministic), then the crop and the reference's untouched border.

    latent : (B, H, W) float; dark, index : from :func:`dark_channel`; threshold : (B, 1, 1)

    >>> import numpy as np
    >>> latent = np.array([[[0.0625, 0.5, 0.25], [0.75, 0.03125, 0.125]]], dtype=np.float32)
    >>> dark, index = dark_channel(latent, 1)  # 1 x 1 patches: every pixel is its own minimum
    >>> write_back(latent, dark, index, np.full((1, 1, 1), 0.01), 1).tolist()  # squares below 0.01 go
    [[[0.0, 0.5, 0.25], [0.75, 0.0, 0.125]]]
    """
    xp = get_array_module(latent)
    r = size // 2
    padded = xp.pad(latent, ((0, 0), (r, r), (r, r)), mode="edge")
    B, Hp, Wp = padded.shape
    flat = padded.reshape(-1)
    target = (index + (xp.arange(B, dtype=xp.int64) * (Hp * Wp))[:, None, None]).reshape(-1)
    zero = (dark * dark < threshold).reshape(-1)
    flat[target] = xp.where(zero, 0, flat[target])
    u = padded[:, r : Hp - r, r : Wp - r].copy()
    return _restore_border(u, latent, r)


def write_back_sequential(latent: Any, dark: Any, index: Any, threshold: Any, size: int) -> Any:
    """The reference's ``assign_dark_channel_to_pixel``, one window at a time in raster order (NumPy, slow).

    Window ``(m, n)``'s value (``dark``, or 0 where ``dark^2 < threshold``) is written to its
    arg-min pixel unless the window's current minimum, with the writes of earlier windows,
    already equals it.

    >>> import numpy as np
    >>> latent = np.random.default_rng(0).random((1, 12, 12), dtype=np.float32)
    >>> dark, index = dark_channel(latent, 3)
    >>> threshold = np.full((1, 1, 1), 0.04)
    >>> u = write_back_sequential(latent, dark, index, threshold, 3)
    >>> batched = write_back(latent, dark, index, threshold, 3)
    >>> bool(np.all((u == batched) | (batched == 0)))  # the batched scatter zeroes a superset
    True
    """
    latent_h = to_numpy(latent)
    dark_h, index_h = to_numpy(dark), to_numpy(index)
    thr = np.broadcast_to(to_numpy(threshold), (latent_h.shape[0], 1, 1))
    r = size // 2
    out = np.empty_like(latent_h)
    for b in range(latent_h.shape[0]):
        padded = np.pad(latent_h[b], r, mode="edge")
        refined = np.where(dark_h[b] ** 2 < thr[b], 0, dark_h[b]).astype(padded.dtype)
        flat = padded.reshape(-1)
        H, W = refined.shape
        for m in range(H):
            for n in range(W):
                value = refined[m, n]
                if padded[m : m + size, n : n + size].min() != value:
                    flat[index_h[b, m, n]] = value
        out[b] = padded[r : r + H, r : r + W]
        _restore_border(out[b], latent_h[b], r)
    return get_array_module(latent).asarray(out)


def otsu_level(x: Any) -> Any:
    """Otsu's threshold of each ``(B, ...)`` image as MATLAB's ``graythresh``: 256 bins on [0, 1].

    Values are clipped to [0, 1] and binned by ``round(255 x)``; the level is the bin (mean of
    tied maxima) maximising the between-class variance, over 255; 0 when undefined.  Returns
    ``(B,)`` float64 on the device of ``x``.

    >>> import numpy as np
    >>> halves = np.where(np.arange(64).reshape(8, 8) % 8 < 4, 0.2, 0.8)  # two grey levels
    >>> np.round(otsu_level(np.stack([halves, np.zeros((8, 8))])), 3).tolist()  # between them; 0 for a flat image
    [0.498, 0.0]
    """
    xp = get_array_module(x)
    B = x.shape[0]
    bins = xp.clip(xp.rint(x.reshape(B, -1).astype(xp.float64) * 255), 0, 255).astype(xp.int64)
    bins += (xp.arange(B, dtype=xp.int64) * 256)[:, None]
    counts = xp.bincount(bins.reshape(-1), minlength=256 * B).reshape(B, 256).astype(xp.float64)
    p = counts / counts.sum(axis=-1, keepdims=True)
    omega = xp.cumsum(p, axis=-1)
    mu = xp.cumsum(p * xp.arange(256, dtype=xp.float64), axis=-1)
    den = omega * (1 - omega)
    sigma = xp.where(den > 0, (mu[:, -1:] * omega - mu) ** 2 / xp.where(den > 0, den, 1), -xp.inf)
    peak = sigma.max(axis=-1, keepdims=True)
    tied = (sigma == peak) & xp.isfinite(peak)
    idx = (tied * xp.arange(256)).sum(axis=-1) / xp.maximum(tied.sum(axis=-1), 1)
    return xp.where(tied.any(axis=-1), idx / 255, 0.0)


class DarkChannelTerm:
    """The dark channel pixel term of Pan et al. 2016 for :func:`.pan.l0_deblur`.

    >>> import numpy as np
    >>> term = DarkChannelTerm(DarkChannelParams(patch_size=1))
    >>> latent = np.array([[[0.0625, 0.5, 0.25], [0.75, 0.03125, 0.125]]], dtype=np.float32)
    >>> term(latent, lam=np.array([0.004]), beta=np.array([0.4])).tolist()  # zero where latent^2 < lam / beta
    [[[0.0, 0.5, 0.25], [0.75, 0.0, 0.125]]]
    >>> bool(np.isclose(term.beta_start(latent, np.array([0.004]))[0], 0.004 / otsu_level(latent * latent)[0]))
    True
    """

    def __init__(self, params: DarkChannelParams) -> None:
        self.size = params.patch_size
        self.sequential = params.write_back == "sequential"

    def beta_start(self, latent: Any, lam: np.ndarray) -> np.ndarray:
        level = to_numpy(otsu_level(latent * latent))
        with np.errstate(divide="ignore"):
            return np.where(level > 0, np.asarray(lam, dtype=np.float64) / np.where(level > 0, level, 1), np.inf)

    def __call__(self, latent: Any, lam: np.ndarray, beta: np.ndarray) -> Any:
        xp = get_array_module(latent)
        dark, index = dark_channel(latent, self.size)
        threshold = per_image(xp, np.asarray(lam, dtype=np.float64) / beta, latent.dtype)
        apply = write_back_sequential if self.sequential else write_back
        return apply(latent, dark, index, threshold, self.size)


def estimate(windows: Any, kernel_size: int, params: DarkChannelParams | None = None) -> Any:
    """Estimate one blur kernel per window with the dark channel prior (Pan et al. 2016).

    Parameters
    ----------
    windows : (B, H, W) float, grey levels in [0, 1] (a window outside [0, 1] is min-max normalised)
    kernel_size : odd int >= 3, the support of the kernels to estimate
    params : DarkChannelParams, the defaults when None

    Returns
    -------
    (B, kernel_size, kernel_size) float32 kernels: sum 1, centred, convolution orientation,
    on the device of ``windows``.

    >>> import numpy as np
    >>> window = np.random.default_rng(0).random((1, 48, 48), dtype=np.float32)
    >>> params = DarkChannelParams(iterations=1, patch_size=9)  # short, for the example
    >>> kernels = estimate(np.concatenate([window, window]), 7, params)
    >>> kernels.shape, np.round(kernels.sum(axis=(1, 2)), 5).tolist(), bool(np.array_equal(kernels[0], kernels[1]))
    ((2, 7, 7), [1.0, 1.0], True)
    """
    params = params or DarkChannelParams()
    return blind_deconv(windows, kernel_size, params, DarkChannelTerm(params))


def estimate_joint(windows: Any, kernel_size: int, params: DarkChannelParams | None = None) -> Any:
    """One kernel shared by the windows ``(K, H, W)`` of one image, ``(kernel_size, kernel_size)`` float32.

    Latent images stay per window; the CG kernel step averages the windows' normal
    equations (``joint=True`` of :func:`.pan.blind_deconv`).

    >>> import numpy as np
    >>> window = np.random.default_rng(0).random((1, 48, 48), dtype=np.float32)
    >>> params = DarkChannelParams(iterations=1, patch_size=9)
    >>> shared = estimate_joint(np.concatenate([window, window]), 7, params)  # two copies of one window
    >>> shared.shape, bool(np.allclose(shared, estimate(window, 7, params)[0], atol=1e-5))  # that window's kernel
    ((7, 7), True)
    """
    params = params or DarkChannelParams()
    return blind_deconv(windows, kernel_size, params, DarkChannelTerm(params), joint=True)[0]
