"""ingest: Levin's real photographs paired by name or by CSV, reruns, mixing with synth, one-line errors."""

from __future__ import annotations

import json
import pathlib
import shutil

import imageio.v3 as iio
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.store import Store
from pipeline.windows import window_count
from tests.levin import LEVIN
from tests.stores import SIZE, SMALL, STRIDE, WINDOW, chunk_files, cli, ok, one_line_error, snapshot

PHOTOS = {"im1_kernel6.png": (1, 6), "im2_kernel1.png": (2, 1), "im3_kernel8.png": (3, 8), "im4_kernel3.png": (4, 3)}
GRID = ["--window", WINDOW, "--stride", STRIDE]
PHOTO_WINDOWS = window_count(255, 255, WINDOW, STRIDE)  # 4 x 4


def _images(store: pathlib.Path) -> list[dict]:
    return pq.read_table(store / "images.parquet").to_pylist()


@pytest.fixture
def kernels(tmp_path) -> pathlib.Path:
    """Levin's kernels as the shared data ships them: kernelN.npy beside a kernelN.png preview."""
    folder = tmp_path / "kernels"
    folder.mkdir()
    for j in range(1, 9):
        k = np.load(LEVIN / "kernels" / f"kernel{j}.npy")
        np.save(folder / f"kernel{j}.npy", k)
        iio.imwrite(folder / f"kernel{j}.png", np.round(k / k.max() * 255).astype(np.uint8))
    return folder


def _check_photos(store: pathlib.Path, images: list[dict], sharp: bool = True) -> None:
    api = Store(str(store))
    for row in images:
        name = row["blurred_source"].removeprefix("file:blurred/")
        i, j = PHOTOS[name]
        assert row["origin"] == "ingest" and row["kernel_source"] == f"file:kernels/kernel{j}.npy"
        assert (row["height"], row["width"], row["blurred_array"]) == (255, 255, "blurred/255x255")
        assert row["noise_sigma"] is None and row["seed"] is None
        photo = iio.imread(LEVIN / "blurred" / name).astype(np.float32) / 255
        np.testing.assert_array_equal(api.array(row["blurred_array"])[row["blurred_index"]], photo)
        truth = np.load(LEVIN / "kernels" / f"kernel{j}.npy").astype(np.float64)
        assert row["kernel_size"] == truth.shape[0]
        np.testing.assert_allclose(api.kernel(row["kernel_index"], row["kernel_size"]), truth / truth.sum(), atol=1e-7)
        if sharp:
            assert row["sharp_source"] == f"file:sharp/im{i}.png" and row["sharp_array"] == "sharp/255x255"
            picture = iio.imread(LEVIN / "sharp" / f"im{i}.png").astype(np.float32) / 255
            np.testing.assert_array_equal(api.array(row["sharp_array"])[row["sharp_index"]], picture)
        else:
            assert row["sharp_source"] is None and row["sharp_array"] is None and row["sharp_index"] is None


def test_levin_photographs_paired_by_name(tmp_path, kernels):
    store = tmp_path / "store"
    args = ["ingest", store, "--blurred", LEVIN / "blurred", "--kernels", kernels, "--sharp", LEVIN / "sharp"]
    assert ok(*args, *GRID, "-q").output.startswith("ingested 4 images into")
    images = _images(store)
    assert len(images) == 4 and [r["image_id"] for r in images] == list(range(4))
    _check_photos(store, images)
    windows = pq.read_table(store / "windows.parquet")
    assert len(windows) == 4 * PHOTO_WINDOWS == 64
    assert sorted(set(windows["y"].to_pylist())) == [31, 63, 95, 127]
    assert json.loads((store / "manifest.json").read_text())["runs"][0]["command"] == "ingest"

    # rerun (the grid now comes from the store): nothing to do, not a byte changed
    before = snapshot(store)
    result = ok(*args, "-q")
    assert result.output.startswith("nothing to do: all 4 blurred images are already in")
    assert snapshot(store) == before

    # one more photograph in the folder: only it is added
    more = tmp_path / "blurred"
    shutil.copytree(LEVIN / "blurred", more)
    fifth = np.clip(iio.imread(LEVIN / "blurred" / "im1_kernel6.png").astype(int) + 3, 0, 255).astype(np.uint8)
    iio.imwrite(more / "im4_kernel6.png", fifth)
    args[3] = more  # same folder name "blurred": the four already there are recognised
    assert ok(*args, "-q").output.startswith("ingested 1 images into")
    after = snapshot(store)
    assert chunk_files(after, "blurred/255x255", range(4)) == chunk_files(before, "blurred/255x255", range(4))
    assert chunk_files(after, "sharp/255x255", range(4)) == chunk_files(before, "sharp/255x255", range(4))
    assert chunk_files(after, "kernels", range(4)) == chunk_files(before, "kernels", range(4))
    last = _images(store)[-1]
    assert (last["image_id"], last["blurred_index"], last["sharp_index"]) == (4, 4, 3)  # im4's sharp row is reused
    assert last["kernel_index"] == 0  # kernel6, already there
    np.testing.assert_array_equal(Store(str(store)).array("blurred/255x255")[4], fifth.astype(np.float32) / 255)


