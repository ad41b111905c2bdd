"""synth: sources, exact counts, determinism, append, the physics of the blur, and one-line errors on bad input."""

from __future__ import annotations

import json
import logging
import pathlib
import shutil

import imageio.v3 as iio
import numpy as np
import pyarrow.parquet as pq
import pytest
import scipy.io
from scipy.ndimage import gaussian_filter
from scipy.signal import convolve2d

from kernels_gpu.trajectory import camera_shake_kernels
from pipeline.samples import SAMPLES
from pipeline.store import Store
from pipeline.windows import window_count
from tests.levin import LEVIN
from tests.stores import (
    MARGIN,
    SIZE,
    SMALL,
    WINDOW,
    WINDOWS_PER_SMALL_IMAGE,
    chunk_files,
    cli,
    ok,
    one_line_error,
    snapshot,
)

BLURRED, SHARP = f"blurred/{SIZE}x{SIZE}", f"sharp/{SIZE}x{SIZE}"


def _images(store: pathlib.Path) -> list[dict]:
    return pq.read_table(store / "images.parquet").to_pylist()


def _copy_levin(folder: pathlib.Path, what: str, names: list[str]) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(LEVIN / what / name, folder / name)
    return folder


# ----------------------------------------------------------- builtin x trajectory


@pytest.fixture(scope="module")
def builtin_store(tmp_path_factory) -> pathlib.Path:
    """18 built-in pictures x 3 trajectory kernels (11-25 px) = 54 images of 160 px."""
    store = tmp_path_factory.mktemp("builtin") / "store"
    result = ok("synth", store, *SMALL, "--num-kernels", 3, "-q")
    assert "added 54 images (54 pairs asked, 0 already there)" in result.output
    return store


def test_builtin_times_trajectory_is_every_pair_once(builtin_store):
    images = _images(builtin_store)
    assert len(images) == len(SAMPLES) * 3 == 54
    keys = [f"trajectory:seed=0,sizes=11:25#{i}" for i in range(3)]
    assert sorted((r["sharp_source"], r["kernel_source"]) for r in images) == sorted(
        (f"builtin:{name}", key) for name in SAMPLES for key in keys
    )
    assert [r["image_id"] for r in images] == list(range(54))
    assert sorted(r["blurred_index"] for r in images) == list(range(54))
    assert sorted({r["sharp_index"] for r in images}) == list(range(18))
    assert sorted({r["kernel_index"] for r in images}) == [0, 1, 2]
    # the stored kernels are the generator's, centred at the store's capacity
    store = Store(str(builtin_store))
    generated = camera_shake_kernels(3, (11, 25), 0)
    for r in images:
        i = int(r["kernel_source"].rsplit("#", 1)[1])
        assert r["kernel_size"] == generated[i].shape[0] and r["kernel_size"] % 2 == 1
        np.testing.assert_array_equal(store.kernel(r["kernel_index"], r["kernel_size"]), generated[i])
    # windows per image: the rule of pipeline/windows.py
    windows = pq.read_table(builtin_store / "windows.parquet").to_pylist()
    assert window_count(SIZE, SIZE, WINDOW, 32) == WINDOWS_PER_SMALL_IMAGE
    assert len(windows) == 54 * WINDOWS_PER_SMALL_IMAGE
    per_image: dict[int, list[int]] = {}
    for w in windows:
        per_image.setdefault(w["image_id"], []).append(w["window_id"])
    assert all(sorted(ids) == list(range(WINDOWS_PER_SMALL_IMAGE)) for ids in per_image.values())
    assert len(per_image) == 54
    blurred = store.array(BLURRED)
    assert blurred.shape == (54, SIZE, SIZE) and np.isfinite(blurred[:]).all()


