"""pan-l0 and dark-channel: they recover real camera-shake kernels, and each batched piece equals its plain form.

Recovery thresholds are stated against what *no estimation* scores on the same pair (a delta
kernel and a small Gaussian blob, see ``tests/test_l0grad.py``) and sit at least
``MARGIN`` above the better of the two.  Each recovery test runs one batch that mixes
synthetic (sigma = 0.01) and real photographs sharing a kernel, so a single call also
exercises batching of different images.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
from numpy.lib.stride_tricks import sliding_window_view

from kernels_gpu import estimators
from kernels_gpu.boundary import wrap_boundary
from kernels_gpu.estimators import pan, pan_l0
from kernels_gpu.estimators._common import cg_kernel_step, fix_size, opt_fft_size
from kernels_gpu.estimators.dark_channel import (
    DarkChannelParams,
    dark_channel,
    otsu_level,
    write_back,
    write_back_sequential,
)
from kernels_gpu.gradients import valid_gradients
from kernels_gpu.kernels import centroid
from kernels_gpu.pyramid import imresize_cubic, levin_downsample
from kernels_gpu.similarity import similarity
from tests import levin
from tests.test_l0grad import MARGIN, _floor

# (estimator, kernel, [(source, image, threshold), ...]): all windows of a case share the kernel size.
# Measured here (version 2): pan-l0 0.765 / 0.822 / 0.767 (floor 0.557),
# dark-channel 0.795 / 0.838 / 0.797 (floor 0.569).
RECOVERY = [
    ("pan-l0", 8, [("synthetic", 3, 0.75), ("real", 3, 0.73), ("synthetic", 2, 0.73)]),
    ("dark-channel", 6, [("synthetic", 1, 0.75), ("real", 1, 0.80), ("synthetic", 3, 0.78)]),
]


@pytest.mark.parametrize(("name", "j", "cases"), RECOVERY)
def test_recovers_real_kernels(name, j, cases):
    pairs = [levin.synthetic(i, j, sigma=0.01) if source == "synthetic" else levin.real(i, j) for source, i, _ in cases]
    truth = pairs[0][1]
    size = truth.shape[0] + 4
    floor = _floor(truth, size)
    kernels = estimators.get(name)(np.stack([blurred for blurred, _ in pairs]), size)
    for (source, i, threshold), kernel in zip(cases, kernels, strict=True):
        assert threshold >= floor + MARGIN, (source, i, threshold, floor)
        assert float(similarity(kernel, truth)) > threshold, (name, source, i)


@pytest.mark.parametrize("name", ["pan-l0", "dark-channel"])
def test_batched_equals_one_by_one_and_kernels_are_valid(name, monkeypatch):
    """A batch is just many windows: each result equals the window's own run, and is a valid kernel."""
    blurred, _ = levin.synthetic(4, 5, sigma=0.01)
    windows = np.stack([blurred[0:96, 0:96], blurred[60:156, 40:136], blurred[150:246, 120:216]])
    est = estimators.get(name, iterations=1, beta_max=1e3)
    batch = est(windows, 13)
    assert batch.shape == (3, 13, 13) and batch.dtype == np.float32
    for b in range(3):
        np.testing.assert_allclose(batch[b], est(windows[b : b + 1], 13)[0], atol=1e-5)
    # on the CPU a large batch runs in cache-sized chunks: same kernels (here chunks of 2 and 1)
    monkeypatch.setattr(pan, "CPU_CHUNK_BYTES", 2 * 4 * 108 * 108)
    np.testing.assert_array_equal(est(windows, 13), batch)
    np.testing.assert_allclose(batch.sum(axis=(-2, -1)), 1, atol=1e-5)
    assert batch.min() >= 0
    cy, cx = centroid(batch)
    assert np.all(np.abs(cy - 6) <= 0.5 + 1e-4) and np.all(np.abs(cx - 6) <= 0.5 + 1e-4)


