"""Properties of the camera-shake kernel generator (kernels_gpu.trajectory)."""

from __future__ import annotations

import numpy as np
import pytest

from kernels_gpu.kernels import centroid
from kernels_gpu.similarity import similarity
from kernels_gpu.trajectory import (
    EXPOSURES,
    TrajectoryParams,
    camera_shake_kernel,
    camera_shake_kernels,
    random_trajectory,
    trajectory_to_kernel,
)


def _bbox_span(kernel: np.ndarray) -> int:
    """Side (px) of the larger axis of the support's bounding box."""
    ys, xs = np.nonzero(kernel)
    return int(max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1))


def _assert_valid(kernel: np.ndarray, size: int) -> None:
    assert kernel.shape == (size, size)
    assert kernel.dtype == np.float32
    assert np.isfinite(kernel).all()
    assert (kernel >= 0).all()
    assert abs(kernel.sum(dtype=np.float64) - 1) < 1e-6
    cy, cx = centroid(kernel.astype(np.float64))
    assert abs(cy - size // 2) <= 0.5
    assert abs(cx - size // 2) <= 0.5


@pytest.mark.parametrize("sizes", [11, 25, 55, (11, 55)])
def test_kernels_are_valid(sizes):
    kernels = camera_shake_kernels(12, sizes, seed=3)
    assert len(kernels) == 12
    for k in kernels:
        size = k.shape[0]
        assert size % 2 == 1
        assert (11 <= size <= 55) if isinstance(sizes, tuple) else size == sizes
        _assert_valid(k, size)


def test_size_range_draws_odd_sizes_across_the_range():
    sizes = {k.shape[0] for k in camera_shake_kernels(40, (11, 55), seed=0)}
    assert all(s % 2 == 1 and 11 <= s <= 55 for s in sizes)
    assert len(sizes) > 10


@pytest.mark.parametrize("size, min_nonzero", [(11, 15), (55, 100)])
def test_kernels_fill_their_array(size, min_nonzero):
    # A path drawn at canvas scale, or scaled by a wrong factor, gives a near-delta
    # blob in a large array or spills over the border; both fail here.
    for k in camera_shake_kernels(20, size, seed=11):
        assert (k > 0).sum() > min_nonzero
        assert _bbox_span(k) >= 0.5 * size
        # the margin of 1 px keeps the outer frame empty
        assert k[0].sum() == k[-1].sum() == k[:, 0].sum() == k[:, -1].sum() == 0


def test_same_seed_same_bytes_different_seed_different_kernels():
    a = camera_shake_kernels(5, (11, 55), seed=42)
    b = camera_shake_kernels(5, (11, 55), seed=42)
    c = camera_shake_kernels(5, 25, seed=43)
    d = camera_shake_kernels(5, 25, seed=44)
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b, strict=True))
    assert all(x.tobytes() != y.tobytes() for x, y in zip(c, d, strict=True))


def test_first_kernels_do_not_depend_on_count():
    short = camera_shake_kernels(3, (11, 55), seed=5)
    long = camera_shake_kernels(8, (11, 55), seed=5)
    assert all(x.tobytes() == y.tobytes() for x, y in zip(short, long[:3], strict=True))


def test_generator_seed_gives_fresh_kernels_each_call():
    rng = np.random.default_rng(0)
    first = camera_shake_kernels(2, 21, seed=rng)
    second = camera_shake_kernels(2, 21, seed=rng)
    assert first[0].tobytes() != second[0].tobytes()


def test_shapes_vary_between_draws():
    kernels = camera_shake_kernels(10, 31, seed=7)
    assert len({k.tobytes() for k in kernels}) == 10
    # different shapes, not shifted copies of one stroke
    sims = [float(similarity(kernels[i], kernels[j])) for i in range(10) for j in range(i + 1, 10)]
    assert max(sims) < 0.95
    assert np.median(sims) < 0.8