def test_two_runs_give_identical_bytes_whatever_the_workers(builtin_store, tmp_path):
    again = tmp_path / "again"
    ok("synth", again, *SMALL, "--num-kernels", 3, "-q")
    reference = snapshot(builtin_store)
    assert len(reference) > 54 + 18 + 3  # every chunk file, the tables, the manifest
    assert snapshot(again) == reference
    one_process = tmp_path / "one_process"
    ok("synth", one_process, *SMALL, "--num-kernels", 3, "--workers", 1, "-q")
    assert snapshot(one_process) == reference


def test_more_kernels_adds_only_the_new_pairs(builtin_store, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(builtin_store, store)
    before = snapshot(store)
    result = ok("synth", store, *SMALL, "--num-kernels", 5, "-q")
    assert "added 36 images (90 pairs asked, 54 already there)" in result.output
    after = snapshot(store)
    # pixels and kernels of everything already there: byte-identical chunk files
    assert chunk_files(after, BLURRED, range(54)) == chunk_files(before, BLURRED, range(54))
    assert chunk_files(after, SHARP, range(18)) == chunk_files(before, SHARP, range(18))
    assert chunk_files(after, "kernels", range(3)) == chunk_files(before, "kernels", range(3))
    images = _images(store)
    assert images[:54] == _images(builtin_store)
    assert len(images) == 90 and {r["kernel_index"] for r in images[54:]} == {3, 4}
    assert {r["sharp_index"] for r in images[54:]} == set(range(18))  # the sharp images are shared, not copied
    assert len(pq.read_table(store / "windows.parquet")) == 90 * WINDOWS_PER_SMALL_IMAGE
    # the appended store holds exactly what a fresh run with 5 kernels would hold, image for image
    fresh = tmp_path / "fresh"
    ok("synth", fresh, *SMALL, "--num-kernels", 5, "-q")
    by_pair = {(r["sharp_source"], r["kernel_source"]): r["blurred_index"] for r in _images(fresh)}
    appended, made = Store(str(store)).array(BLURRED)[:], Store(str(fresh)).array(BLURRED)[:]
    for r in images:
        np.testing.assert_array_equal(
            appended[r["blurred_index"]], made[by_pair[r["sharp_source"], r["kernel_source"]]]
        )

    # the same command again: nothing to do, not a byte changed
    result = ok("synth", store, *SMALL, "--num-kernels", 5, "-q")
    assert result.output.startswith("nothing to do: all 90 pairs are already in")
    assert snapshot(store) == after
    # fewer kernels than the store holds: also nothing to do
    assert "nothing to do" in ok("synth", store, *SMALL, "--num-kernels", 2, "-q").output
    assert snapshot(store) == after


def test_pairs_is_a_seeded_subset(builtin_store, tmp_path):
    ok("synth", tmp_path / "a", *SMALL, "--num-kernels", 3, "--pairs", 7, "-q")
    ok("synth", tmp_path / "b", *SMALL, "--num-kernels", 3, "--pairs", 7, "-q")
    images = _images(tmp_path / "a")
    pairs = {(r["sharp_source"], r["kernel_source"]) for r in images}
    assert len(images) == len(pairs) == 7
    assert pairs <= {(r["sharp_source"], r["kernel_source"]) for r in _images(builtin_store)}
    assert snapshot(tmp_path / "a") == snapshot(tmp_path / "b")
    assert len(pq.read_table(tmp_path / "a" / "windows.parquet")) == 7 * WINDOWS_PER_SMALL_IMAGE
    # a subset's images are the same as in the full set (the noise depends on the pair, not the run)
    full, sub = Store(str(builtin_store)), Store(str(tmp_path / "a"))
    where = {(r["sharp_source"], r["kernel_source"]): r["blurred_index"] for r in _images(builtin_store)}
    for r in images:
        np.testing.assert_array_equal(
            sub.array(BLURRED)[r["blurred_index"]], full.array(BLURRED)[where[r["sharp_source"], r["kernel_source"]]]
        )
    seeded = tmp_path / "seed1"
    ok("synth", seeded, *SMALL, "--num-kernels", 3, "--pairs", 7, "--seed", 1, "-q")
    assert {(r["sharp_source"], r["kernel_source"]) for r in _images(seeded)} != pairs


# ------------------------------------------------------------- folders of files


def test_folder_sharp_with_levin_npy_mat_and_png_kernels(tmp_path, caplog):
    sharp = _copy_levin(tmp_path / "pictures", "sharp", ["im1.png", "im2.png"])
    kernels = _copy_levin(tmp_path / "kernels", "kernels", ["kernel3.npy"])
    levin4 = np.load(LEVIN / "kernels" / "kernel4.npy").astype(np.float64)  # 27 x 27
    scipy.io.savemat(kernels / "levin4.mat", {"kernel": levin4})
    preview = np.round(levin4 / levin4.max() * 255).astype(np.uint8)
    iio.imwrite(kernels / "preview4.png", preview)
    iio.imwrite(kernels / "kernel3.png", preview)  # beside kernel3.npy: one format per name, the .npy
    np.save(kernels / "even.npy", np.ones((16, 16), np.float32) / 256)  # padded to 17 x 17
    np.save(kernels / "wide.npy", np.pad(np.ones((1, 9)), ((2, 2), (0, 0))) / 9)  # 5 x 9 -> 9 x 9
    (kernels / "notes.txt").write_text("not a kernel: ignored")
    with caplog.at_level(logging.WARNING, logger="pipeline.synth"):
        ok("synth", tmp_path / "store", "--sharp", sharp, "--kernels", kernels, *SMALL, "-q")
    assert any("preview4.png: kernel sums to" in m and "normalised to 1" in m for m in caplog.messages)
    store = Store(str(tmp_path / "store"))
    images = _images(tmp_path / "store")
    assert len(images) == 2 * 5
    names = {"kernel3.npy", "levin4.mat", "preview4.png", "even.npy", "wide.npy"}
    assert {r["kernel_source"] for r in images} == {f"file:kernels/{n}" for n in names}
    assert {r["sharp_source"] for r in images} == {"file:pictures/im1.png", "file:pictures/im2.png"}
    got = {r["kernel_source"].split("/")[1]: store.kernel(r["kernel_index"], r["kernel_size"]) for r in images}
    levin3 = np.load(LEVIN / "kernels" / "kernel3.npy").astype(np.float64)
    np.testing.assert_allclose(got["kernel3.npy"], levin3 / levin3.sum(), atol=1e-7)
    np.testing.assert_allclose(got["levin4.mat"], levin4 / levin4.sum(), atol=1e-7)
    np.testing.assert_allclose(got["preview4.png"], preview / preview.sum(), atol=1e-7)
    assert got["even.npy"].shape == (17, 17) and got["even.npy"][:16, :16] == pytest.approx(1 / 256)
    assert got["even.npy"][16].sum() == 0 and got["even.npy"][:, 16].sum() == 0
    assert got["wide.npy"].shape == (9, 9) and got["wide.npy"][4].tolist() == pytest.approx([1 / 9] * 9)
    for kernel in got.values():
        assert kernel.sum() == pytest.approx(1, abs=1e-6) and kernel.min() >= 0 and kernel.shape[0] % 2 == 1


def test_folder_pictures_in_colour_16_bit_tiff_and_jpeg(tmp_path):
    from skimage.color import rgb2gray

    rng = np.random.default_rng(3)
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    colour = gaussian_filter(rng.uniform(0, 255, (240, 240, 3)), (3, 3, 0)).astype(np.uint8)
    deep = np.round(gaussian_filter(rng.uniform(0, 65535, (230, 250)), 3)).astype(np.uint16)
    iio.imwrite(pictures / "colour.png", colour)
    iio.imwrite(pictures / "deep.tif", deep)
    iio.imwrite(pictures / "photo.jpg", colour, quality=95)
    ok("synth", tmp_path / "store", "--sharp", pictures, *SMALL, "--num-kernels", 1, "-q")
    store = Store(str(tmp_path / "store"))
    sharp = {r["sharp_source"]: store.array(SHARP)[r["sharp_index"]] for r in _images(tmp_path / "store")}
    assert set(sharp) == {f"file:pictures/{n}" for n in ("colour.png", "deep.tif", "photo.jpg")}

    def centre(picture: np.ndarray) -> np.ndarray:
        y, x = (picture.shape[0] - SIZE) // 2, (picture.shape[1] - SIZE) // 2
        return picture[y : y + SIZE, x : x + SIZE]

    np.testing.assert_allclose(sharp["file:pictures/colour.png"], centre(rgb2gray(colour / 255)), atol=1e-6)
    np.testing.assert_allclose(sharp["file:pictures/deep.tif"], centre(deep / 65535), atol=1e-6)
    jpeg = iio.imread(pictures / "photo.jpg")
    np.testing.assert_allclose(sharp["file:pictures/photo.jpg"], centre(rgb2gray(jpeg / 255)), atol=1e-6)


def test_a_superset_of_sharp_pictures_adds_only_the_new_pairs(tmp_path):
    sharp = _copy_levin(tmp_path / "pictures", "sharp", ["im1.png", "im2.png"])
    kernels = _copy_levin(tmp_path / "kernels", "kernels", ["kernel1.npy", "kernel5.npy"])
    store = tmp_path / "store"
    args = ["--sharp", sharp, "--kernels", kernels, *SMALL, "-q"]
    ok("synth", store, *args)
    before = snapshot(store)
    _copy_levin(sharp, "sharp", ["im3.png", "im4.png"])
    assert "added 4 images (8 pairs asked, 4 already there)" in ok("synth", store, *args).output
    after = snapshot(store)
    assert chunk_files(after, BLURRED, range(4)) == chunk_files(before, BLURRED, range(4))
    assert chunk_files(after, SHARP, range(2)) == chunk_files(before, SHARP, range(2))
    assert chunk_files(after, "kernels", range(2)) == chunk_files(before, "kernels", range(2))
    assert not set(before) - set(after)
    images = _images(store)
    assert {r["sharp_source"] for r in images[4:]} == {"file:pictures/im3.png", "file:pictures/im4.png"}
    assert {r["kernel_index"] for r in images[4:]} == {0, 1}  # the kernels already there are reused
    assert "nothing to do" in ok("synth", store, *args).output
    assert snapshot(store) == after


def test_builtin_then_a_resized_folder_into_one_store(tmp_path):
    """The benchmark's recipe: --sharp builtin, then a folder of small pictures with --fit resize."""
    store = tmp_path / "store"
    ok("synth", store, *SMALL, "--num-kernels", 1, "-q")
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    small = (np.indices((100, 120)).sum(0) % 256).astype(np.uint8)  # smaller than 224: needs a resize
    iio.imwrite(pictures / "small.png", small)
    one_line_error(cli("synth", store, "--sharp", pictures, *SMALL, "--num-kernels", 1, "-q"), "small.png", "--fit")
    ok("synth", store, "--sharp", pictures, "--fit", "resize", *SMALL, "--num-kernels", 1, "-q")
    images = _images(store)
    assert len(images) == 19 and images[-1]["sharp_source"] == "file:pictures/small.png"
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["synth"]["fit"] == "resize" and len(manifest["runs"]) == 2
    # the folder is now fitted by resizing: a crop run of another folder into this store is refused
    more = _copy_levin(tmp_path / "more", "sharp", ["im1.png"])
    before = snapshot(store)
    one_line_error(cli("synth", store, "--sharp", more, *SMALL, "--num-kernels", 1, "-q"), "'fit': 'resize'")
    assert snapshot(store) == before


# ---------------------------------------------------------------------- physics


@pytest.fixture(scope="module")
def physics(tmp_path_factory):
    """A smooth 16-bit picture (values in [0.2, 0.8], no clipping) and a white one; Levin kernels 4 and 5."""
    root = tmp_path_factory.mktemp("physics")
    pictures = root / "pictures"
    pictures.mkdir()
    rng = np.random.default_rng(7)
    texture = gaussian_filter(rng.standard_normal((250, 230)), 2.0)
    texture = 0.2 + 0.6 * (texture - texture.min()) / (texture.max() - texture.min())
    picture = np.round(texture * 65535).astype(np.uint16)
    iio.imwrite(pictures / "texture.png", picture)
    iio.imwrite(pictures / "white.png", np.full((224, 224), 255, np.uint8))
    kernels = _copy_levin(root / "kernels", "kernels", ["kernel4.npy", "kernel5.npy"])
    stores = {}
    for sigma in (0, 2):
        stores[sigma] = root / f"sigma{sigma}"
        ok("synth", stores[sigma], "--sharp", pictures, "--kernels", kernels, *SMALL, "--noise-sigma", sigma, "-q")
    # independent recomputation: centre crop of the picture to size + 2 * margin, 'valid' blur of its centre
    region_side = SIZE + 2 * MARGIN
    y0, x0 = (250 - region_side) // 2, (230 - region_side) // 2
    region = picture.astype(np.float64)[y0 : y0 + region_side, x0 : x0 + region_side] / 65535
    expected = {}
    for name in ("kernel4.npy", "kernel5.npy"):
        k = np.load(kernels / name).astype(np.float64)
        k /= k.sum()
        r = k.shape[0] // 2
        crop = region[MARGIN - r : MARGIN + SIZE + r, MARGIN - r : MARGIN + SIZE + r]
        expected[name] = convolve2d(crop, k, mode="valid")
    return stores, expected, region[MARGIN : MARGIN + SIZE, MARGIN : MARGIN + SIZE]


def _by_pair(store_dir: pathlib.Path) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    store = Store(str(store_dir))
    out = {}
    for r in _images(store_dir):
        key = (r["sharp_source"].split("/")[-1], r["kernel_source"].split("/")[-1])
        out[key] = (
            store.array(r["blurred_array"])[r["blurred_index"]],
            store.array(r["sharp_array"])[r["sharp_index"]],
        )
    return out


def test_noise_free_blur_equals_an_independent_valid_convolution(physics):
    stores, expected, sharp_centre = physics
    images = _by_pair(stores[0])
    assert len(images) == 4
    for name, blur in expected.items():
        blurred, sharp = images["texture.png", name]
        assert blurred.shape == blur.shape == (SIZE, SIZE)
        np.testing.assert_allclose(blurred, blur, rtol=0, atol=1e-6)
        np.testing.assert_allclose(sharp, sharp_centre, rtol=0, atol=1e-6)
        assert np.abs(blurred - sharp).mean() > 1e-3  # it is blurred
        white, _ = images["white.png", name]
        np.testing.assert_allclose(white, 1, atol=1e-6)  # no artificial dark border: the scene goes on outside


def test_noise_is_gaussian_of_sigma_over_255_and_clipped(physics):
    stores, expected, _ = physics
    images = _by_pair(stores[2])
    noises = []
    for name, blur in expected.items():
        noise = images["texture.png", name][0].astype(np.float64) - blur
        assert noise.std() == pytest.approx(2.0 / 255, rel=0.03)
        assert abs(noise.mean()) < 4 * (2.0 / 255) / SIZE
        noises.append(noise.ravel())
        white, _ = images["white.png", name]
        assert white.max() == 1.0 and (white == 1.0).mean() > 0.4 and white.min() < 1  # clipped at 1
    assert abs(np.corrcoef(noises)[0, 1]) < 0.05  # every image draws its own noise
    assert [r["noise_sigma"] for r in _images(stores[2])] == pytest.approx([2.0 / 255] * 4)
    assert [r["noise_sigma"] for r in _images(stores[0])] == [0.0] * 4


# -------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def small_store(tmp_path_factory) -> pathlib.Path:
    store = tmp_path_factory.mktemp("small") / "store"
    ok("synth", store, *SMALL, "--num-kernels", 1, "--pairs", 2, "-q")
    return store


def _folder(tmp: pathlib.Path, name: str, files: dict[str, object]) -> pathlib.Path:
    """A folder of pictures (bytes or uint8 arrays) or kernels (arrays saved as .npy)."""
    folder = tmp / name
    folder.mkdir()
    for file, content in files.items():
        if isinstance(content, bytes):
            (folder / file).write_bytes(content)
        elif file.endswith(".npy"):
            np.save(folder / file, content)
        else:
            iio.imwrite(folder / file, content)
    return folder


GOOD_PICTURE = np.full((230, 230), 128, np.uint8)
K1 = ["--num-kernels", 1]


def _two_arrays_mat(tmp: pathlib.Path) -> list:
    folder = _folder(tmp, "kernels", {})
    scipy.io.savemat(folder / "two.mat", {"a": np.ones((3, 3)), "b": np.ones((5, 5))})
    return ["--kernels", folder]


#: case -> (arguments after the small settings, made in a fresh tmp folder; words the error line must name)
SYNTH_CASES = {
    "unreadable image": (
        lambda t: [
            "--sharp",
            _folder(t, "pictures", {"a.png": GOOD_PICTURE, "broken.png": b"\x89PNG\r\n\x1a\nnot"}),
            *K1,
        ],
        ("broken.png", "cannot read image"),
    ),
    "image smaller than size + 2 margin": (
        lambda t: ["--sharp", _folder(t, "pictures", {"tiny.png": GOOD_PICTURE[:100]}), *K1],
        ("tiny.png", "224"),
    ),
    "size smaller than a window": (lambda t: [*K1, "--size", 64], ("--window/--size", "64 px")),
    "kernel larger than a window": (  # ones(97, 97) also sums to 9409: the error must come alone, no warning
        lambda t: ["--kernels", _folder(t, "kernels", {"big.npy": np.ones((97, 97))})],
        ("big.npy", "larger than the window"),
    ),
    "kernel needs a larger margin": (
        lambda t: ["--kernels", _folder(t, "kernels", {"wide.npy": np.ones((71, 71))})],
        ("wide.npy", "--margin"),
    ),
    "negative kernel": (
        lambda t: ["--kernels", _folder(t, "kernels", {"neg.npy": np.array([[0, -1, 0], [1, 2, 1], [0, 1, 0.0]])})],
        ("neg.npy", "negative"),
    ),
    "NaN kernel": (
        lambda t: ["--kernels", _folder(t, "kernels", {"nan.npy": np.full((5, 5), np.nan)})],
        ("nan.npy", "NaN"),
    ),
    "all-zero kernel": (
        lambda t: ["--kernels", _folder(t, "kernels", {"zero.npy": np.zeros((5, 5))})],
        ("zero.npy", "all zero"),
    ),
    "3-D kernel": (
        lambda t: ["--kernels", _folder(t, "kernels", {"cube.npy": np.ones((3, 3, 3))})],
        ("cube.npy", "2-D"),
    ),
    "two arrays in a .mat": (_two_arrays_mat, ("two.mat", "exactly one")),
    "empty sharp folder": (lambda t: ["--sharp", _folder(t, "pictures", {}), *K1], ("--sharp", "no PNG")),
    "empty kernels folder": (
        lambda t: ["--kernels", _folder(t, "kernels", {"readme.txt": b"no kernels here"})],
        ("--kernels", "no .npy"),
    ),
    "missing sharp folder": (lambda t: ["--sharp", t / "nowhere", *K1], ("--sharp", "nowhere")),
    "unknown --fit": (lambda t: ["--fit", "stretch", *K1], ("--fit", "stretch")),
    "bad --kernel-sizes": (lambda t: ["--kernel-sizes", "11-55", *K1], ("--kernel-sizes", "11-55")),
    "even --kernel-sizes": (lambda t: ["--kernel-sizes", "12:20", *K1], ("--kernel-sizes", "12:20")),
    "--pairs larger than available": (lambda t: [*K1, "--pairs", 19], ("--pairs", "19", "18")),
    "--pairs not a number": (lambda t: [*K1, "--pairs", "some"], ("--pairs", "some")),
    "negative --noise-sigma": (lambda t: [*K1, "--noise-sigma", -1], ("--noise-sigma",)),
    "--window mismatch": (lambda t: [*K1, "--window", 64], ("--window", "96", "64")),
    "--size mismatch": (lambda t: [*K1, "--size", 180], ("'size': 160", "'size': 180")),
}
WITH_PROGRESS_BAR = {"unreadable image", "--pairs larger than available", "--window mismatch"}


@pytest.mark.parametrize("case", list(SYNTH_CASES))
def test_bad_synth_input_is_one_line_and_leaves_the_store_as_it_was(case, small_store, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(small_store, store)
    make_args, needles = SYNTH_CASES[case]
    args = ["synth", store, *SMALL, *make_args(tmp_path)]  # a repeated option: its last value counts
    before = snapshot(store)
    one_line_error(cli(*args, "-q"), *needles)
    if case in WITH_PROGRESS_BAR:  # without --quiet too: no progress bar before the error
        one_line_error(cli(*args), *needles)
    assert snapshot(store) == before


def test_bad_input_into_a_new_store_creates_nothing(tmp_path):
    store = tmp_path / "new"
    kernels = _folder(tmp_path, "kernels", {"neg.npy": -np.ones((3, 3))})
    one_line_error(cli("synth", store, *SMALL, "--kernels", kernels, "-q"), "neg.npy")
    assert not store.exists()


@pytest.mark.parametrize("command", ["synth", "info"])
def test_a_store_from_a_newer_schema_is_refused(command, small_store, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(small_store, store)
    manifest = json.loads((store / "manifest.json").read_text())
    (store / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 999}))
    before = snapshot(store)
    args = ["synth", store, *SMALL, *K1, "-q"] if command == "synth" else ["info", store]
    one_line_error(cli(*args), str(store), "schema version 999", "upgrade goodregions")
    assert snapshot(store) == before


@pytest.mark.parametrize("command", ["synth", "info"])
def test_a_folder_that_is_not_a_store_is_refused(command, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"not a store")
    before = snapshot(folder)
    args = ["synth", folder, *SMALL, *K1, "-q"] if command == "synth" else ["info", folder]
    one_line_error(cli(*args), str(folder), "not a goodregions store")
    assert snapshot(folder) == before


def test_another_file_under_a_stored_name_is_refused(tmp_path):
    """Sources are keyed by folder and file name: a different file under a stored key must not pass for it."""
    rng = np.random.default_rng(3)
    picture = rng.integers(0, 256, (230, 230), dtype=np.uint8)
    kernel = camera_shake_kernels(1, (11, 15), seed=1)[0]
    first = tmp_path / "first"
    first.mkdir()
    sharp, kernels = _folder(first, "pictures", {"a.png": picture}), _folder(first, "kernels", {"k.npy": kernel})
    store = tmp_path / "store"
    ok("synth", store, *SMALL, "--sharp", sharp, "--kernels", kernels, "-q")
    before = snapshot(store)

    other = tmp_path / "other"
    other.mkdir()
    # the same names with other contents: nothing may be skipped as done, nor tied to the stored kernel
    changed_picture = _folder(other, "pictures", {"a.png": 255 - picture})
    changed_kernel = _folder(other, "kernels", {"k.npy": kernel.T.copy()})
    for args, path in [
        (["--sharp", changed_picture, "--kernels", kernels], changed_picture / "a.png"),
        (["--sharp", sharp, "--kernels", changed_kernel], changed_kernel / "k.npy"),
    ]:
        one_line_error(cli("synth", store, *SMALL, *args, "-q"), str(path), "already holds a different")
        assert snapshot(store) == before

    # a copy of the same files elsewhere is the same source: nothing to do, and nothing refused
    same = tmp_path / "copy"
    shutil.copytree(first, same)
    result = ok("synth", store, *SMALL, "--sharp", same / "pictures", "--kernels", same / "kernels", "-q")
    assert snapshot(store) == before, result.output
