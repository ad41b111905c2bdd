"""The l0grad estimator recovers real camera-shake kernels, and its registry contract holds.

Thresholds are stated against what *no estimation* scores on the same pair: a
delta kernel and a small Gaussian blob of the estimate's size.  A kernel's peak
carries much of its norm, so those floors are far from 0 (about 0.4-0.6 here);
each test checks its threshold sits clearly above both floors.
"""

from __future__ import annotations

import numpy as np
import pytest

from kernels_gpu import estimators
from kernels_gpu.estimators.l0grad import L0GradParams, noise_sigma
from kernels_gpu.kernels import centroid, delta
from kernels_gpu.similarity import similarity
from tests import levin

MARGIN = 0.1  # each threshold must beat the best trivial kernel by at least this much


def _gaussian(size: int, sigma: float = 1.5) -> np.ndarray:
    r = np.arange(size) - size // 2
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
    return g / g.sum()


def _floor(truth: np.ndarray, size: int) -> float:
    return max(float(similarity(delta(size), truth)), float(similarity(_gaussian(size), truth)))


# (image, kernel, threshold): measured similarities are in the benchmark table; thresholds sit below them
SYNTHETIC = [(2, 8, 0.75), (3, 8, 0.75), (2, 1, 0.70)]
REAL = [(1, 6, 0.75), (3, 8, 0.75), (2, 1, 0.70)]


@pytest.fixture(scope="module")
def l0grad():
    return estimators.get("l0grad")


@pytest.mark.parametrize(("i", "j", "threshold"), SYNTHETIC)
def test_recovers_kernel_on_noisy_synthetic_pair(l0grad, i, j, threshold):
    blurred, truth = levin.synthetic(i, j, sigma=0.01)
    size = truth.shape[0] + 4
    assert threshold >= _floor(truth, size) + MARGIN
    kernel = l0grad(blurred[None], size)[0]
    assert float(similarity(kernel, truth)) > threshold


@pytest.mark.parametrize(("i", "j", "threshold"), REAL)
def test_recovers_kernel_on_real_photograph(l0grad, i, j, threshold):
    blurred, truth = levin.real(i, j)
    size = truth.shape[0] + 4
    assert threshold >= _floor(truth, size) + MARGIN
    kernel = l0grad(blurred[None], size)[0]
    assert float(similarity(kernel, truth)) > threshold


def test_batched_equals_one_by_one_and_kernels_are_valid(l0grad):
    """A batch is just many windows: each result equals the window's own run, and is a valid kernel."""
    blurred, _ = levin.synthetic(4, 6, sigma=0.01)
    windows = np.stack([blurred[0:160, 0:160], blurred[60:220, 40:200], blurred[95:255, 95:255]])
    batch = l0grad(windows, 25)
    assert batch.shape == (3, 25, 25) and batch.dtype == np.float32
    for b in range(3):
        np.testing.assert_allclose(batch[b], l0grad(windows[b : b + 1], 25)[0], atol=2e-5)
    np.testing.assert_allclose(batch.sum(axis=(-2, -1)), 1, atol=1e-5)
    assert batch.min() >= 0
    cy, cx = centroid(batch)
    assert np.all(np.abs(cy - 12) <= 0.5 + 1e-4) and np.all(np.abs(cx - 12) <= 0.5 + 1e-4)


def test_deterministic(l0grad):
    blurred, _ = levin.synthetic(1, 5)
    a = l0grad(blurred[None, :128, :128], 17)
    b = l0grad(blurred[None, :128, :128], 17)
    assert np.array_equal(a, b)


def test_noise_sigma_estimates_known_noise(rng):
    flat = np.full((2, 200, 200), 0.5, np.float32)
    sigma = np.array([0.01, 0.03], np.float32)[:, None, None]
    noisy = flat + sigma * rng.standard_normal(flat.shape).astype(np.float32)
    np.testing.assert_allclose(noise_sigma(noisy).ravel(), [0.01, 0.03], rtol=0.08)


def test_estimator_id_changes_with_any_parameter():
    base = estimators.get("l0grad")
    assert base.id == estimators.get("l0grad").id
    assert base.id.startswith("l0grad@")
    assert estimators.get("l0grad", gamma=30.0).id != base.id
    assert estimators.get("l0grad", iterations=4).id != base.id
    assert base.describe()["params"]["gamma"] == L0GradParams().gamma


def test_bad_inputs_raise_clear_errors(l0grad):
    with pytest.raises(ValueError, match="odd"):
        l0grad(np.zeros((1, 64, 64), np.float32), 4)
    with pytest.raises(ValueError, match="larger than the window"):
        l0grad(np.zeros((1, 32, 32), np.float32), 35)
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        l0grad(np.zeros((64, 64), np.float32), 5)
    with pytest.raises(KeyError, match="unknown estimator"):
        estimators.get("nope")
    with pytest.raises(ValueError, match="scale_factor"):
        L0GradParams(scale_factor=1.5)