def test_similarity_with_itself_is_one_and_with_another_kernel_clearly_below():
    a, b = camera_shake_kernels(2, 25, seed=2024)
    assert float(similarity(a, a)) == pytest.approx(1.0, abs=1e-6)
    assert float(similarity(a, b)) < 0.9


def test_trajectory_follows_the_model():
    params = TrajectoryParams(expl=0.005)
    x = random_trajectory(np.random.default_rng(0), params)
    assert x.shape == (params.iterations,)
    assert x.dtype == np.complex128
    steps = np.abs(np.diff(x))
    # constant speed: every step is max_len / (iterations - 1), total length max_len
    np.testing.assert_allclose(steps, params.max_len / (params.iterations - 1), rtol=1e-9)
    assert steps.sum() == pytest.approx(params.max_len)
    for part in (x.real, x.imag):
        assert part.min() >= 0
        assert part.max() <= params.canvas - 1
        assert part.min() + part.max() == pytest.approx(params.canvas - 1)


def test_zero_anxiety_gives_a_straight_line():
    x = random_trajectory(np.random.default_rng(1), TrajectoryParams(expl=0.0))
    direction = (x[-1] - x[0]) / abs(x[-1] - x[0])
    # the perpendicular distance from the chord is zero for a straight path
    np.testing.assert_allclose(((x - x[0]) * direction.conjugate()).imag, 0, atol=1e-9)


def test_shorter_exposure_gives_smaller_kernels():
    x = random_trajectory(np.random.default_rng(3))
    support = [(trajectory_to_kernel(x, 31, exposure=e) > 0).sum() for e in EXPOSURES]
    assert support == sorted(support)
    assert support[0] < support[-1]
    for e in EXPOSURES:
        _assert_valid(trajectory_to_kernel(x, 31, exposure=e), 31)


def test_few_samples_still_render_a_continuous_stroke():
    # 20 samples magnified onto a 55-px kernel would be dots ~3 px apart without resampling
    k = camera_shake_kernel(np.random.default_rng(1), 55, TrajectoryParams(iterations=20))
    _assert_valid(k, 55)
    assert (k > 0).sum() > 100


def test_static_trajectory_is_a_delta():
    k = trajectory_to_kernel(np.full(5, 3 + 4j), 7)
    expected = np.zeros((7, 7), np.float32)
    expected[3, 3] = 1
    np.testing.assert_array_equal(k, expected)


@pytest.mark.parametrize("size", [0, 1, 2, 4, 12, -3, 10.5])
def test_bad_sizes_raise(size):
    with pytest.raises(ValueError, match="odd"):
        camera_shake_kernels(1, size, seed=0)


@pytest.mark.parametrize("sizes", [(11, 54), (12, 55), (55, 11), (11, 33, 55)])
def test_bad_size_ranges_raise(sizes):
    with pytest.raises(ValueError):
        camera_shake_kernels(1, sizes, seed=0)


def test_size_without_room_for_the_margin_raises():
    with pytest.raises(ValueError, match="margin"):
        trajectory_to_kernel(np.array([0, 1 + 1j]), 3, margin=1.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"iterations": 1}, "iterations"),
        ({"max_len": 0}, "max_len"),
        ({"max_len": 80}, "canvas"),
        ({"expl": -0.1}, "expl"),
        ({"expl": 1.5}, "expl"),
        ({"expl_choices": ()}, "expl_choices"),
        ({"expl_choices": (0.01, 2.0)}, "expl_choices"),
        ({"centripetal_max": -1}, "centripetal_max"),
        ({"gaussian_shake_max": float("nan")}, "gaussian_shake_max"),
        ({"prob_big_shake_max": 1.5}, "prob_big_shake_max"),
        ({"exposure": 0}, "exposure"),
        ({"exposure": 1.1}, "exposure"),
        ({"margin": -1}, "margin"),
    ],
)
def test_parameter_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrajectoryParams(**kwargs)


def test_params_are_frozen():
    with pytest.raises(AttributeError):
        TrajectoryParams().iterations = 10  # type: ignore[misc]