def test_registry_lists_both_with_parameters():
    assert {"l0grad", "pan-l0", "dark-channel"} <= set(estimators.available())
    pan_est = estimators.get("pan-l0")
    dark = estimators.get("dark-channel")
    assert pan_est.id.startswith("pan-l0@2-") and dark.id.startswith("dark-channel@2-")
    assert estimators.get("pan-l0", lam_grad=2e-3).id != pan_est.id
    assert dark.describe()["params"]["patch_size"] == 35
    assert dark.params.min_kernel_value == 3e-4 and pan_est.params.min_kernel_value == 0
    assert pan_est.params.lam_pixel == pan_est.params.lam_grad == 4e-3 and pan_est.params.iterations == 5
    with pytest.raises(ValueError, match="patch_size"):
        DarkChannelParams(patch_size=34)
    with pytest.raises(ValueError, match="write_back"):
        DarkChannelParams(write_back="parallel")
    with pytest.raises(ValueError, match="scale_factor"):
        pan_l0.PanL0Params(scale_factor=1.0)


def test_pyramid_matches_the_reference_sizes():
    params = pan_l0.PanL0Params()
    assert pan.pyramid(55, params)[0] == [55, 39, 29, 21, 15, 11, 7]
    assert pan.pyramid(27, params)[0] == [27, 21, 15, 11, 7]
    assert pan.pyramid(11, params)[0] == [11, 9, 7]
    assert pan.pyramid(5, params)[0] == [5]
    k = pan.bar_kernel(7, 2, np)
    assert np.argwhere(k[0]).tolist() == [[2, 2], [2, 3]]  # MATLAB k(3, 3:4) = 1/2


def test_levin_downsample_sizes_and_constants():
    ones = np.ones((2, 228, 228), np.float32)
    sizes = [levin_downsample(ones, 0.5 ** (s / 2)).shape[-1] for s in range(5)]
    assert sizes == [228, 160, 112, 79, 56]
    # as in the reference, the cut taps are not renormalised: a constant keeps (sum of taps)^2 of its level
    taps = np.exp(-0.5 * np.arange(-50, 51) ** 2)  # ratio 0.5: exp(-2 ratio^2 x^2)
    kept = taps[np.abs(np.arange(-50, 51)) <= 2].sum() / taps.sum()
    np.testing.assert_allclose(levin_downsample(ones, 0.5), kept**2, rtol=1e-6)


def test_fix_size_trims_the_lighter_side_and_grows_toward_the_heavier():
    k = np.zeros((2, 4, 4), np.float32)
    k[0, 0, 0], k[0, 3, 3] = 1, 2  # heavier at the bottom/right
    k[1, 0, 0], k[1, 3, 3] = 2, 1  # heavier at the top/left
    grown = fix_size(k, 5)
    assert grown[0, 0, 0] == 1 and grown[0, 3, 3] == 2  # zero row/column added at the end
    assert grown[1, 1, 1] == 2 and grown[1, 4, 4] == 1  # ... at the start
    trimmed = fix_size(k, 3)
    assert trimmed[0].sum() == 2 and trimmed[1].sum() == 2  # the lighter corner dropped


def test_imresize_cubic_is_matlabs_bicubic_with_symmetric_edges(rng):
    """Keys' cubic (a = -0.5), pixel-centre mapping, edges mirrored: as MATLAB's ``imresize(k, s)``."""
    from PIL import Image

    k = rng.random((2, 9, 9))
    # interior: PIL's bicubic is the same a = -0.5 cubic and mapping (it clips at the edges instead of mirroring)
    padded = np.pad(k, ((0, 0), (3, 3), (3, 3)), mode="symmetric")
    big = imresize_cubic(padded, 2.0)
    for b in range(2):
        pil = Image.fromarray(padded[b].astype(np.float32), mode="F").resize((30, 30), Image.BICUBIC)
        np.testing.assert_allclose(big[b, 6:24, 6:24], np.asarray(pil)[6:24, 6:24], atol=1e-6)
    # edges: resizing the image equals the middle of resizing its symmetric padding
    np.testing.assert_allclose(imresize_cubic(k, 2.0), big[:, 6:24, 6:24], atol=1e-12)
    # Pan's step between scales: sqrt 2, output ceil(n sqrt 2), a constant stays constant
    up = imresize_cubic(np.ones((1, 7, 7)), 1 / pan_l0.PanL0Params().scale_factor)
    assert up.shape == (1, 10, 10)
    np.testing.assert_allclose(up, 1, atol=1e-12)
    with pytest.raises(ValueError, match="upsamples only"):
        imresize_cubic(k, 0.5)


