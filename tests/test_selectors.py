"""Baseline window selectors (training/selectors.py) on tiny images: fergus, xu-jia, hu-yang, random, whole.

Each test states a property: windows are in bounds; the box-sum scorers equal a
brute-force per-window computation; Fergus rejects clipped windows and prefers
texture to flat; Xu & Jia's usefulness map is what makes a clean step edge beat
noise of the same gradient energy; the logistic regression's gradient is right
and it separates a separable problem; random picks are reproducible.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from scipy.signal import fftconvolve

from pipeline.windows import grid
from tests import levin
from training.selectors import Box, best_by_scores, random_window, rank_by_scores
from training.selectors.baselines import (
    XU_JIA_EPS,
    LogisticRegression,
    _gabor_bank,
    fergus_scores,
    gabor_feature_names,
    gabor_features,
    hu_yang_scores,
    neighbourhood_sums,
    usefulness_map,
    window_sums,
    xu_jia_scores,
)

SIZE, STRIDE = 96, 24


def _sharp(i: int) -> np.ndarray:
    return iio.imread(levin.LEVIN / "sharp" / f"im{i}.png").astype(np.float64) / 255


# ----------------------------------------------------------------------------- Box


def test_box_from_corner_whole_and_slices():
    box = Box.from_corner(np.array([3, 5], np.int32), 10)
    assert box == Box(3, 5, 10, 10)
    assert type(box.y) is int and json.loads(json.dumps(box.as_dict())) == {"y": 3, "x": 5, "height": 10, "width": 10}
    image = np.arange(20 * 30).reshape(20, 30)
    assert image[box.slices].shape == (10, 10) and image[box.slices][0, 0] == image[3, 5]
    assert box.fits(image.shape) and not Box(15, 0, 10, 10).fits(image.shape)
    whole = Box.whole(image.shape)
    assert whole == Box(0, 0, 20, 30) and np.array_equal(image[whole.slices], image)
    for bad in ((-1, 0, 5, 5), (0, 0, 0, 5), (0, 0.5, 5, 5)):
        with pytest.raises(ValueError):
            Box(*bad)


# ------------------------------------------------------------- every selector


@pytest.fixture(scope="module")
def blurred() -> np.ndarray:
    return levin.synthetic(1, 3)[0]


def test_every_selector_returns_an_in_bounds_window(blurred):
    corners = grid(*blurred.shape, SIZE, STRIDE)
    n = len(corners)
    features = gabor_features(blurred, corners, SIZE)
    fergus = fergus_scores(blurred, corners, SIZE)
    labels = (fergus > np.median(fergus)).astype(float)
    model = LogisticRegression().fit(features, labels)
    scores = {
        "fergus": fergus,
        "xu-jia": xu_jia_scores(blurred, corners, SIZE),
        "hu-yang": hu_yang_scores(blurred, corners, SIZE, model),
    }
    picks = {name: best_by_scores(s) for name, s in scores.items()}
    picks["random"] = random_window(corners, seed=0, key="im1_kernel3")
    for name, s in scores.items():
        assert s.shape == (n,) and np.isfinite(s).all(), name
    for name, index in picks.items():
        assert 0 <= index < n, name
        box = Box.from_corner(corners[index], SIZE)
        assert box.fits(blurred.shape) and blurred[box.slices].shape == (SIZE, SIZE), name
    assert Box.whole(blurred.shape).fits(blurred.shape)


def test_scorers_reject_windows_outside_the_image(blurred):
    corners = np.array([[0, 0], [blurred.shape[0] - SIZE + 1, 0]])
    for scorer in (fergus_scores, xu_jia_scores, gabor_features):
        with pytest.raises(ValueError, match="outside"):
            scorer(blurred, corners, SIZE)
    with pytest.raises(ValueError, match="grey image"):
        fergus_scores(np.zeros((SIZE, SIZE, 3)), [[0, 0]], SIZE)


# ------------------------------------------------- box sums against brute force


@pytest.fixture
def small(rng) -> tuple[np.ndarray, np.ndarray, int]:
    image = gaussian_filter(rng.random((23, 19)), 0.7)
    image[2:4, 3:6] = 1.0  # a few clipped pixels, so the rejection path is exercised too
    image[15, 10] = 0.0
    size = 8
    return image, grid(23, 19, size, 3), size


def test_window_and_neighbourhood_sums_match_loops(small, rng):
    image, corners, size = small
    assert np.allclose(window_sums(image, corners, size), [image[y : y + size, x : x + size].sum() for y, x in corners])
    assert np.allclose(
        window_sums(image, corners, (size, 5)), [image[y : y + size, x : x + 5].sum() for y, x in corners]
    )
    h = 5
    padded = np.pad(image, h // 2)
    loops = np.array([[padded[i : i + h, j : j + h].sum() for j in range(19)] for i in range(23)])
    assert np.allclose(neighbourhood_sums(image, h), loops)


def test_fergus_matches_brute_force(small):
    image, corners, size = small
    want = []
    for y, x in corners:
        window = image[y : y + size, x : x + size]
        variance = np.diff(window, axis=1).var() + np.diff(window, axis=0).var()
        clipped = np.mean((window >= 0.98) | (window <= 0.02))
        want.append(-np.inf if clipped > 0.01 else variance)
    got = fergus_scores(image, corners, size)
    assert np.isinf(want).any() and not np.isinf(want).all()  # the fixture exercises both branches
    assert np.array_equal(np.isinf(got), np.isinf(want))
    finite = np.isfinite(want)
    assert np.allclose(got[finite], np.asarray(want)[finite], rtol=1e-9, atol=1e-15)


def test_xu_jia_matches_brute_force(small):
    image, corners, size = small
    h, sigma, tau_r = 5, 1.0, 0.6
    B = gaussian_filter(image, sigma, mode="nearest")
    H, W = B.shape
    gx, gy = np.zeros((H, W)), np.zeros((H, W))
    for i in range(H):
        for j in range(W):
            gx[i, j] = B[i, j + 1] - B[i, j] if j + 1 < W else 0.0
            gy[i, j] = B[i + 1, j] - B[i, j] if i + 1 < H else 0.0
    r = np.zeros((H, W))
    for i in range(H):
        for j in range(W):
            sx = sy = total = 0.0
            for a in range(max(0, i - h // 2), min(H, i + h // 2 + 1)):
                for b in range(max(0, j - h // 2), min(W, j + h // 2 + 1)):
                    sx, sy, total = sx + gx[a, b], sy + gy[a, b], total + np.hypot(gx[a, b], gy[a, b])
            r[i, j] = np.hypot(sx, sy) / (total + 0.5 / 255)
    assert np.allclose(usefulness_map(image, h, sigma)[0], r)
    useful = np.hypot(gx, gy) * (r > tau_r)
    want = [useful[y : y + size, x : x + size].sum() for y, x in corners]
    assert np.allclose(xu_jia_scores(image, corners, size, h=h, sigma=sigma, tau_r=tau_r), want)


def test_gabor_features_match_per_kernel_convolution(small):
    image, corners, size = small
    got = gabor_features(image, corners, size)
    for k, kernel in enumerate(_gabor_bank()):
        hy, hx = kernel.shape[0] // 2, kernel.shape[1] // 2
        response = np.abs(fftconvolve(np.pad(image, ((hy, hy), (hx, hx)), mode="symmetric"), kernel, mode="valid"))
        windows = [response[y : y + size, x : x + size] for y, x in corners]
        assert np.allclose(got[:, 2 * k], [w.mean() for w in windows], atol=1e-12)
        assert np.allclose(got[:, 2 * k + 1], [w.std() for w in windows], atol=1e-7)


# ------------------------------------------------------------------------ fergus


def test_fergus_prefers_texture_to_flat():
    image = _sharp(2)
    image[:, 128:] = image[:, 128:].mean()  # right half flat
    corners = grid(*image.shape, SIZE, STRIDE)
    scores = fergus_scores(image, corners, SIZE)
    textured = corners[:, 1] + SIZE <= 128
    flat = corners[:, 1] >= 128
    assert textured.any() and flat.any()
    assert scores[textured].min() > scores[flat].max()
    assert corners[best_by_scores(scores), 1] + SIZE <= 128


def test_fergus_rejects_a_window_with_a_saturated_block(rng):
    strong = 0.5 + 0.15 * rng.standard_normal((64, 64))
    weak = 0.5 + 0.05 * rng.standard_normal((64, 64))
    image = np.clip(np.hstack([strong, weak]), 0.05, 0.95)
    corners = np.array([[0, 0], [0, 64]])
    assert best_by_scores(fergus_scores(image, corners, 64)) == 0  # more texture wins while unclipped
    bright = image.copy()
    bright[10:18, 10:18] = 1.0  # 64 px = 1.6 % of the window > 1 % tolerance
    scores = fergus_scores(bright, corners, 64)
    assert scores[0] == -np.inf and np.isfinite(scores[1]) and best_by_scores(scores) == 1
    dark = image.copy()
    dark[10:18, 10:18] = 0.0
    assert best_by_scores(fergus_scores(dark, corners, 64)) == 1
    assert best_by_scores(fergus_scores(dark, corners, 64, dark=False)) == 0
    # a tolerance above the block's fraction accepts the window again
    assert best_by_scores(fergus_scores(bright, corners, 64, tolerance=0.02)) == 0


def test_fergus_falls_back_to_variance_when_every_window_is_clipped(rng):
    image = 0.5 + 0.1 * rng.standard_normal((64, 128))
    image[::8, ::8] = 1.0  # 1.6 % of every window
    scores = fergus_scores(image, np.array([[0, 0], [0, 64]]), 64)
    assert np.isfinite(scores).all() and (scores > 0).all()


# ------------------------------------------------------------------------ xu-jia


def test_xu_jia_prefers_a_clean_edge_to_noise_of_equal_gradient_energy(rng):
    """The usefulness map, not the gradient energy, decides: with tau_r = 0 the noise wins."""
    H, W, size = 64, 160, 64
    edge = np.full((H, W), 0.7)
    edge[:, :32] = 0.3  # a straight step inside the left window, far from its borders
    noise = np.zeros((H, W))
    noise[:, 96:] = rng.standard_normal((H, 64))  # fine noise filling the right window
    corners = np.array([[0, 0], [0, 96]])

    def energy(image: np.ndarray) -> np.ndarray:
        magnitude = usefulness_map(image)[1]  # ‖∇B‖ after the selector's own smoothing
        return window_sums(magnitude**2, corners, size)

    # the smoothed gradient is linear in the noise amplitude, so this equalises the two windows' energy
    amplitude = np.sqrt(energy(edge)[0] / energy(noise)[1])
    image = edge + amplitude * noise
    e = energy(image)
    assert e[0] == pytest.approx(e[1], rel=0.02)
    assert 0.01 < amplitude < 0.2  # fine, low-contrast noise, not clipping-level

    assert best_by_scores(xu_jia_scores(image, corners, size)) == 0
    # without the usefulness mask the score is the plain gradient magnitude, which noise spreads wider
    assert best_by_scores(xu_jia_scores(image, corners, size, tau_r=0.0)) == 1


def test_usefulness_map_is_high_on_a_straight_edge_and_low_on_noise(rng):
    edge = np.zeros((40, 40))
    edge[:, 20:] = 1.0
    r = usefulness_map(edge)[0]
    assert r[10:30, 18:22].min() > 0.99
    r_noise = usefulness_map(rng.standard_normal((60, 60)))[0][10:-10, 10:-10]
    assert np.median(r_noise) < 0.45
    # a flat image has no gradient at all: r is 0 there, thanks to the constant
    assert XU_JIA_EPS == pytest.approx(0.5 / 255) and np.all(usefulness_map(np.full((20, 20), 0.5))[0] == 0)


# ----------------------------------------------------------------------- hu-yang


def test_gabor_features_shape_finite_and_telling_flat_from_texture(blurred):
    image = blurred.astype(np.float64).copy()
    image[:, 128:] = 0.5
    corners = np.array([[0, 0], [0, 255 - SIZE]])
    features = gabor_features(image, corners, SIZE)
    names = gabor_feature_names()
    assert features.shape == (2, len(names)) and 25 <= len(names) <= 30 and len(set(names)) == len(names)
    assert np.isfinite(features).all()
    gabor_means = features[:, 0:24:2]
    assert (gabor_means[0] > 10 * gabor_means[1]).all()
    assert features[1, names.index("gradient_mean")] < 1e-12 < features[0, names.index("gradient_mean")]
    assert features[1, names.index("strong_edge_fraction")] == 0 < features[0, names.index("strong_edge_fraction")]


def _separable(rng, n=200, F=6) -> tuple[np.ndarray, np.ndarray]:
    y = (np.arange(n) % 2).astype(float)
    X = rng.standard_normal((n, F)) * [1, 5, 5, 5, 5, 5]
    X[:, 0] += np.where(y > 0, 4.0, -4.0)  # only feature 0 tells the classes apart, with a wide margin
    X[:, 0] = np.where(y > 0, np.maximum(X[:, 0], 1.0), np.minimum(X[:, 0], -1.0))
    return X * 100 + 7, y  # large offset and scale: the standardisation must cope


def test_logistic_regression_separates_a_separable_problem(rng):
    X, y = _separable(rng)
    model = LogisticRegression().fit(X, y)
    assert np.mean((model.decision_function(X) > 0) == (y > 0.5)) == 1.0
    assert np.all((model.predict_proba(X) > 0.5) == (y > 0.5))
    assert np.argmax(np.abs(model.coef_)) == 0


def test_logistic_regression_gradient_matches_finite_differences(rng):
    X, y = rng.standard_normal((40, 5)), rng.random(40)  # soft targets are allowed
    weight = rng.random(40)
    weight /= weight.sum()
    theta = rng.standard_normal(6)
    loss, grad = LogisticRegression.objective(theta, X, y, weight, 0.3)
    step = 1e-6
    numeric = [
        (
            LogisticRegression.objective(theta + step * e, X, y, weight, 0.3)[0]
            - LogisticRegression.objective(theta - step * e, X, y, weight, 0.3)[0]
        )
        / (2 * step)
        for e in np.eye(6)
    ]
    assert np.isfinite(loss)
    assert np.allclose(grad, numeric, rtol=1e-6, atol=1e-9)


def test_logistic_regression_sample_weight_and_validation(rng):
    X, y = _separable(rng)
    heavy = LogisticRegression().fit(X, y, sample_weight=np.where(y > 0, 10.0, 1.0))
    plain = LogisticRegression().fit(X, y)
    assert heavy.intercept_ > plain.intercept_  # weighting the positives shifts the boundary toward them
    with pytest.raises(RuntimeError):
        LogisticRegression().decision_function(X)
    with pytest.raises(ValueError):
        LogisticRegression().fit(X, y + 1)
    with pytest.raises(ValueError):
        plain.decision_function(X[:, :3])


def test_logistic_regression_round_trips_through_json(rng):
    X, y = _separable(rng)
    model = LogisticRegression(alpha=0.01).fit(X, y)
    again = LogisticRegression.from_dict(json.loads(json.dumps(model.to_dict())))
    assert again.alpha == 0.01
    assert np.array_equal(again.decision_function(X), model.decision_function(X))
    with pytest.raises(ValueError):
        LogisticRegression.from_dict({**model.to_dict(), "kind": "cnn"})


# ---------------------------------------------------------------- random, choose


def test_random_window_is_reproducible_per_seed_and_key():
    corners = grid(255, 255, 64, 8)
    n = len(corners)
    assert random_window(corners, 0, "im1") == random_window(corners, 0, "im1")
    assert random_window(corners, 0, 7) == random_window(corners, 0, "7")
    picks = {random_window(corners, 0, key) for key in range(20)}
    assert len(picks) > 1 and all(0 <= p < n for p in picks)
    assert len({random_window(corners, seed, "im1") for seed in range(20)}) > 1
    with pytest.raises(ValueError):
        random_window(corners, -1, "im1")


def test_random_window_is_the_same_in_another_process():
    """No process-salted ``hash``: a fresh interpreter with another hash seed picks the same windows."""
    code = (
        "from pipeline.windows import grid; from training.selectors import random_window; "
        "print([random_window(grid(255, 255, 64, 8), 3, k) for k in ('im1', 'im2', 'a/b.png')])"
    )
    here = [random_window(grid(255, 255, 64, 8), 3, k) for k in ("im1", "im2", "a/b.png")]
    root = pathlib.Path(__file__).resolve().parent.parent
    for hash_seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=root,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == str(here)


def test_best_and_rank_by_scores_break_ties_by_window_id():
    scores = np.array([1.0, 3.0, np.nan, 3.0, -np.inf])
    assert best_by_scores(scores) == 1
    assert rank_by_scores(scores).tolist() == [1, 3, 0, 4, 2]
    assert best_by_scores([np.nan, -np.inf]) == 1
    with pytest.raises(ValueError):
        best_by_scores([])


# ----------------------------------------------------------------------- registry


def test_registry_names_needs_and_widened_forms():
    from training import selectors

    assert selectors.available()[:7] == ["cnn", "fergus", "xu-jia", "hu-yang", "whole", "random", "oracle"]
    assert set(selectors.DEFAULT) <= {n for n in selectors.DEFAULT if selectors.get(n)}
    assert selectors.get("cnn").needs == "model" and selectors.get("cnn").model_file == "model.pt"
    assert selectors.get("hu-yang").model_file == "hu_yang.json"
    assert selectors.get("oracle").needs == "truth" and selectors.get("fergus").needs == "nothing"
    joint = selectors.get("cnn-joint-3")
    assert (joint.top, joint.combine, joint.base, joint.needs) == (3, "joint", "cnn", "model")
    consensus = selectors.get("xu-jia-consensus-5")
    assert (consensus.top, consensus.combine, consensus.base) == (5, "consensus", "xu-jia")
    assert selectors.get("cnn-joint-1").top == 1
    for bad in ("nope", "cnn-joint-0", "whole-joint-3", "cnn-joint-", "cnn-median-3", "nope-joint-3"):
        with pytest.raises(KeyError, match="unknown selector"):
            selectors.get(bad)
    with pytest.raises(ValueError):
        selectors.register(selectors.Selector("cnn", "nothing", None))  # taken
    with pytest.raises(ValueError):
        selectors.register(selectors.Selector("mine-joint-2", "nothing", None))  # reserved form


def _context(image, size=SIZE, stride=STRIDE, **kw):
    from training import selectors

    def fake_estimate(windows, k):  # a kernel that encodes the window's mean, to tell windows apart
        out = np.zeros((len(windows), k, k), np.float32)
        out[:, k // 2, k // 2] = 1
        out[:, k // 2, k // 2 + 1] = np.asarray(windows).mean(axis=(1, 2))
        return out / out.sum(axis=(1, 2), keepdims=True)

    return selectors.Context(image, grid(*image.shape, size, stride), size, 9, fake_estimate, **kw)


def _shared(a: Box, b: Box) -> int:
    """Pixels two boxes have in common."""
    rows = min(a.y + a.height, b.y + b.height) - max(a.y, b.y)
    cols = min(a.x + a.width, b.x + b.width) - max(a.x, b.x)
    return max(rows, 0) * max(cols, 0)


def test_choose_takes_the_top_k_windows_that_overlap_little(blurred):
    """K windows in rank order, each sharing at most a quarter of its area with every better one
    kept; a better-ranked window is skipped only for overlapping a kept one by more."""
    from training import selectors

    context = _context(blurred)
    scores = fergus_scores(blurred, context.corners, SIZE)
    ranked = [Box.from_corner(context.corners[i], SIZE) for i in rank_by_scores(scores)]
    boxes = selectors.choose(selectors.get("fergus-consensus-3"), context)
    assert len(boxes) == 3 and boxes[0] == ranked[0]
    assert all(_shared(a, b) <= SIZE * SIZE / 4 for i, a in enumerate(boxes) for b in boxes[:i])
    positions = [ranked.index(b) for b in boxes]
    assert positions == sorted(positions)
    skipped = [b for b in ranked[: positions[-1]] if b not in boxes]
    assert skipped and all(max(_shared(b, k) for k in boxes) > SIZE * SIZE / 4 for b in skipped)
    assert selectors.choose(selectors.get("fergus"), context) == boxes[:1]
    assert selectors.choose(selectors.get("whole"), context) == [Box.whole(blurred.shape)]
    many = selectors.get(f"fergus-joint-{len(context.corners)}")  # more than the image holds: fewer
    spread = selectors.choose(many, context)
    assert 3 <= len(spread) < len(context.corners) and spread[:3] == boxes
    assert all(_shared(a, b) <= SIZE * SIZE / 4 for i, a in enumerate(spread) for b in spread[:i])
    # the random selector's best window is random_window's pick, the rest a seeded order
    context = _context(blurred, seed=3, key="im1")
    first = selectors.choose(selectors.get("random-consensus-4"), context)
    assert first[0] == Box.from_corner(context.corners[random_window(context.corners, 3, "im1")], SIZE)
    assert first == selectors.choose(selectors.get("random-consensus-4"), context) and len(set(first)) == 4


def test_medoid_picks_the_kernel_most_like_the_others():
    from training.selectors import medoid

    def line(angle_deg, size=15):
        k = np.zeros((size, size))
        t = np.radians(angle_deg)
        for r in np.linspace(-5, 5, 41):
            k[int(np.rint(7 + r * np.sin(t))), int(np.rint(7 + r * np.cos(t)))] = 1
        return k / k.sum()

    # three near-horizontal lines and one vertical outlier: a middle horizontal one is the medoid
    kernels = np.stack([line(90), line(0), line(8), line(-8)])
    assert medoid(kernels) == 1
    assert medoid(kernels[:1]) == 0
    assert medoid(np.stack([line(0), line(0)])) == 0  # ties go to the better-ranked window


def test_consensus_estimates_every_window_and_keeps_the_medoid(blurred):
    from training import selectors

    context = _context(blurred)
    selector = selectors.get("fergus-consensus-3")
    boxes = selectors.choose(selector, context)
    kernel, index = selectors.estimate(selector, context, boxes)
    stack = np.stack([blurred[b.slices] for b in boxes]).astype(np.float32)
    each = context.estimate(stack, 9)
    assert index == selectors.medoid(each) and np.array_equal(kernel, each[index])
    with pytest.raises(ValueError, match="joint"):  # no joint estimator in this context
        selectors.estimate(selectors.get("fergus-joint-3"), context, boxes)
    joint = _context(blurred, estimate_joint=lambda w, k: context.estimate(w, k).mean(axis=0))
    kernel, index = selectors.estimate(selectors.get("fergus-joint-3"), joint, boxes)
    assert index == 0 and np.allclose(kernel, each.mean(axis=0))
