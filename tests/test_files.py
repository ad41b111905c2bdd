"""Image and kernel files: formats, bit depths, colour, validation, atomic writes."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import scipy.io

from pipeline.files import InputError, atomic_path, read_image, read_kernel, write_kernel, write_png


@pytest.mark.parametrize(
    ("suffix", "dtype", "scale"),
    [(".png", np.uint8, 255), (".png", np.uint16, 65535), (".tif", np.uint16, 65535), (".tiff", np.uint8, 255)],
)
def test_read_grey_images_in_unit_range(tmp_path, rng, suffix, dtype, scale):
    pixels = rng.integers(0, scale + 1, (40, 50)).astype(dtype)
    path = tmp_path / f"image{suffix}"
    iio.imwrite(path, pixels)
    image = read_image(path)
    assert image.dtype == np.float32 and image.shape == (40, 50)
    np.testing.assert_allclose(image, pixels / scale, atol=1e-6)


def test_colour_is_converted_to_grey(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 1] = 255  # pure green: luma weight 0.7154
    iio.imwrite(tmp_path / "green.png", rgb)
    np.testing.assert_allclose(read_image(tmp_path / "green.png"), 0.7154, atol=1e-4)
    iio.imwrite(tmp_path / "photo.jpg", np.full((20, 30, 3), 128, np.uint8))
    assert read_image(tmp_path / "photo.jpg").shape == (20, 30)


def test_unsupported_and_missing_files(tmp_path):
    with pytest.raises(InputError, match="no such image"):
        read_image(tmp_path / "none.png")
    (tmp_path / "a.bmp").write_bytes(b"x")
    with pytest.raises(InputError, match="unsupported image type"):
        read_image(tmp_path / "a.bmp")


def test_kernel_formats_agree(tmp_path, rng):
    k = rng.random((7, 7)).astype(np.float32)
    np.save(tmp_path / "k.npy", k)
    scipy.io.savemat(tmp_path / "k.mat", {"f": k.astype(np.float64)})
    iio.imwrite(tmp_path / "k.png", np.round(k / k.max() * 255).astype(np.uint8))
    npy, mat, png = (read_kernel(tmp_path / f"k.{s}") for s in ("npy", "mat", "png"))
    np.testing.assert_allclose(npy, k / k.sum(), rtol=1e-6)
    np.testing.assert_allclose(mat, npy, rtol=1e-6)
    np.testing.assert_allclose(png, npy, atol=2e-3)  # 8-bit quantisation


def test_mat_with_several_arrays_is_rejected(tmp_path):
    scipy.io.savemat(tmp_path / "two.mat", {"a": np.ones((3, 3)), "b": np.ones((5, 5))})
    with pytest.raises(InputError, match="exactly one 2-D numeric array"):
        read_kernel(tmp_path / "two.mat")


def test_even_kernel_is_padded_to_odd_keeping_mass():
    from pipeline.files import check_kernel

    k = check_kernel(np.ones((4, 6)), "k")
    assert k.shape == (5, 7) and k.sum() == pytest.approx(1) and k[-1].sum() == 0


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "out.npy"
    write_kernel(target, np.ones((3, 3)))
    before = target.read_bytes()
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.npy"]


def test_write_png_round_trip(tmp_path, rng):
    image = rng.random((30, 20))
    write_png(tmp_path / "x.png", image, bits=16)
    np.testing.assert_allclose(read_image(tmp_path / "x.png"), image, atol=1e-4)