def test_opt_fft_size_is_the_reference_grid():
    assert [opt_fft_size(n) for n in (254, 256, 271, 276, 281, 285, 121)] == [256, 256, 273, 280, 288, 288, 125]
    for n in range(1, 600):
        m, r = opt_fft_size(n), opt_fft_size(n)
        for p in (2, 3, 5, 7):
            while r % p == 0:
                r //= p
        assert m >= n and r in (1, 11, 13)
        assert all(opt_fft_size(j) == m for j in range(n, m + 1))  # the smallest such size


def test_wrap_boundary_keeps_the_image_and_is_harmonic_outside(rng):
    image = rng.random((2, 30, 40)).astype(np.float32)
    padded = wrap_boundary(image, (37, 48))
    assert padded.shape == (2, 37, 48)
    np.testing.assert_array_equal(padded[:, :30, :40], image)
    lap = sum(np.roll(padded, s, axis=a) for s in (1, -1) for a in (-2, -1)) - 4 * padded
    # interiors of the strip below, the strip on the right and the corner: Laplace = 0 (periodic)
    assert np.abs(lap[:, 30:37, 1:39]).max() < 1e-5
    assert np.abs(lap[:, 1:29, 40:48]).max() < 1e-5
    # across the periodic seams the padded image is continuous: steps no larger than inside the image
    seam = max(np.abs(padded[:, 0] - padded[:, -1]).max(), np.abs(padded[:, :, 0] - padded[:, :, -1]).max())
    assert seam < np.abs(np.diff(image, axis=-1)).max()


def _dense_kernel_solution(sx, sy, bx, by, size, weight):
    """(sum_d T_d^T T_d + weight I)^-1 sum_d T_d^T b_d with T_d the circular convolution by s_d."""
    r = size // 2

    def columns(s):
        return np.stack([np.roll(s, (i - r, j - r), axis=(0, 1)).ravel() for i in range(size) for j in range(size)], 1)

    tx, ty = columns(sx), columns(sy)
    gram = tx.T @ tx + ty.T @ ty + weight * np.eye(size * size)
    return np.linalg.solve(gram, tx.T @ bx.ravel() + ty.T @ by.ravel()).reshape(size, size)


def test_cg_kernel_step_solves_the_dense_least_squares_problem(rng):
    sx, sy, bx, by = (rng.standard_normal((2, 24, 26)) for _ in range(4))
    got = cg_kernel_step((sx, sy), (bx, by), 7, weight=2.0, iterations=300, tol=0)
    for b in range(2):
        want = _dense_kernel_solution(sx[b], sy[b], bx[b], by[b], 7, 2.0)
        np.testing.assert_allclose(got[b], want, atol=1e-10)
    # a grid too small for the short-lag form (2 size - 1 > 24) uses the full-grid operator: same answer
    got = cg_kernel_step(
        (sx[:, :10, :12], sy[:, :10, :12]), (bx[:, :10, :12], by[:, :10, :12]), 7, iterations=300, tol=0
    )
    want = _dense_kernel_solution(sx[0, :10, :12], sy[0, :10, :12], bx[0, :10, :12], by[0, :10, :12], 7, 2.0)
    np.testing.assert_allclose(got[0], want, atol=1e-10)


