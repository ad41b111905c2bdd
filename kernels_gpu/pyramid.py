"""Image pyramids for coarse-to-fine estimation, batched over leading axes."""

from __future__ import annotations

import math
from typing import Any

from .backend import get_array_module, ndimage

__all__ = ["downsample", "kernel_sizes", "upsample"]


def downsample(image: Any, factor: float) -> Any:
    """Gaussian-prefiltered resampling by ``1 / factor`` (``factor`` >= 1) of ``(..., H, W)``.

    The anti-alias Gaussian has sigma ``(factor - 1) / 2`` (scikit-image's choice);
    samples sit on pixel centres (grid mode), output size ``ceil(H / factor)``.
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
    """Bicubic resampling of ``(..., h, w)`` to ``(..., *shape)`` on the pixel-centre grid."""
    xp = get_array_module(image)
    h, w = image.shape[-2:]
    lead = image.shape[:-2]
    flat = image.reshape((-1, h, w))
    out = ndimage(xp).zoom(flat, (1, shape[0] / h, shape[1] / w), order=3, grid_mode=True, mode="nearest")
    return out.reshape(lead + tuple(shape)).astype(image.dtype, copy=False)


def kernel_sizes(kernel_size: int, factor: float, min_size: int = 3) -> list[int]:
    """Odd kernel sizes from fine to coarse: ``k, odd(k * factor), ...`` while >= ``min_size``."""
    sizes = [int(kernel_size)]
    while True:
        k = int(sizes[-1] * factor)
        k += (k + 1) % 2
        if k < min_size or k >= sizes[-1]:
            return sizes
        sizes.append(k)
