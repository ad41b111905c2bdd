"""Batched 2-D convolution through the FFT, its adjoint, and kernel transfer functions.

Arrays carry any number of leading batch axes; the last two are (rows, columns).
An image batch ``(B, H, W)`` may be convolved with one kernel ``(h, w)`` or with one
kernel per image ``(B, h, w)``: the leading axes broadcast as in NumPy.
"""

from __future__ import annotations

from typing import Any, Literal

from .backend import get_array_module, irfft2, next_fast_len, rfft2

Mode = Literal["full", "same", "valid"]

__all__ = ["convolve", "convolve_adjoint", "correlate", "kernel_otf", "output_shape"]


def output_shape(image_shape: tuple[int, int], kernel_shape: tuple[int, int], mode: Mode) -> tuple[int, int]:
    """Spatial shape of ``convolve(image, kernel, mode)``, as ``scipy.signal.convolve2d`` gives it.

    >>> [output_shape((5, 6), (3, 3), mode) for mode in ("full", "same", "valid")]
    [(7, 8), (5, 6), (3, 4)]
    """
    (H, W), (h, w) = image_shape, kernel_shape
    if mode == "full":
        return H + h - 1, W + w - 1
    if mode == "same":
        return H, W
    if mode == "valid":
        if H < h or W < w:
            raise ValueError(f"'valid' convolution needs the image {H}x{W} to be at least the kernel {h}x{w}")
        return H - h + 1, W - w + 1
    raise ValueError(f"unknown mode {mode!r} (expected 'full', 'same' or 'valid')")


def _crop_start(kernel_shape: tuple[int, int], mode: Mode) -> tuple[int, int]:
    """Where ``mode`` starts inside the full convolution (same convention as scipy)."""
    h, w = kernel_shape
    if mode == "full":
        return 0, 0
    if mode == "same":
        return (h - 1) // 2, (w - 1) // 2
    return h - 1, w - 1


def convolve(image: Any, kernel: Any, mode: Mode = "full") -> Any:
    """Linear (not circular) 2-D convolution over the last two axes.

    Parameters
    ----------
    image : (..., H, W) float
    kernel : (..., h, w) float, batch axes broadcast against ``image``'s
    mode : {"full", "same", "valid"}
        Same output shapes and alignment as :func:`scipy.signal.convolve2d`.

    Returns
    -------
    (..., H', W') array of the result dtype of ``image`` and ``kernel``.

    >>> import numpy as np
    >>> images, kernel = np.random.default_rng(0).random((2, 6, 7)), np.random.default_rng(1).random((3, 3))
    >>> full = convolve(images, kernel)
    >>> full.shape, bool(np.allclose(full.sum(axis=(1, 2)), images.sum(axis=(1, 2)) * kernel.sum()))
    ((2, 8, 9), True)
    >>> below = np.zeros((3, 3)); below[2, 1] = 1  # a delta one row below the middle
    >>> bool(np.allclose(convolve(images, below, "same")[:, 1:], images[:, :-1]))  # moves the images one row down
    True
    """
    xp = get_array_module(image, kernel)
    image, kernel = xp.asarray(image), xp.asarray(kernel)
    H, W = image.shape[-2:]
    h, w = kernel.shape[-2:]
    out_h, out_w = output_shape((H, W), (h, w), mode)
    full = (H + h - 1, W + w - 1)
    fast = (next_fast_len(full[0]), next_fast_len(full[1]))
    dtype = xp.result_type(image.dtype, kernel.dtype, xp.float32)
    spectrum = rfft2(image.astype(dtype, copy=False), s=fast) * rfft2(kernel.astype(dtype, copy=False), s=fast)
    result = irfft2(spectrum, s=fast)
    y0, x0 = _crop_start((h, w), mode)
    return xp.ascontiguousarray(result[..., y0 : y0 + out_h, x0 : x0 + out_w]).astype(dtype, copy=False)


def correlate(image: Any, kernel: Any, mode: Mode = "full") -> Any:
    """2-D cross-correlation: convolution with the kernel flipped in both axes.

    >>> import numpy as np
    >>> image = np.random.default_rng(0).random((6, 7))
    >>> auto = correlate(image, image)
    >>> auto.shape, [int(i) for i in np.unravel_index(auto.argmax(), auto.shape)]  # peak at zero lag
    ((11, 13), [5, 6])
    """
    return convolve(image, kernel[..., ::-1, ::-1], mode)


def convolve_adjoint(result: Any, kernel: Any, image_shape: tuple[int, int], mode: Mode = "full") -> Any:
    """Adjoint of ``x -> convolve(x, kernel, mode)`` for images of ``image_shape``.

    The forward map is a crop of the full convolution, so the adjoint zero-pads
    ``result`` back to the full shape and correlates it with the kernel ('valid').

    >>> import numpy as np
    >>> x, kernel = np.random.default_rng(0).random((6, 7)), np.random.default_rng(1).random((3, 3))
    >>> y = np.random.default_rng(2).random((4, 5))  # the shape of a 'valid' result
    >>> lhs = (convolve(x, kernel, "valid") * y).sum()  # <A x, y> = <x, A^T y>
    >>> bool(np.isclose(lhs, (x * convolve_adjoint(y, kernel, (6, 7), "valid")).sum()))
    True
    """
    xp = get_array_module(result, kernel)
    h, w = kernel.shape[-2:]
    full = (image_shape[0] + h - 1, image_shape[1] + w - 1)
    y0, x0 = _crop_start((h, w), mode)
    padded = xp.zeros(result.shape[:-2] + full, dtype=result.dtype)
    padded[..., y0 : y0 + result.shape[-2], x0 : x0 + result.shape[-1]] = result
    return correlate(padded, kernel, "valid")


def kernel_otf(kernel: Any, shape: tuple[int, int]) -> Any:
    """Transfer function of ``kernel`` for circular convolution on ``shape`` (rfft2 layout).

    The kernel's centre pixel is moved to the origin (MATLAB's ``psf2otf``), so
    ``irfft2(rfft2(x) * kernel_otf(k, x.shape))`` is ``x`` circularly convolved
    with ``k`` without a shift.

    Parameters
    ----------
    kernel : (..., h, w) float, odd or even sizes
    shape : (H, W) with H >= h and W >= w

    Returns
    -------
    (..., H, W // 2 + 1) complex

    >>> import numpy as np
    >>> from kernels_gpu.backend import irfft2, rfft2
    >>> kernel = np.array([[0.0, 0.0, 0.0], [0.0, 0.5, 0.25], [0.0, 0.25, 0.0]])
    >>> otf = kernel_otf(kernel, (8, 8))
    >>> otf.shape, round(float(otf[0, 0].real), 6)  # the DC gain is the kernel's sum
    ((8, 5), 1.0)
    >>> impulse = np.zeros((8, 8)); impulse[3, 3] = 1
    >>> blurred = irfft2(rfft2(impulse) * otf, s=(8, 8))  # the kernel, centred on the impulse
    >>> bool(np.allclose(blurred[2:5, 2:5], kernel))
    True
    """
    xp = get_array_module(kernel)
    h, w = kernel.shape[-2:]
    H, W = shape
    if h > H or w > W:
        raise ValueError(f"kernel {h}x{w} is larger than the transform size {H}x{W}")
    padded = xp.zeros((*kernel.shape[:-2], H, W), dtype=xp.result_type(kernel.dtype, xp.float32))
    padded[..., :h, :w] = kernel
    padded = xp.roll(padded, (-(h // 2), -(w // 2)), axis=(-2, -1))
    return rfft2(padded)