def test_cg_kernel_step_twenty_iterations_equal_the_reference_full_grid_cg(rng):
    """The short-lag products give the same 20 CG iterates as the reference's full-size FFT products."""
    from kernels_gpu.conv import kernel_otf
    from kernels_gpu.estimators._common import extract_kernel

    sharp = rng.random((1, 64, 64))
    true = np.zeros((1, 9, 9))
    true[0, 4, 2:7] = 0.2
    blurred = np.fft.irfft2(np.fft.rfft2(sharp) * kernel_otf(true, (64, 64)), s=(64, 64))
    s, b = valid_gradients(sharp), valid_gradients(blurred)
    got = cg_kernel_step(s, b, 9)
    fs = [np.fft.rfft2(g) for g in s]
    fb = [np.fft.rfft2(g) for g in b]
    m = sum(np.abs(f) ** 2 for f in fs)
    rhs = extract_kernel(np.fft.irfft2(sum(f.conj() * g for f, g in zip(fs, fb, strict=True)), s=(63, 63)), 9)

    def apply(k):
        return extract_kernel(np.fft.irfft2(m * kernel_otf(k, (63, 63)), s=(63, 63)), 9) + 2 * k

    k = np.full((1, 9, 9), 1 / 81)
    r = rhs - apply(k)
    p, rs = r, (r * r).sum()
    for _ in range(20):
        ap = apply(p)
        alpha = rs / (p * ap).sum()
        k, r = k + alpha * p, r - alpha * ap
        rs_new = (r * r).sum()
        if np.sqrt(rs_new) < 1e-5:  # Cho's conjgrad stops here
            break
        p, rs = r + rs_new / rs * p, rs_new
    np.testing.assert_allclose(got, k, rtol=1e-9, atol=1e-12)
    assert float(similarity(np.maximum(got[0], 0), true[0])) > 0.95


def test_gradient_threshold_equals_the_reference_histogram_loop(rng):
    image = rng.random((3, 40, 44)) ** 3
    params = pan_l0.PanL0Params()
    got = pan.gradient_threshold(*valid_gradients(image), 3, params)
    for b in range(3):
        px, py = valid_gradients(image[b])
        pm = px**2 + py**2
        with np.errstate(divide="ignore", invalid="ignore"):
            pd = np.arctan(py / px)
        steps = np.arange(0, 2, 6e-5)  # MATLAB's 0:0.00006:2
        need = max(20 * 3, 10)
        counts = []
        for lo, hi in ((0, np.pi / 4), (np.pi / 4, np.pi / 2), (-np.pi / 4, 0), (-np.pi / 2, -np.pi / 4)):
            values = np.sort(pm[(pd >= lo) & (pd < hi)])
            counts.append(len(values) - np.searchsorted(values, steps, side="left"))  # pixels >= each step
        ok = np.flatnonzero(np.min(counts, axis=0) >= need)
        want = steps[ok[-1]] if len(ok) else 0.0
        assert got[b] == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("size", [1, 3, 7, 35])
def test_dark_channel_is_the_minimum_filter_with_matlab_argmin(size, rng):
    x = rng.random((2, 23, 31)).astype(np.float32)
    x[0, 5:9, 5:12] = 0.25  # a flat patch: ties
    x[1] = np.round(x[1] * 8) / 8 - 0.3  # few levels, negative values: many ties
    dark, index = dark_channel(x, size)
    np.testing.assert_array_equal(dark, scipy.ndimage.minimum_filter(x, size=(1, size, size), mode="nearest"))
    r = size // 2
    for b in range(2):
        padded = np.pad(x[b], r, mode="edge")
        patches = sliding_window_view(padded, (size, size))  # (H, W, size, size)
        # MATLAB's [~, i] = min(patch(:)): the first minimum in column-major order
        first = np.argmin(patches.transpose(0, 1, 3, 2).reshape(*x.shape[1:], -1), axis=-1)
        col, row = np.divmod(first, size)
        rows = np.arange(x.shape[1])[:, None] + row
        cols = np.arange(x.shape[2])[None, :] + col
        np.testing.assert_array_equal(index[b], rows * padded.shape[1] + cols)


