"""NumPy and CuPy give the same results: golden files made by the NumPy path, checked on both."""

from __future__ import annotations

import numpy as np
import pytest

from tests import golden

# float32 FFT rounding differs between pocketfft and cuFFT; kernels are thresholded and
# cleaned, so an entry sitting on a threshold may flip: compare kernels by similarity too.
TOL = {"rtol": 1e-3, "atol": 1e-5}


def _stored():
    with np.load(golden.GOLDEN / "short_runs.npz") as data:
        return dict(data)


def _compare(got, want):
    np.testing.assert_allclose(got["convolve_same"], want["convolve_same"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["similarity"], want["similarity"], atol=2e-3)
    diff = np.abs(got["deconvolve"] - want["deconvolve"])
    assert diff.mean() < 1e-4 and diff.max() < 1e-2
    from kernels_gpu.similarity import similarity

    agreement = similarity(got["l0grad_kernels"], want["l0grad_kernels"])
    assert np.all(agreement > 0.995), agreement
    np.testing.assert_allclose(got["l0grad_kernels"].sum(axis=(-2, -1)), 1, atol=1e-5)
    for name in ("pan_l0_kernels", "dark_channel_kernels"):
        agreement = similarity(got[name], want[name])
        assert np.all(agreement > 0.995), (name, agreement)
        np.testing.assert_allclose(got[name].sum(axis=(-2, -1)), 1, atol=1e-5)


def test_numpy_reproduces_golden_files():
    _compare(golden.compute(np), _stored())


@pytest.mark.gpu
def test_cupy_matches_golden_files():
    import cupy

    _compare(golden.compute(cupy), _stored())


@pytest.mark.gpu
def test_cupy_full_estimate_matches_numpy():
    """A full default-parameter run on a real pair: CuPy and NumPy kernels agree."""
    import cupy

    from kernels_gpu import estimators
    from kernels_gpu.similarity import similarity
    from tests import levin

    blurred, truth = levin.synthetic(2, 3)
    l0grad = estimators.get("l0grad")
    on_cpu = l0grad(blurred[None], 19)
    on_gpu = l0grad(cupy.asarray(blurred[None]), 19)
    assert isinstance(on_gpu, cupy.ndarray)
    assert float(similarity(on_cpu, on_gpu.get())[0]) > 0.98
    assert abs(float(similarity(on_gpu.get(), truth)[0]) - float(similarity(on_cpu, truth)[0])) < 0.02


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["pan-l0", "dark-channel"])
def test_cupy_full_pan_estimate_matches_numpy(name):
    """pan-l0 and dark-channel with their default parameters: CuPy and NumPy kernels agree on a real pair."""
    import cupy

    from kernels_gpu import estimators
    from kernels_gpu.similarity import similarity
    from tests import levin

    blurred, truth = levin.synthetic(2, 3)
    est = estimators.get(name)
    on_cpu = est(blurred[None], 19)
    on_gpu = est(cupy.asarray(blurred[None]), 19)
    assert isinstance(on_gpu, cupy.ndarray)
    assert float(similarity(on_cpu, on_gpu.get())[0]) > 0.98
    assert abs(float(similarity(on_gpu.get(), truth)[0]) - float(similarity(on_cpu, truth)[0])) < 0.02