def test_default_grid_of_a_new_store_is_the_papers(tmp_path, kernels):
    store = tmp_path / "store"
    ok("ingest", store, "--blurred", LEVIN / "blurred", "--kernels", kernels, "-q")
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["window"] == {"size": 228, "stride": 20} and manifest["kernel_capacity"] == 227
    windows = pq.read_table(store / "windows.parquet").to_pylist()
    assert [(w["y"], w["x"], w["size"]) for w in windows] == [(13, 13, 228)] * 4  # one centred window per photo
    _check_photos(store, _images(store), sharp=False)


def test_pairs_from_a_csv(tmp_path, kernels):
    blurred = tmp_path / "photos"
    blurred.mkdir()
    for n, name in enumerate(PHOTOS):  # names that say nothing: only the CSV can pair them
        shutil.copy(LEVIN / "blurred" / name, blurred / f"shot{n}.png")
    csv = tmp_path / "pairs.csv"
    lines = [f"shot{n}.png,kernel{j}.npy,{'' if n == 3 else f'im{i}.png'}" for n, (i, j) in enumerate(PHOTOS.values())]
    csv.write_text("blurred,kernel,sharp\n" + "\n".join(lines) + "\n")
    one_line_error(
        cli("ingest", tmp_path / "store", "--blurred", blurred, "--kernels", kernels, *GRID, "-q"), "shot0.png"
    )
    assert not (tmp_path / "store").exists()
    args = ["ingest", tmp_path / "store", "--blurred", blurred, "--kernels", kernels, "--sharp", LEVIN / "sharp"]
    assert ok(*args, "--pairs", csv, *GRID, "-q").output.startswith("ingested 4 images")
    images = _images(tmp_path / "store")
    assert [r["blurred_source"] for r in images] == [f"file:photos/shot{n}.png" for n in range(4)]
    assert [r["kernel_source"] for r in images] == [f"file:kernels/kernel{j}.npy" for j in (6, 1, 8, 3)]
    assert [r["sharp_source"] for r in images] == [
        "file:sharp/im1.png",
        "file:sharp/im2.png",
        "file:sharp/im3.png",
        None,
    ]
    api = Store(str(tmp_path / "store"))
    for n, name in enumerate(PHOTOS):
        photo = iio.imread(LEVIN / "blurred" / name).astype(np.float32) / 255
        np.testing.assert_array_equal(api.array("blurred/255x255")[images[n]["blurred_index"]], photo)
    before = snapshot(tmp_path / "store")
    assert "nothing to do" in ok(*args, "--pairs", csv, "-q").output
    assert snapshot(tmp_path / "store") == before


def test_ingest_into_a_synth_store_of_another_size(tmp_path, kernels):
    """Synth from Levin's sharp pictures and kernels, then ingest Levin's photographs of the same files."""
    store = tmp_path / "store"
    synth = ["synth", store, "--sharp", LEVIN / "sharp", "--kernels", LEVIN / "kernels", *SMALL, "--pairs", 6, "-q"]
    ok(*synth)
    before = snapshot(store)
    ok("ingest", store, "--blurred", LEVIN / "blurred", "--kernels", kernels, "--sharp", LEVIN / "sharp", "-q")
    after = snapshot(store)
    assert chunk_files(after, f"blurred/{SIZE}x{SIZE}", range(6)) == chunk_files(
        before, f"blurred/{SIZE}x{SIZE}", range(6)
    )
    images = _images(store)
    assert [r["origin"] for r in images] == ["synth"] * 6 + ["ingest"] * 4
    assert [r["image_id"] for r in images] == list(range(10))
    # two sizes: two blurred arrays and two sharp arrays; photographs never point at a synth image's cropped sharp
    _check_photos(store, images[6:])
    assert {r["blurred_array"] for r in images} == {f"blurred/{SIZE}x{SIZE}", "blurred/255x255"}
    assert {r["sharp_array"] for r in images[:6]} == {f"sharp/{SIZE}x{SIZE}"}
    # kernels are shared by name: a Levin kernel used by synth is not stored twice
    kernel_rows = {r["kernel_source"]: r["kernel_index"] for r in images}
    assert len(set(kernel_rows.values())) == len(kernel_rows)
    windows = pq.read_table(store / "windows.parquet").to_pylist()
    per_image = [sum(w["image_id"] == i for w in windows) for i in range(10)]
    assert per_image == [4] * 6 + [PHOTO_WINDOWS] * 4
    summary = json.loads(ok("info", store, "--json").output)
    assert summary["images"] == 10 and summary["images_by_origin"] == {"synth": 6, "ingest": 4}
    assert summary["image_sizes"] == [f"{SIZE}x{SIZE}", "255x255"] and summary["windows"] == 6 * 4 + 4 * PHOTO_WINDOWS
    assert summary["runs"] == 2

    # synth again with every pair: the photographs' pairs are not taken for synthesised ones
    result = ok(*synth[:-3], "-q")
    # "already there" counts this run's pairs the store held (6), not the store's images (10: 4 are photographs)
    assert "added 26 images (32 pairs asked, 6 already there)" in result.output
    assert "now holds 36 images" in result.output
    images = _images(store)
    assert sum(r["origin"] == "synth" for r in images) == 32
    assert {r["sharp_array"] for r in images if r["origin"] == "synth"} == {f"sharp/{SIZE}x{SIZE}"}
    _check_photos(store, [r for r in images if r["origin"] == "ingest"])