def test_write_back_scatter_versus_the_sequential_reference(rng):
    """The scatter zeroes every thresholded arg-min; the reference's loop zeroes a subset of them."""
    latent = rng.random((2, 40, 50)).astype(np.float32)
    threshold = np.full((2, 1, 1), 0.05**2, np.float32)
    dark, index = dark_channel(latent, 7)
    fast = write_back(latent, dark, index, threshold, 7)
    slow = write_back_sequential(latent, dark, index, threshold, 7)
    changed_fast, changed_slow = fast != latent, slow != latent
    assert changed_fast.any()
    assert np.all(fast[changed_fast] == 0) and np.all(slow[changed_slow] == 0)
    assert np.all(changed_fast[changed_slow])  # the reference's zeros are among the scatter's
    assert np.all(fast[:, :3] == latent[:, :3]) and np.all(fast[..., -3:] == latent[..., -3:])  # border kept
    # far-apart dark pixels: no window sees an earlier write, so the two agree exactly
    sparse = np.full((1, 40, 50), 0.8, np.float32)
    sparse[0, [5, 12, 20, 30], [6, 25, 40, 14]] = [0.01, 0.02, 0.5, 0.03]
    dark, index = dark_channel(sparse, 7)
    thr = np.full((1, 1, 1), 0.05**2, np.float32)
    np.testing.assert_array_equal(
        write_back(sparse, dark, index, thr, 7), write_back_sequential(sparse, dark, index, thr, 7)
    )
    assert (write_back(sparse, dark, index, thr, 7) == 0).sum() == 3


def test_otsu_level_is_matlabs_graythresh(rng):
    x = np.concatenate([rng.normal(0.2, 0.03, 3000), rng.normal(0.7, 0.05, 2000)]).clip(0, 1)
    images = np.stack([x, x**2]).reshape(2, 50, 100)
    got = otsu_level(images)
    for b in range(2):
        counts = np.bincount(np.clip(np.rint(images[b].ravel() * 255), 0, 255).astype(int), minlength=256)
        variance = {}
        for t in range(255):  # between-class variance of {<= t} versus {> t}, bins as values 0..255
            w0, w1 = counts[: t + 1].sum(), counts[t + 1 :].sum()
            if w0 and w1:
                m0 = (counts[: t + 1] * np.arange(t + 1)).sum() / w0
                m1 = (counts[t + 1 :] * np.arange(t + 1, 256)).sum() / w1
                variance[t] = w0 * w1 * (m0 - m1) ** 2
        best = max(variance.values())
        tied = [t for t, v in variance.items() if v >= best * (1 - 1e-12)]  # MATLAB: mean of the tied maxima
        assert got[b] == pytest.approx(np.mean(tied) / 255, abs=1e-9)
    assert otsu_level(np.full((1, 8, 8), 0.5))[0] == 0


def test_l0_deblur_recovers_a_piecewise_constant_image_from_the_true_kernel(rng):
    """The latent-image step alone: with the true kernel, L0 intensity + gradient restores a blocky image."""
    from kernels_gpu.conv import kernel_otf

    sharp = np.zeros((1, 96, 96), np.float32)
    for _ in range(12):
        y, x, h, w = rng.integers(0, 80, 2).tolist() + rng.integers(8, 30, 2).tolist()
        sharp[0, y : y + h, x : x + w] = rng.uniform(0.2, 0.9)
    truth = levin.kernel(3).astype(np.float32)[None]
    kotf = kernel_otf(truth, (96, 96))
    blurred = np.fft.irfft2(np.fft.rfft2(sharp) * kotf, s=(96, 96)).astype(np.float32)  # periodic: no border
    lam = np.array([4e-3])
    latent = pan.l0_deblur(blurred, kotf, lam, lam, pan_l0.intensity_term, pan_l0.PanL0Params())
    assert latent.shape == sharp.shape and latent.dtype == np.float32
    assert np.abs(latent - sharp).mean() < 0.5 * np.abs(blurred - sharp).mean()  # measured: 0.29
