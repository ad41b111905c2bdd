"""Joint estimation from K windows: one kernel from the windows' summed normal equations."""

from __future__ import annotations

import numpy as np
import pytest

from kernels_gpu import estimators
from kernels_gpu.backend import irfft2, rfft2
from kernels_gpu.conv import kernel_otf
from kernels_gpu.estimators._common import cg_kernel_step
from kernels_gpu.estimators.l0grad import kernel_step
from kernels_gpu.gradients import difference_otf_energy
from kernels_gpu.similarity import consensus, similarity
from pipeline.labels import estimate_kernel_size
from tests import levin
from tests.tolerance import TOLERANCE


def test_joint_kernel_steps_of_copies_equal_the_single_window_step():
    rng = np.random.default_rng(0)
    latent = rng.random((1, 48, 48), dtype=np.float32)
    truth = np.zeros((7, 7), np.float32)
    truth[3, 1:6] = 0.2
    blurred = irfft2(rfft2(latent) * kernel_otf(truth, (48, 48)), s=(48, 48)).astype(np.float32)
    copies = np.repeat(latent, 3, axis=0), np.repeat(blurred, 3, axis=0)
    # l0grad's closed-form Fourier step
    dtd = difference_otf_energy((48, 48), np)
    alone = kernel_step(rfft2(latent), rfft2(blurred), dtd, 1e-3, 7, (48, 48), 1e-4)
    joint = kernel_step(rfft2(copies[0]), rfft2(copies[1]), dtd, 1e-3, 7, (48, 48), 1e-4, joint=True)
    assert joint.shape == (1, 7, 7)
    np.testing.assert_allclose(joint, alone, **TOLERANCE["float32"])
    # Pan et al.'s conjugate-gradient step on the gradients' support
    alone = cg_kernel_step((latent,), (blurred,), 7)
    joint = cg_kernel_step((copies[0],), (copies[1],), 7, joint=True)
    np.testing.assert_allclose(joint, alone, **TOLERANCE["float32"])


@pytest.mark.parametrize(("image", "kernel"), [(1, 2), (2, 4), (4, 8)])
def test_joint_estimate_from_four_windows_beats_each_window_alone(image, kernel):
    """Real Levin data: the four 128 px corners of a blurred image; one kernel from all four is
    closer to the true kernel than the best of the four single-window estimates."""
    blurred, truth = levin.synthetic(image, kernel)
    size = estimate_kernel_size(truth.shape[0])
    h, w = blurred.shape
    windows = np.stack([blurred[y : y + 128, x : x + 128] for y in (0, h - 128) for x in (0, w - 128)])
    est = estimators.get("l0grad")
    single = [float(similarity(k, truth)) for k in est(windows, size)]
    joint = float(similarity(est.joint(windows, size), truth))
    assert joint >= max(single), (joint, single)


def test_one_window_jointly_is_that_window_alone():
    blurred, _ = levin.synthetic(3, 6)
    window = blurred[None, 40:168, 40:168]
    est = estimators.get("l0grad")
    np.testing.assert_allclose(est.joint(window, 25), est(window, 25)[0], **TOLERANCE["float32"])


def test_consensus_picks_the_medoid():
    """Three estimates of one motion (a line and two near copies) and two failures (a dot, a blob)."""
    line = np.zeros((9, 9))
    line[4, 1:8] = 1 / 7
    near = np.roll(line, 1, axis=1)  # the same kernel shifted: similarity 1
    longer = np.zeros((9, 9))
    longer[4, 0:8] = 1 / 8
    dot = np.zeros((9, 9))
    dot[4, 4] = 1
    blob = np.full((9, 9), 1 / 81)
    kernels = np.stack([dot, longer, line, blob, near])
    assert consensus(kernels) in (2, 4)  # line and its shift are the same kernel: either is the medoid
    assert similarity(kernels[consensus(kernels)], line) == pytest.approx(1)
    assert consensus(kernels[:1]) == 0
