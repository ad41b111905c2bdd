"""``pan-l0``: blind kernel estimation with the L0 intensity and gradient prior, batched.

Pan, Hu, Su & Yang, "Deblurring text images via L0-regularized intensity and
gradient prior", CVPR 2014, following the authors' MATLAB code and its demo
defaults.  The coarse-to-fine framework (pyramid, wrap boundary, latent step,
salient gradients, CG kernel step, clean-up) is :mod:`.pan`, which the dark channel
estimator shares; this module holds the intensity pixel term
``lam_pixel |S|_0`` of the latent-image step (:class:`IntensityTerm`), the
text version's defaults and the entry points.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backend import get_array_module
from ._common import per_image
from .pan import PanParams, blind_deconv

__all__ = ["IntensityTerm", "PanL0Params", "estimate", "estimate_joint", "intensity_term"]


@dataclass(frozen=True)
class PanL0Params(PanParams):
    """Parameters of ``pan-l0``: :class:`.pan.PanParams` with the text version's defaults.

    >>> params = PanL0Params(iterations=2)
    >>> params.iterations, params.lam_pixel, params.lam_grad
    (2, 0.004, 0.004)
    """


class IntensityTerm:
    """The L0 intensity term of Pan et al. 2014: ``u = S`` with ``S^2 < lam / beta_p`` set to 0.

    >>> import numpy as np
    >>> u = intensity_term(np.array([[[0.01, 0.5]]]), np.array([1e-3]), np.array([2.0]))
    >>> u.tolist()
    [[[0.0, 0.5]]]
    """

    def beta_start(self, latent: Any, lam: np.ndarray) -> np.ndarray:
        return 2 * np.asarray(lam, dtype=np.float64)

    def __call__(self, latent: Any, lam: np.ndarray, beta: np.ndarray) -> Any:
        xp = get_array_module(latent)
        small = latent * latent < per_image(xp, lam / beta, latent.dtype)
        return xp.where(small, 0, latent).astype(latent.dtype, copy=False)


intensity_term = IntensityTerm()


def estimate(windows: Any, kernel_size: int, params: PanL0Params | None = None) -> Any:
    """Estimate one blur kernel per window with the L0 intensity + gradient prior (Pan et al. 2014).

    Parameters
    ----------
    windows : (B, H, W) float, grey levels in [0, 1] (a window outside [0, 1] is min-max normalised)
    kernel_size : odd int >= 3, the support of the kernels to estimate
    params : PanL0Params, the defaults when None

    Returns
    -------
    (B, kernel_size, kernel_size) float32 kernels: sum 1, centred, convolution orientation,
    on the device of ``windows``.

    >>> import numpy as np
    >>> windows = np.random.default_rng(0).random((1, 48, 48), dtype=np.float32)
    >>> k = estimate(windows, 7, PanL0Params(iterations=1))
    >>> k.shape, bool(np.isclose(k.sum(), 1, atol=1e-5))
    ((1, 7, 7), True)
    """
    return blind_deconv(windows, kernel_size, params or PanL0Params(), intensity_term)


def estimate_joint(windows: Any, kernel_size: int, params: PanL0Params | None = None) -> Any:
    """One kernel shared by the windows ``(K, H, W)`` of one image, ``(kernel_size, kernel_size)`` float32.

    Latent images stay per window; the CG kernel step averages the windows' normal
    equations (``joint=True`` of :func:`.pan.blind_deconv`).

    >>> import numpy as np
    >>> windows = np.random.default_rng(0).random((2, 48, 48), dtype=np.float32)
    >>> estimate_joint(windows, 7, PanL0Params(iterations=1)).shape
    (7, 7)
    """
    return blind_deconv(windows, kernel_size, params or PanL0Params(), intensity_term, joint=True)[0]
