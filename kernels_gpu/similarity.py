"""Kernel similarity of Hu & Yang (ECCV 2012 / IJCV 2015), batched.

``S(k1, k2) = max_s sum_t k1(t) k2(t + s) / (|k1|_2 |k2|_2)``: the peak of the full
2-D *cross-correlation* of the two kernels, normalised by their L2 norms.  It is 1
exactly when one kernel is a shifted copy of the other, it is symmetric, and it
ignores the translation ambiguity of blind deconvolution.  (A public
``kernel_similarity.m`` uses ``conv2``, which flips one kernel: that is wrong.)
"""

from __future__ import annotations

from typing import Any

from .backend import get_array_module
from .conv import correlate

__all__ = ["similarity"]


def similarity(estimate: Any, truth: Any) -> Any:
    """Hu & Yang similarity of each pair of kernels.

    Parameters
    ----------
    estimate : (..., h1, w1) float
    truth : (..., h2, w2) float; sizes may differ from ``estimate``'s, batch axes broadcast

    Returns
    -------
    (...) float in [0, 1] (a Python-scalar-like 0-d array for single kernels);
    0 where either kernel is all zero.
    """
    xp = get_array_module(estimate, truth)
    a = xp.asarray(estimate, dtype=xp.float64)
    b = xp.asarray(truth, dtype=xp.float64)
    peak = correlate(a, b, "full").max(axis=(-2, -1))
    norms = xp.sqrt((a * a).sum(axis=(-2, -1)) * (b * b).sum(axis=(-2, -1)))
    return xp.where(norms > 0, peak / xp.where(norms > 0, norms, 1), 0.0)
