"""Kernel utilities and the Hu & Yang similarity: stated properties."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import shift as nd_shift

from kernels_gpu import kernels as kops
from kernels_gpu.similarity import similarity
from kernels_gpu.trajectory import camera_shake_kernel


def _reference_similarity(a, b):
    """Independent formula: brute-force maximum over all integer shifts of the normalised inner product."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    ha, wa = a.shape
    hb, wb = b.shape
    big = np.zeros((ha + 2 * hb, wa + 2 * wb))
    big[hb : hb + ha, wb : wb + wa] = a
    best = 0.0
    for dy in range(ha + hb - 1):
        for dx in range(wa + wb - 1):
            best = max(best, float((big[dy + 1 : dy + 1 + hb, dx + 1 : dx + 1 + wb] * b).sum()))
    return best / (np.linalg.norm(a) * np.linalg.norm(b))


def test_similarity_matches_brute_force(rng):
    a = camera_shake_kernel(rng, 15)
    b = camera_shake_kernel(rng, 19)
    assert float(similarity(a, b)) == pytest.approx(_reference_similarity(a, b), abs=1e-9)


def test_similarity_of_shifted_copy_is_one_and_symmetric(rng):
    k = np.zeros((31, 31), np.float32)
    k[8:23, 8:23] = camera_shake_kernel(rng, 15)
    moved = np.roll(k, (5, -3), axis=(0, 1))
    assert float(similarity(k, moved)) == pytest.approx(1.0, abs=1e-6)
    other = np.zeros_like(k)
    other[6:25, 6:25] = camera_shake_kernel(rng, 19)
    assert float(similarity(k, other)) == pytest.approx(float(similarity(other, k)), abs=1e-12)
    assert float(similarity(k, other)) < 0.9


def test_similarity_is_correlation_not_convolution():
    """An asymmetric kernel against its 180-degree rotation must score below 1 (conv2 would give 1)."""
    k = np.zeros((9, 9))
    k[4, 1:8] = np.linspace(1, 7, 7)
    k[1:4, 7] = 3
    assert float(similarity(k, k)) == pytest.approx(1.0)
    assert float(similarity(k, k[::-1, ::-1])) < 0.9


def test_similarity_batched(rng):
    a = np.stack([camera_shake_kernel(rng, 11) for _ in range(4)])
    b = np.stack([camera_shake_kernel(rng, 13) for _ in range(4)])
    got = similarity(a, b)
    assert got.shape == (4,)
    for i in range(4):
        assert got[i] == pytest.approx(float(similarity(a[i], b[i])), abs=1e-12)


def test_normalize_and_center(rng):
    k = rng.random((3, 11, 11)).astype(np.float32) ** 8
    k[:, :, :3] = 0
    out = kops.normalize(kops.center(k))
    np.testing.assert_allclose(out.sum(axis=(-2, -1)), 1, atol=1e-6)
    cy, cx = kops.centroid(out)
    assert np.all(np.abs(cy - 5) <= 0.5 + 1e-6) and np.all(np.abs(cx - 5) <= 0.5 + 1e-6)
    assert np.array_equal(kops.normalize(np.zeros((5, 5))), np.zeros((5, 5)))


def test_center_moves_by_integer_shift():
    k = np.zeros((9, 9), np.float32)
    k[1, 2] = 1
    out = kops.center(k)
    assert out[4, 4] == 1 and out.sum() == 1


def test_threshold_and_components():
    k = np.zeros((2, 9, 9), np.float32)
    k[:, 2:5, 2:5] = 1.0  # main blob, 9 px
    k[0, 7, 7] = 0.5  # isolated speck, mass 0.5/9.5 < 0.1: removed
    k[1, 7, 7] = 0.01  # below 5 % of the peak: thresholded
    cleaned = kops.remove_small_components(kops.threshold(k, 0.05), 0.1)
    assert cleaned[0, 7, 7] == 0 and cleaned[1, 7, 7] == 0
    assert np.array_equal(cleaned[:, 2:5, 2:5], k[:, 2:5, 2:5])
    # a diagonal neighbour is 8-connected to the blob and stays
    k2 = k[0].copy()
    k2[5, 5] = 0.5
    assert kops.remove_small_components(k2, 0.1)[5, 5] == 0.5


def test_clean_gives_valid_kernel_and_delta_for_empty():
    k = np.zeros((2, 7, 7), np.float32)
    k[0, 0:3, 0:2] = 1
    out = kops.clean(k)
    np.testing.assert_allclose(out.sum(axis=(-2, -1)), 1, atol=1e-6)
    assert out[1, 3, 3] == 1  # all-zero input becomes a delta


def test_fit_size_keeps_the_middle():
    k = np.zeros((5, 5))
    k[2, 2] = 1
    assert kops.fit_size(k, 9)[4, 4] == 1
    assert kops.fit_size(kops.fit_size(k, 9), 5)[2, 2] == 1


def test_subpixel_shift_similarity_stays_high(rng):
    """Sanity of the scale: a half-pixel shifted copy still scores near 1 (interpolation smooths it)."""
    k = np.pad(camera_shake_kernel(rng, 15), 4)
    moved = np.clip(nd_shift(k, (0.5, 0.5), order=1), 0, None)
    assert float(similarity(k, moved)) > 0.8
