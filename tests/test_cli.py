"""The command line: help, version, estimate/deblur end to end, and one-line errors on bad input."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
from click.testing import CliRunner

from goodregions.cli import main
from kernels_gpu.similarity import similarity
from tests import levin


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _one_line_error(result, *needles):
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error:")
    for needle in needles:
        assert needle in lines[0], result.output


def test_every_command_has_help():
    for command in [[], ["estimate"], ["deblur"], ["estimators"]]:
        result = run(*command, "-h")
        assert result.exit_code == 0 and "Usage:" in result.output


def test_version():
    result = run("--version")
    assert result.exit_code == 0 and "goodregions, version" in result.output


@pytest.fixture(scope="module")
def blurred_png(tmp_path_factory):
    """A real-data input: Levin im2 blurred by kernel5 (13 px) + noise, as a 16-bit PNG."""
    blurred, truth = levin.synthetic(2, 5)
    folder = tmp_path_factory.mktemp("cli")
    path = folder / "blurred.png"
    iio.imwrite(path, np.round(blurred * 65535).astype(np.uint16))
    np.save(folder / "truth.npy", truth)
    return path


def test_estimate_then_deblur(tmp_path, blurred_png):
    out = tmp_path / "k" / "kernel.npy"
    result = run(
        "estimate", blurred_png, "--kernel-size", 17, "--out", out, "--true-kernel", blurred_png.with_name("truth.npy")
    )
    assert result.exit_code == 0, result.output
    kernel = np.load(out)
    assert kernel.shape == (17, 17) and kernel.dtype == np.float32
    assert kernel.sum() == pytest.approx(1, abs=1e-5)
    assert out.with_suffix(".png").is_file()
    assert float(similarity(kernel, np.load(blurred_png.with_name("truth.npy")))) > 0.8
    assert "similarity to the true kernel" in result.output

    sharp = tmp_path / "sharp.png"
    result = run("deblur", blurred_png, "--kernel", out, "--out", sharp)
    assert result.exit_code == 0, result.output
    restored = iio.imread(sharp).astype(np.float64) / 255
    reference = levin.sharp(2)
    blurred = iio.imread(blurred_png).astype(np.float64) / 65535
    inner = (slice(20, -20), slice(20, -20))
    assert np.mean((restored - reference)[inner] ** 2) < 0.6 * np.mean((blurred - reference)[inner] ** 2)


def test_estimate_on_window_and_builtin_sample(tmp_path):
    out = tmp_path / "kernel.npy"
    result = run("estimate", "builtin:camera", "-k", 25, "--window", 20, 30, 200, "-o", out)
    assert result.exit_code == 0, result.output
    assert "from 200x200 px" in result.output and "similarity to the true kernel" in result.output


def test_estimators_lists_l0grad():
    result = run("estimators")
    assert result.exit_code == 0 and "l0grad@1-" in result.output
    assert '"name": "l0grad"' in run("estimators", "--json").output


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--kernel-size", 4], ["--kernel-size", "odd"]),
        (["--kernel-size", 1], ["--kernel-size", "odd"]),
        (["--kernel-size", 301], ["--kernel-size", "larger than the image"]),
        (["--kernel-size", 15, "--window", 200, 200, 100], ["--window", "outside the image"]),
        (["--kernel-size", 51, "--window", 0, 0, 40], ["--kernel-size", "larger than the window"]),
        (["--kernel-size", 15, "--estimator", "nope"], ["--estimator", "nope"]),
    ],
)
def test_estimate_bad_options(tmp_path, blurred_png, args, needles):
    out = tmp_path / "kernel.npy"
    _one_line_error(run("estimate", blurred_png, "-o", out, *args), *needles)
    assert not out.exists()


def test_estimate_bad_image_files(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    _one_line_error(run("estimate", broken, "-k", 5, "-o", tmp_path / "k.npy"), str(broken), "cannot read image")
    missing = tmp_path / "missing.png"
    _one_line_error(run("estimate", missing, "-k", 5, "-o", tmp_path / "k.npy"), str(missing), "no such image")
    _one_line_error(run("estimate", "builtin:nothing", "-k", 5, "-o", tmp_path / "k.npy"), "builtin:nothing")


def test_existing_output_survives_a_failed_run(tmp_path, blurred_png):
    out = tmp_path / "kernel.npy"
    np.save(out, np.ones((3, 3), np.float32))
    before = out.read_bytes()
    _one_line_error(run("estimate", blurred_png, "-k", 4, "-o", out), "--kernel-size")
    assert out.read_bytes() == before


@pytest.mark.parametrize(
    ("kernel", "needle"),
    [
        (np.ones((3, 3, 3)), "2-D"),
        (-np.ones((5, 5)), "negative"),
        (np.zeros((5, 5)), "all zero"),
        (np.array([[np.nan, 1, 1]] * 3), "NaN"),
        (np.ones((301, 301)), "larger than the image"),
    ],
)
def test_deblur_bad_kernels(tmp_path, blurred_png, kernel, needle):
    path = tmp_path / "kernel.npy"
    np.save(path, kernel)
    _one_line_error(run("deblur", blurred_png, "--kernel", path, "-o", tmp_path / "s.png"), str(path), needle)


def test_even_kernel_is_padded_not_rejected(tmp_path, blurred_png):
    path = tmp_path / "kernel.npy"
    np.save(path, np.ones((4, 4)))
    result = run("deblur", blurred_png, "--kernel", path, "-o", tmp_path / "s.png")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["estimate", "x.png", "--kernel-size", "abc", "-o", "k.npy"], "--kernel-size"),
        (["estimate"], "IMAGE"),
        (["synth", "store", "--size", "big"], "--size"),
        (["label", "store", "--nonsense"], "--nonsense"),
        (["frobnicate"], "frobnicate"),
    ],
)
def test_click_usage_errors_are_one_line(args, needle):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    _one_line_error(result, needle)
