"""The store: the window rule, reading it without goodregions, fsspec URLs, info, schema version, crash + resume."""

from __future__ import annotations

import json
import pathlib
import pickle
import shutil
import uuid

import numpy as np
import pytest

from pipeline import schema
from pipeline.files import InputError
from pipeline.store import Store
from pipeline.windows import axis_starts, grid, window_count
from tests.levin import LEVIN
from tests.stores import (
    MARGIN,
    SIZE,
    SMALL,
    STRIDE,
    WINDOW,
    WINDOWS_PER_SMALL_IMAGE,
    cli,
    ok,
    one_line_error,
    snapshot,
)

# ------------------------------------------------------------------ window rule


def test_paper_grid_is_121_windows_from_11_to_211():
    starts = axis_starts(450, 228, 20)
    assert starts.tolist() == list(range(11, 212, 20))
    assert len(starts) == 11
    corners = grid(450, 450, 228, 20)
    assert corners.shape == (121, 2) and corners.dtype == np.int32
    assert window_count(450, 450, 228, 20) == 121
    # row-major ids: window_id = row * 11 + column
    assert corners[0].tolist() == [11, 11] and corners[1].tolist() == [11, 31] and corners[11].tolist() == [31, 11]
    assert corners[-1].tolist() == [211, 211]
    # centred: 11 px left before the first window and 450 - (211 + 228) = 11 px after the last
    assert 450 - (starts[-1] + 228) == starts[0]


@pytest.mark.parametrize(
    ("length", "size", "stride", "expected"),
    [
        (228, 228, 20, [0]),  # window = image: one window at 0
        (240, 228, 20, [6]),  # less than a stride of room: one window, centred
        (248, 228, 20, [10]),  # exactly one stride of room: still one window (n = room // stride)
        (268, 228, 20, [10, 30]),  # two strides of room: two windows, 10 px each side
        (269, 228, 20, [10, 30]),  # odd leftover: the extra pixel goes after (10 before, 11 after)
        (160, 96, 32, [16, 48]),  # the tests' small grid: 2 per axis
        (255, 96, 32, [31, 63, 95, 127]),  # a Levin photograph at the small grid: 31 px before, 32 after
        (10, 3, 1, [0, 1, 2, 3, 4, 5, 6]),  # stride 1: room 7 -> 7 windows, 1 px left over after
    ],
)
def test_window_rule_edge_cases(length, size, stride, expected):
    assert axis_starts(length, size, stride).tolist() == expected