# -------------------------------------------------------------------- bad input


def _photos(tmp: pathlib.Path, files: dict[str, object]) -> pathlib.Path:
    folder = tmp / "blurred"
    folder.mkdir(exist_ok=True)
    for name, content in files.items():
        if isinstance(content, bytes):
            (folder / name).write_bytes(content)
        else:
            iio.imwrite(folder / name, content)
    return folder


def _kernels(tmp: pathlib.Path, files: dict[str, np.ndarray]) -> pathlib.Path:
    folder = tmp / "bad_kernels"
    folder.mkdir()
    for name, kernel in files.items():
        np.save(folder / name, kernel)
    return folder


PHOTO = np.full((120, 120), 100, np.uint8)


def _csv(tmp: pathlib.Path, text: str) -> pathlib.Path:
    (tmp / "pairs.csv").write_text(text)
    return tmp / "pairs.csv"


#: case -> (arguments after STORE, made in a fresh tmp folder with a good kernels folder; words the error must name)
INGEST_CASES = {
    "unmatchable names": (
        lambda t, k: ["--blurred", _photos(t, {"holiday.png": PHOTO}), "--kernels", k],
        ("holiday.png", "cannot tell its kernel", "--pairs"),
    ),
    "unreadable photograph": (
        lambda t, k: ["--blurred", _photos(t, {"im1_kernel1.png": b"GIF89a broken"}), "--kernels", k],
        ("im1_kernel1.png", "cannot read image"),
    ),
    "photograph smaller than a window": (
        lambda t, k: ["--blurred", _photos(t, {"im1_kernel1.png": PHOTO[:80]}), "--kernels", k],
        ("im1_kernel1.png", "smaller than a window"),
    ),
    "kernel larger than a window": (  # also sums to 9801: the error must come alone, no warning before it
        lambda t, k: [
            "--blurred",
            _photos(t, {"im1_big.png": PHOTO}),
            "--kernels",
            _kernels(t, {"big.npy": np.ones((99, 99))}),
        ],
        ("big.npy", "larger than the window"),
    ),
    "negative kernel": (
        lambda t, k: [
            "--blurred",
            _photos(t, {"im1_neg.png": PHOTO}),
            "--kernels",
            _kernels(t, {"neg.npy": -np.eye(3)}),
        ],
        ("neg.npy", "negative"),
    ),
    "empty blurred folder": (lambda t, k: ["--blurred", _photos(t, {}), "--kernels", k], ("--blurred",)),
    "empty kernels folder": (
        lambda t, k: ["--blurred", LEVIN / "blurred", "--kernels", _kernels(t, {})],
        ("--kernels",),
    ),
    "sharp of another size": (
        lambda t, k: ["--blurred", _photos(t, {"im1_kernel1.png": PHOTO}), "--kernels", k, "--sharp", LEVIN / "sharp"],
        ("im1.png", "255x255", "120x120"),
    ),
    "--pairs CSV without the columns": (
        lambda t, k: ["--blurred", LEVIN / "blurred", "--kernels", k, "--pairs", _csv(t, "image,psf\na.png,b.npy\n")],
        ("--pairs", "pairs.csv", "blurred, kernel"),
    ),
    "--pairs CSV with a short row": (
        lambda t, k: [
            "--blurred",
            LEVIN / "blurred",
            "--kernels",
            k,
            "--pairs",
            _csv(t, "blurred,kernel\nim1_kernel6.png,kernel6.npy\nim2_kernel1.png\n"),
        ],
        ("--pairs", "line 3", "kernel"),
    ),
    "--pairs CSV naming a missing file": (
        lambda t, k: [
            "--blurred",
            LEVIN / "blurred",
            "--kernels",
            k,
            "--pairs",
            _csv(t, "blurred,kernel\nim9.png,kernel1.npy\n"),
        ],
        ("--pairs", "im9.png", "does not exist"),
    ),
    "--pairs CSV that is missing": (
        lambda t, k: ["--blurred", LEVIN / "blurred", "--kernels", k, "--pairs", t / "nowhere.csv"],
        ("--pairs", "nowhere.csv"),
    ),
    "--window mismatch": (
        lambda t, k: ["--blurred", LEVIN / "blurred", "--kernels", k, "--window", 64],
        ("--window", "96", "64"),
    ),
}


