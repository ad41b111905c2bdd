"""Kernel similarity of Hu & Yang (ECCV 2012 / IJCV 2015), batched.

``S(k1, k2) = max_s sum_t k1(t) k2(t + s) / (|k1|_2 |k2|_2)``: the peak of the full
2-D *cross-correlation* of the two kernels, normalised by their L2 norms.  It is 1
exactly when one kernel is a shifted copy of the other, it is symmetric, and it
ignores the translation ambiguity of blind deconvolution.  (A public
``kernel_similarity.m`` uses ``conv2``, which flips one kernel: that is wrong.)

:func:`consensus` picks, among several estimates of one kernel (say from the K best
windows of an image), the medoid: the estimate most similar to the others, which needs
no ground truth.
"""

from __future__ import annotations

from typing import Any

from .backend import get_array_module
from .conv import correlate

__all__ = ["consensus", "pairwise_similarity", "similarity"]


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

    >>> import numpy as np
    >>> k = np.zeros((5, 5)); k[2, 1:4] = 1 / 3
    >>> shifted = np.roll(k, 1, axis=1)
    >>> round(float(similarity(k, shifted)), 6), round(float(similarity(k, k.T)), 3)
    (1.0, 0.333)
    """
    xp = get_array_module(estimate, truth)
    a = xp.asarray(estimate, dtype=xp.float64)
    b = xp.asarray(truth, dtype=xp.float64)
    peak = correlate(a, b, "full").max(axis=(-2, -1))
    norms = xp.sqrt((a * a).sum(axis=(-2, -1)) * (b * b).sum(axis=(-2, -1)))
    return xp.where(norms > 0, peak / xp.where(norms > 0, norms, 1), 0.0)


def pairwise_similarity(kernels: Any) -> Any:
    """The ``(K, K)`` float64 matrix of :func:`similarity` between every two of ``(K, h, w)`` kernels.

    >>> import numpy as np
    >>> kernels = np.random.default_rng(0).random((3, 5, 5))
    >>> m = pairwise_similarity(kernels)
    >>> m.shape, bool(np.allclose(m, m.T)), bool(np.allclose(np.diag(m), 1))
    ((3, 3), True, True)
    """
    return similarity(kernels[:, None], kernels[None, :])


def consensus(kernels: Any) -> int:
    """Index of the medoid of ``(K, h, w)`` kernels: the highest median similarity to the other ``K - 1``.

    Ties go to the lowest index; one kernel is its own medoid.  Kernels that estimate the
    same blur resemble each other and failures tend to differ from them and from each other,
    so the medoid is a ground-truth-free choice among the estimates of several windows.

    >>> import numpy as np
    >>> line = np.zeros((7, 7)); line[3, 1:6] = 1 / 5
    >>> near = np.zeros((7, 7)); near[3, 1:5] = 1 / 4
    >>> dot = np.zeros((7, 7)); dot[3, 3] = 1
    >>> consensus(np.stack([dot, line, near, line.T]))  # medians 0.45, 0.45, 0.5, 0.22
    2
    """
    xp = get_array_module(kernels)
    count = kernels.shape[0]
    if kernels.ndim != 3 or count < 1:
        raise ValueError(f"kernels must be (K, h, w) with K >= 1, got shape {tuple(kernels.shape)}")
    if count == 1:
        return 0
    matrix = pairwise_similarity(kernels)
    others = matrix[~xp.eye(count, dtype=bool)].reshape(count, count - 1)
    return int(xp.argmax(xp.median(others, axis=1)))