def test_window_rule_properties():
    rng = np.random.default_rng(0)
    for _ in range(300):
        size, stride = int(rng.integers(1, 60)), int(rng.integers(1, 30))
        length = size + int(rng.integers(0, 200))
        starts = axis_starts(length, size, stride)
        room = length - size
        assert len(starts) == max(1, room // stride)
        assert starts[0] >= 0 and starts[-1] + size <= length
        assert (np.diff(starts) == stride).all()
        before, after = starts[0], length - (starts[-1] + size)
        assert after - before in (0, 1)


def test_window_rule_rejects_bad_sizes():
    with pytest.raises(ValueError, match="larger than the image"):
        axis_starts(100, 101, 10)
    with pytest.raises(ValueError, match="stride"):
        axis_starts(100, 50, 0)
    # non-square images: rows x columns
    assert window_count(450, 300, 228, 20) == 11 * 3
    assert grid(300, 450, 228, 20)[:, 0].tolist() == [16] * 11 + [36] * 11 + [56] * 11


# ----------------------------------------------------------- a known small store


@pytest.fixture(scope="module")
def known_store(tmp_path_factory) -> pathlib.Path:
    """Levin's 4 sharp images x kernel1 (19 px) and kernel2 (17 px), 160 px, noise 2.0: 8 images."""
    root = tmp_path_factory.mktemp("known")
    kernels = root / "kernels"
    kernels.mkdir()
    for j in (1, 2):
        shutil.copy(LEVIN / "kernels" / f"kernel{j}.npy", kernels)
    store = root / "store"
    ok("synth", store, "--sharp", LEVIN / "sharp", "--kernels", kernels, *SMALL, "-q")
    return store


def _read_without_goodregions(root: pathlib.Path) -> dict:
    """The whole store with plain json + pyarrow + zarr: what a user without goodregions can do."""
    import pyarrow.parquet as pq
    import zarr

    manifest = json.loads((root / "manifest.json").read_text())
    images = pq.read_table(root / "images.parquet").to_pylist()
    windows = pq.read_table(root / "windows.parquet").to_pylist()
    kernel_array = zarr.open_array(str(root / "kernels"), mode="r")
    out = []
    for row in images:
        blurred = zarr.open_array(str(root / row["blurred_array"]), mode="r")[row["blurred_index"]]
        sharp = zarr.open_array(str(root / row["sharp_array"]), mode="r")[row["sharp_index"]]
        kernel = kernel_array[row["kernel_index"]]
        c, r = kernel.shape[0] // 2, row["kernel_size"] // 2
        out.append(
            {
                **row,
                "blurred": blurred,
                "sharp": sharp,
                "kernel_full": kernel,
                "kernel": kernel[c - r : c + r + 1, c - r : c + r + 1],
            }
        )
    return {"manifest": manifest, "images": out, "windows": windows, "kernel_array": kernel_array}


def test_store_is_readable_with_plain_pyarrow_and_zarr(known_store):
    import imageio.v3 as iio
    import zarr

    plain = _read_without_goodregions(known_store)
    manifest = plain["manifest"]
    assert manifest["schema_version"] == schema.SCHEMA_VERSION
    assert manifest["window"] == {"size": WINDOW, "stride": STRIDE}
    assert manifest["kernel_capacity"] == WINDOW - 1  # the largest odd kernel that fits a window
    assert manifest["synth"] == {"size": SIZE, "margin": MARGIN, "noise_sigma": 2.0, "fit": "crop"}
    assert [r["command"] for r in manifest["runs"]] == ["synth"]

    images = plain["images"]
    assert [r["image_id"] for r in images] == list(range(8))
    assert {(r["sharp_source"], r["kernel_source"]) for r in images} == {
        (f"file:sharp/im{i}.png", f"file:kernels/kernel{j}.npy") for i in range(1, 5) for j in (1, 2)
    }
    api = Store(str(known_store))
    for row in images:
        assert row["origin"] == "synth" and row["blurred_source"] is None
        assert (row["height"], row["width"]) == (SIZE, SIZE)
        assert (row["blurred_array"], row["sharp_array"]) == (f"blurred/{SIZE}x{SIZE}", f"sharp/{SIZE}x{SIZE}")
        assert row["noise_sigma"] == pytest.approx(2.0 / 255) and row["seed"] == 0
        # pixels: float32 in [0, 1], the same as the store API gives
        assert row["blurred"].dtype == np.float32 and row["blurred"].shape == (SIZE, SIZE)
        assert 0 <= row["blurred"].min() and row["blurred"].max() <= 1
        np.testing.assert_array_equal(row["blurred"], api.array(row["blurred_array"])[row["blurred_index"]])
        # the sharp reference is the centre of Levin's picture: centre crop of 224 px, then the inner 160
        name = row["sharp_source"].split("/")[-1]
        picture = iio.imread(LEVIN / "sharp" / name).astype(np.float32) / 255
        start = (255 - (SIZE + 2 * MARGIN)) // 2 + MARGIN
        np.testing.assert_allclose(row["sharp"], picture[start : start + SIZE, start : start + SIZE], atol=1e-6)
        # kernels: sum 1, non-negative, the file's kernel centred in the capacity square, nothing outside its size
        assert row["kernel_full"].sum() == pytest.approx(1, abs=1e-5) and row["kernel_full"].min() >= 0
        assert row["kernel"].sum() == pytest.approx(1, abs=1e-5)
        truth = np.load(LEVIN / "kernels" / row["kernel_source"].split("/")[-1])
        assert row["kernel_size"] == truth.shape[0]
        np.testing.assert_allclose(row["kernel"], truth / truth.sum(), atol=1e-7)
        np.testing.assert_array_equal(row["kernel"], api.kernel(row["kernel_index"], row["kernel_size"]))

    # windows: coordinates derived from the image size and the grid
    windows = plain["windows"]
    assert len(windows) == 8 * WINDOWS_PER_SMALL_IMAGE
    for w in windows:
        assert w["size"] == WINDOW and 0 <= w["y"] <= SIZE - WINDOW and 0 <= w["x"] <= SIZE - WINDOW
    corners = {(w["image_id"], w["window_id"]): (w["y"], w["x"]) for w in windows}
    assert corners[(3, 0)] == (16, 16) and corners[(3, 1)] == (16, 48) and corners[(3, 3)] == (48, 48)

    # zarr layout: v3, one chunk per image, NaN fill, named dimensions
    blurred = zarr.open_array(str(known_store / f"blurred/{SIZE}x{SIZE}"), mode="r")
    assert blurred.metadata.zarr_format == 3
    assert blurred.shape == (8, SIZE, SIZE) and blurred.chunks == (1, SIZE, SIZE) and blurred.dtype == np.float32
    assert np.isnan(blurred.fill_value)
    assert blurred.metadata.dimension_names == ("blurred_index", "y", "x")
    assert plain["kernel_array"].shape == (2, WINDOW - 1, WINDOW - 1)
    assert plain["kernel_array"].chunks == (1, WINDOW - 1, WINDOW - 1)
    assert zarr.open_array(str(known_store / f"sharp/{SIZE}x{SIZE}"), mode="r").shape == (4, SIZE, SIZE)


def test_tables_have_the_schema_module_schemas(known_store):
    import pyarrow.parquet as pq

    images = pq.read_table(known_store / "images.parquet")
    windows = pq.read_table(known_store / "windows.parquet")
    assert images.schema.remove_metadata() == schema.IMAGES.remove_metadata()
    assert windows.schema.remove_metadata() == schema.WINDOWS.remove_metadata()
    assert images.schema.metadata[b"schema_version"] == str(schema.SCHEMA_VERSION).encode()


@pytest.mark.filterwarnings("ignore:Object at .* is not recognized:UserWarning")  # the Parquet files beside zarr
def test_readers_without_goodregions(known_store):
    """The README's snippets: pandas, DuckDB, Polars, xarray (skipped where the library is missing)."""
    import pandas as pd

    images = pd.read_parquet(known_store / "images.parquet")
    assert len(images) == 8 and images["kernel_size"].tolist().count(19) == 4
    duckdb = pytest.importorskip("duckdb")
    per_image = duckdb.sql(
        f"SELECT image_id, count(*) AS n FROM '{known_store}/windows.parquet' GROUP BY image_id ORDER BY image_id"
    ).fetchall()
    assert per_image == [(i, WINDOWS_PER_SMALL_IMAGE) for i in range(8)]
    pl = pytest.importorskip("polars")
    by_kernel = pl.read_parquet(known_store / "images.parquet").group_by("kernel_source").len().sort("kernel_source")
    assert by_kernel["len"].to_list() == [4, 4]
    xr = pytest.importorskip("xarray")
    blurred = xr.open_zarr(known_store, group="blurred", consolidated=False)[f"{SIZE}x{SIZE}"]
    assert blurred.dims == ("blurred_index", "y", "x") and blurred.shape == (8, SIZE, SIZE)
    np.testing.assert_array_equal(
        blurred.isel(blurred_index=5).values, Store(str(known_store)).array(f"blurred/{SIZE}x{SIZE}")[5]
    )
    kernels = xr.open_zarr(known_store, consolidated=False)["kernels"]
    assert kernels.sum(dim=("y", "x")).values == pytest.approx([1, 1], abs=1e-5)


def test_info_json_numbers(known_store):
    summary = json.loads(ok("info", known_store, "--json").output)
    on_disk = {p.relative_to(known_store).parts[0]: 0 for p in known_store.rglob("*") if p.is_file()}
    for p in known_store.rglob("*"):
        if p.is_file():
            on_disk[p.relative_to(known_store).parts[0]] += p.stat().st_size
    assert summary == {
        "url": str(known_store),
        "schema_version": schema.SCHEMA_VERSION,
        "package_version": summary["package_version"],
        "window": {"size": WINDOW, "stride": STRIDE},
        "images": 8,
        "images_by_origin": {"synth": 8},
        "image_sizes": [f"{SIZE}x{SIZE}"],
        "windows": 8 * WINDOWS_PER_SMALL_IMAGE,
        "kernels": 2,
        "kernel_sizes": "17-19",
        "sharp_images": 4,
        "disk_bytes": on_disk,
        "runs": 1,
        "labels": [],
    }
    assert set(on_disk) == {
        "manifest.json",
        "images.parquet",
        "windows.parquet",
        "blurred",
        "sharp",
        "kernels",
        "zarr.json",
    }
    text = ok("info", known_store).output
    assert "images   8 (8 synth)" in text and f"windows  {8 * WINDOWS_PER_SMALL_IMAGE}" in text


# ------------------------------------------------------------------ fsspec URLs


def test_memory_url_store_through_the_api_and_refused_by_the_cli():
    import fsspec

    from pipeline.inventory import store_info
    from pipeline.synth import SynthConfig, run_synth

    url = f"memory://goodregions-test-{uuid.uuid4().hex}"
    config = SynthConfig(
        sharp="builtin", num_kernels=2, kernel_sizes=(11, 25), size=SIZE, window=WINDOW, stride=STRIDE, pairs=5
    )
    try:
        store = Store(url)
        assert not store.is_local
        assert run_synth(store, config).added == 5  # the writer lock is a lease object here
        assert run_synth(store, config).added == 0
        summary = store_info(url)
        assert summary["images"] == 5 and summary["windows"] == 5 * WINDOWS_PER_SMALL_IMAGE
        assert summary["disk_bytes"]["blurred"] > 0 and not [k for k in summary["disk_bytes"] if k.startswith(".")]
        pixels = store.array(f"blurred/{SIZE}x{SIZE}")[:]
        assert pixels.shape == (5, SIZE, SIZE) and np.isfinite(pixels).all()
        # each command is its own process: a memory:// store would vanish with it
        for command in ("synth", "info", "status", "label"):
            one_line_error(cli(command, url), url, "memory://")
    finally:
        fs = fsspec.filesystem("memory")
        root = url.removeprefix("memory://")
        if fs.exists(root):
            fs.rm(root, recursive=True)


def test_file_url_store_equals_plain_path(tmp_path):
    args = [*SMALL, "--num-kernels", 2, "--pairs", 4, "-q"]
    ok("synth", f"file://{tmp_path}/by_url", *args)
    ok("synth", tmp_path / "by_path", *args)
    assert snapshot(tmp_path / "by_url") == snapshot(tmp_path / "by_path")
    summary = json.loads(ok("info", f"file://{tmp_path}/by_url", "--json").output)
    assert summary["images"] == 4 and summary["url"] == f"file://{tmp_path}/by_url"


# ------------------------------------------------------- schema version, crash, atomic


def test_newer_schema_is_refused(tmp_path, known_store):
    store = tmp_path / "store"
    shutil.copytree(known_store, store)
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["schema_version"] = schema.SCHEMA_VERSION + 1
    (store / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="newer than this goodregions supports"):
        Store(str(store)).manifest()
    (store / "manifest.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        Store(str(store)).manifest()


def test_a_crash_in_the_middle_is_completed_by_the_next_run(tmp_path, monkeypatch):
    import pipeline.synth as synth

    config = synth.SynthConfig(
        sharp=str(LEVIN / "sharp"), num_kernels=2, kernel_sizes=(11, 25), size=SIZE, window=WINDOW, stride=STRIDE
    )
    fresh = Store(str(tmp_path / "fresh"))
    synth.run_synth(fresh, config)

    crashed = Store(str(tmp_path / "crashed"))
    real_task, calls = synth._run_task, []

    def dies_on_the_third_picture(task, kernels):
        calls.append(task.sharp_key)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real_task(task, kernels)

    monkeypatch.setattr(synth, "_run_task", dies_on_the_third_picture)
    with pytest.raises(KeyboardInterrupt):
        synth.run_synth(crashed, config)
    monkeypatch.setattr(synth, "_run_task", real_task)
    assert crashed.images().num_rows == 0  # the pixels written so far are not visible
    result = synth.run_synth(crashed, config)
    assert (result.added, result.existing) == (8, 0)
    assert snapshot(crashed.root) == snapshot(fresh.root)
    assert not [p for p in pathlib.Path(crashed.root).rglob("*") if ".tmp" in p.name]


def test_write_bytes_is_atomic_and_store_pickles_as_its_url(tmp_path):
    store = Store(str(tmp_path / "s"))
    store.write_bytes("a/b.json", b"{}")
    store.write_bytes("a/b.json", b"[1]")
    assert store.read_bytes("a/b.json") == b"[1]"
    assert [p.name for p in (tmp_path / "s" / "a").iterdir()] == ["b.json"]
    clone = pickle.loads(pickle.dumps(store))
    assert clone.url == store.url and clone.read_bytes("a/b.json") == b"[1]"


def test_info_on_a_folder_that_is_not_a_store(tmp_path):
    result = cli("info", tmp_path)
    assert result.exit_code != 0 and result.output.startswith("Error:") and "not a goodregions store" in result.output
