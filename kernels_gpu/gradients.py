"""Image gradients of the estimators: circular forward differences, their adjoint and spectrum, Pan's 2x2 ones.

The circular forward differences ``D = (dx, dy)`` are the gradient operator of the L0
latent-image steps (Xu et al. 2011's half-quadratic splitting, as in Pan et al.'s
``L0Deblur_whole`` and Anger et al.'s IPOL code) and of the hyper-Laplacian deconvolution
(Krishnan & Fergus 2009): ``dx u[i, j] = u[i, j + 1] - u[i, j]`` with the last column
differenced against the first (and ``dy`` alike along rows), so that ``D`` is diagonal in
the Fourier domain with ``|F D|^2`` of :func:`difference_otf_energy`.
"""

from __future__ import annotations

from typing import Any

from .backend import get_array_module

__all__ = ["circular_gradients", "circular_gradients_adjoint", "difference_otf_energy", "valid_gradients"]


def circular_gradients(u: Any, out: tuple[Any, Any] | None = None) -> tuple[Any, Any]:
    """Circular forward differences ``(dx u, dy u)`` of ``(..., H, W)`` along x (columns) and y (rows).

    ``out`` : two arrays of ``u``'s shape to write into (work arrays reused across iterations),
    else new ones.

    >>> import numpy as np
    >>> gx, gy = circular_gradients(np.array([[0.0, 1.0, 3.0], [2.0, 2.0, 2.0]]))
    >>> gx.tolist(), gy.tolist()
    ([[1.0, 2.0, -3.0], [0.0, 0.0, 0.0]], [[2.0, 1.0, -1.0], [-2.0, -1.0, 1.0]])
    """
    xp = get_array_module(u)
    gx, gy = out if out is not None else (xp.empty_like(u), xp.empty_like(u))
    xp.subtract(u[..., 1:], u[..., :-1], out=gx[..., :-1])
    xp.subtract(u[..., :1], u[..., -1:], out=gx[..., -1:])
    xp.subtract(u[..., 1:, :], u[..., :-1, :], out=gy[..., :-1, :])
    xp.subtract(u[..., :1, :], u[..., -1:, :], out=gy[..., -1:, :])
    return gx, gy


def circular_gradients_adjoint(gx: Any, gy: Any, out: Any = None) -> Any:
    """``D^T (gx, gy)`` for the differences ``D`` of :func:`circular_gradients` (into ``out`` if given).

    >>> import numpy as np
    >>> u, gx, gy = np.random.default_rng(0).random((3, 4, 5))
    >>> dx, dy = circular_gradients(u)
    >>> lhs = (dx * gx).sum() + (dy * gy).sum()  # <D u, g> = <u, D^T g>
    >>> bool(np.isclose(lhs, (u * circular_gradients_adjoint(gx, gy)).sum()))
    True
    """
    xp = get_array_module(gx)
    out = xp.empty_like(gx) if out is None else out
    xp.subtract(gx[..., :-1], gx[..., 1:], out=out[..., 1:])
    xp.subtract(gx[..., -1:], gx[..., :1], out=out[..., :1])
    out[..., 1:, :] += gy[..., :-1, :] - gy[..., 1:, :]  # difference first: the rounding the golden files record
    out[..., :1, :] += gy[..., -1:, :] - gy[..., :1, :]
    return out


def difference_otf_energy(shape: tuple[int, int], xp: Any, dtype: Any = "float32") -> Any:
    """``|F dx|^2 + |F dy|^2`` of the circular forward differences on ``shape`` (rfft2 layout).

    >>> import numpy as np
    >>> e = difference_otf_energy((4, 4), np)
    >>> e.shape, float(e[0, 0]), float(e[2, 2])  # 0 at the mean, 4 + 4 at the Nyquist corner
    ((4, 3), 0.0, 8.0)
    """
    H, W = shape
    fy = xp.arange(H, dtype=xp.float64).reshape(-1, 1) / H
    fx = xp.arange(W // 2 + 1, dtype=xp.float64).reshape(1, -1) / W
    # |exp(2 pi i f) - 1|^2 = 2 - 2 cos(2 pi f)
    return ((2 - 2 * xp.cos(2 * xp.pi * fy)) + (2 - 2 * xp.cos(2 * xp.pi * fx))).astype(dtype)


def valid_gradients(image: Any) -> tuple[Any, Any]:
    """Pan's (and Cho's) gradients: ``conv2(x, [-1 1; 0 0], 'valid')`` and ``conv2(x, [-1 0; 1 0], 'valid')``.

    Both are ``(..., H-1, W-1)``, anchored at the lower-right pixel of each 2x2 block.

    >>> import numpy as np
    >>> gx, gy = valid_gradients(np.array([[0.0, 1.0], [2.0, 5.0]]))
    >>> gx.tolist(), gy.tolist()
    ([[-3.0]], [[-4.0]])
    """
    gx = image[..., 1:, :-1] - image[..., 1:, 1:]
    gy = image[..., :-1, 1:] - image[..., 1:, 1:]
    return gx, gy
