"""Convolution equals direct convolution, and its adjoint passes the dot test."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal

from kernels_gpu.backend import irfft2, next_fast_len, prev_fast_len, rfft2
from kernels_gpu.conv import convolve, convolve_adjoint, correlate, kernel_otf, output_shape
from tests.tolerance import TOLERANCE


@pytest.mark.parametrize("mode", ["full", "same", "valid"])
@pytest.mark.parametrize("kshape", [(3, 3), (4, 5), (6, 2), (15, 15)])
def test_convolve_matches_scipy(rng, mode, kshape):
    images = rng.random((3, 40, 33)).astype(np.float32)
    kernel = rng.random(kshape).astype(np.float32)
    got = convolve(images, kernel, mode)
    want = np.stack([scipy.signal.convolve2d(x, kernel, mode) for x in images])
    assert got.shape == want.shape == (3, *output_shape((40, 33), kshape, mode))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_convolve_batched_kernels_broadcast(rng):
    images = rng.random((4, 30, 30)).astype(np.float32)
    kernels = rng.random((4, 5, 5)).astype(np.float32)
    got = convolve(images, kernels, "same")
    for i in range(4):
        np.testing.assert_allclose(got[i], scipy.signal.convolve2d(images[i], kernels[i], "same"), rtol=1e-4, atol=1e-4)


def test_correlate_is_flipped_convolution(rng):
    x = rng.random((25, 21))
    k = rng.random((5, 7))
    np.testing.assert_allclose(correlate(x, k, "valid"), scipy.signal.correlate2d(x, k, "valid"), atol=1e-10)


@pytest.mark.parametrize("mode", ["full", "same", "valid"])
@pytest.mark.parametrize("kshape", [(5, 5), (4, 7)])
def test_adjoint_dot_test(rng, mode, kshape):
    """<A x, y> == <x, A^T y> for random x, y (float64: the identity must hold to ~1e-10)."""
    shape = (2, 31, 26)
    kernel = rng.random(kshape)
    x = rng.standard_normal(shape)
    y = rng.standard_normal((2, *output_shape(shape[1:], kshape, mode)))
    lhs = float((convolve(x, kernel, mode) * y).sum())
    rhs = float((x * convolve_adjoint(y, kernel, shape[1:], mode)).sum())
    assert abs(lhs - rhs) <= TOLERANCE["float64"]["rtol"] * max(abs(lhs), 1.0)


def test_kernel_otf_is_circular_convolution_without_shift(rng):
    x = rng.random((32, 30))
    k = rng.random((5, 5))
    got = irfft2(rfft2(x) * kernel_otf(k, x.shape), s=x.shape)
    # circular convolution by padding periodically and taking the valid part
    padded = np.pad(x, 2, mode="wrap")
    np.testing.assert_allclose(got, scipy.signal.convolve2d(padded, k, "valid"), atol=1e-10)


def test_valid_mode_rejects_small_images():
    with pytest.raises(ValueError, match="at least the kernel"):
        convolve(np.zeros((4, 4)), np.ones((5, 5)), "valid")


def test_fast_lengths_are_5_smooth():
    for n in [1, 7, 13, 97, 228, 255, 451]:
        up, down = next_fast_len(n), prev_fast_len(n)
        assert down <= n <= up
        for m in (up, down):
            r = m
            for p in (2, 3, 5):
                while r % p == 0:
                    r //= p
            assert r == 1
    assert next_fast_len(228) == 240 and prev_fast_len(228) == 225
