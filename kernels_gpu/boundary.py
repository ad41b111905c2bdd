"""Boundary treatment for FFT-based (circular) deconvolution.

An FFT treats an image as periodic; the jump between opposite borders then rings
through a deconvolution.  :func:`edgetaper` (the algorithm of MATLAB's
``edgetaper``) blends each border into a circularly blurred copy of the image,
so the periodic extension is smooth where the kernel wraps around.
"""

from __future__ import annotations

from typing import Any

from .backend import get_array_module, irfft2, rfft2
from .conv import kernel_otf

__all__ = ["edgetaper", "pad_reflect", "taper_weights"]


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
    """
    row = _taper_1d(kernel.sum(axis=-1), shape[0])
    col = _taper_1d(kernel.sum(axis=-2), shape[1])
    return row[..., :, None] * col[..., None, :]


def edgetaper(image: Any, kernel: Any) -> Any:
    """Blend the borders of ``(..., H, W)`` images into their circular blur by ``kernel``.

    ``out = w * image + (1 - w) * (image circularly convolved with kernel)`` with the
    weights of :func:`taper_weights`.  Kernels broadcast over the batch axes.
    """
    xp = get_array_module(image, kernel)
    H, W = image.shape[-2:]
    kernel = xp.asarray(kernel, dtype=image.dtype)
    blurred = irfft2(rfft2(image) * kernel_otf(kernel, (H, W)), s=(H, W))
    w = taper_weights(kernel, (H, W)).astype(image.dtype, copy=False)
    return (w * image + (1 - w) * blurred).astype(image.dtype, copy=False)


def pad_reflect(image: Any, pad: int) -> Any:
    """Symmetric padding by ``pad`` pixels on every side of the last two axes."""
    xp = get_array_module(image)
    widths = [(0, 0)] * (image.ndim - 2) + [(pad, pad), (pad, pad)]
    return xp.pad(image, widths, mode="symmetric")