@pytest.fixture(scope="module")
def photo_store(tmp_path_factory) -> pathlib.Path:
    """Two of Levin's photographs, ingested at the small grid."""
    root = tmp_path_factory.mktemp("photos")
    blurred = root / "blurred"
    blurred.mkdir()
    for name in ("im1_kernel6.png", "im2_kernel1.png"):
        shutil.copy(LEVIN / "blurred" / name, blurred)
    ok("ingest", root / "store", "--blurred", blurred, "--kernels", LEVIN / "kernels", *GRID, "-q")
    return root / "store"


@pytest.mark.parametrize("case", list(INGEST_CASES))
def test_bad_ingest_input_is_one_line_and_leaves_the_store_as_it_was(case, photo_store, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(photo_store, store)
    make_args, needles = INGEST_CASES[case]
    args = ["ingest", store, *make_args(tmp_path, LEVIN / "kernels")]
    before = snapshot(store)
    one_line_error(cli(*args, "-q"), *needles)
    one_line_error(cli(*args), *needles)  # with the progress bar on: still the error line only
    assert snapshot(store) == before


def test_bad_ingest_input_into_a_new_store_creates_nothing(tmp_path):
    store = tmp_path / "new"
    blurred = _photos(tmp_path, {"im1_kernel6.png": PHOTO[:50]})
    one_line_error(cli("ingest", store, "--blurred", blurred, "--kernels", LEVIN / "kernels", "-q"), "im1_kernel6.png")
    assert not store.exists()


def test_ingest_into_a_newer_schema_store_is_refused(photo_store, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(photo_store, store)
    manifest = json.loads((store / "manifest.json").read_text())
    (store / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 999}))
    before = snapshot(store)
    result = cli("ingest", store, "--blurred", LEVIN / "blurred", "--kernels", LEVIN / "kernels", "-q")
    one_line_error(result, "schema version 999")
    assert snapshot(store) == before


def test_a_photograph_listed_twice_is_ingested_once(tmp_path):
    csv = _csv(tmp_path, "blurred,kernel\nim1_kernel6.png,kernel6.npy\nim1_kernel6.png,kernel6.npy\n")
    store = tmp_path / "store"
    ok("ingest", store, "--blurred", LEVIN / "blurred", "--kernels", LEVIN / "kernels", "--pairs", csv, *GRID, "-q")
    assert len(_images(store)) == 1


def test_another_file_under_a_stored_name_is_refused(photo_store, tmp_path):
    """A photograph or kernel whose folder and file name are stored already must be that very file."""
    store = tmp_path / "store"
    shutil.copytree(photo_store, store)
    before = snapshot(store)
    # im1_kernel6.png is in the store: a different picture under that name is not "already ingested"
    photo = iio.imread(LEVIN / "blurred" / "im1_kernel6.png")
    changed = tmp_path / "changed"
    changed.mkdir()
    blurred = _photos(changed, {"im1_kernel6.png": 255 - photo})
    one_line_error(
        cli("ingest", store, "--blurred", blurred, "--kernels", LEVIN / "kernels", "-q"),
        str(blurred / "im1_kernel6.png"),
        "already holds a different",
    )
    assert snapshot(store) == before
    # kernel6.npy is in the store: a new photograph must not be tied to it when its kernel6.npy differs
    kernels = tmp_path / "kernels"
    kernels.mkdir()
    for path in (LEVIN / "kernels").glob("*.npy"):
        np.save(kernels / path.name, np.load(path).T.copy())
    (tmp_path / "fresh").mkdir()
    fresh = _photos(tmp_path / "fresh", {"im3_kernel6.png": iio.imread(LEVIN / "blurred" / "im3_kernel8.png")})
    one_line_error(
        cli("ingest", store, "--blurred", fresh, "--kernels", kernels, "-q"),
        str(kernels / "kernel6.npy"),
        "already holds a different",
    )
    assert snapshot(store) == before
