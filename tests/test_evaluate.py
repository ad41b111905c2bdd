"""select and evaluate: outputs, every selector in bounds, the oracle bound, images without ground truth."""

from __future__ import annotations

import json
import re

import imageio.v3 as iio
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from goodregions.cli import main
from kernels_gpu import estimators
from pipeline.labels import plan_labels
from pipeline.ray.cluster import RayOptions
from pipeline.ray.labelling import run_labels
from pipeline.store import Store
from pipeline.synth import SynthConfig, run_synth
from tests.levin import LEVIN_SHARP
from tests.raytools import local_ray
from tests.tolerance import TOLERANCE
from training.data import build_index, split_by_source
from training.evaluate import SELECTORS, portable_name
from training.hu_yang import fit_hu_yang
from training.model import build_model

WINDOW_SELECTORS = ("cnn", "fergus", "xu-jia", "hu-yang", "random")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A labelled store (4 sharp x 2 kernels, 128 px, windows of 64 px at stride 32: 4 each) and a model folder.

    The classifier is an untrained, seeded ResNet: these tests check the mechanics of select and evaluate,
    not the quality of a model (benchmarks/train_real.py does that).
    """
    root = tmp_path_factory.mktemp("evaluate")
    store = Store(str(root / "store"))
    run_synth(
        store,
        SynthConfig(
            sharp=str(LEVIN_SHARP),
            num_kernels=2,
            kernel_sizes=(7, 13),
            size=128,
            margin=8,
            fit="resize",
            window=64,
            stride=32,
            seed=8,
        ),
    )
    ray = local_ray()
    l0 = estimators.get("l0grad")
    run_labels(store, l0, plan_labels(store, l0, 4), RayOptions(workers=2))
    model = root / "model"
    model.mkdir()
    torch.manual_seed(0)
    torch.save(build_model().state_dict(), model / "model.pt")
    split = split_by_source(store.images(), 0.25, 0)
    (model / "model.json").write_text(json.dumps({
        "window": 64, "stride": 32, "estimator": l0.id, "threshold": 0.6,
        "estimator_spec": l0.describe(), "split": split.as_dict(),
    }))  # fmt: skip
    fit_hu_yang(store, build_index(store, l0.id, 0.6), 64, model)
    yield store, model, root
    ray.shutdown()


def test_evaluate_store(setup):
    store, model, root = setup
    out = root / "eval"
    result = CliRunner().invoke(main, ["evaluate", store.url, "--model", str(model), "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    table = pq.read_table(out / "results.parquet").to_pandas()
    assert len(table) == 8 * len(SELECTORS) and set(table["selector"]) == set(SELECTORS)
    for _, row in table.iterrows():  # every region lies inside its 128 x 128 image
        assert 0 <= row.y and 0 <= row.x and row.y + row.height <= 128 and row.x + row.width <= 128
        assert (row.height, row.width) == ((128, 128) if row.selector == "whole" else (64, 64))
    assert table["error_ratio"].notna().all() and (table["error_ratio"] > 0).all()
    parts = table[["scoring_seconds", "estimation_seconds", "deconvolution_seconds"]]
    assert (parts >= 0).all().all() and np.allclose(parts.sum(axis=1), table["seconds"], rtol=1e-4, atol=1e-5)
    assert (table.loc[table["selector"].isin(["fergus", "xu-jia", "whole"]), "estimation_seconds"] > 0).all()
    assert (table.loc[table["selector"] == "whole", "scoring_seconds"] == 0).all() and (table["regions"] == 1).all()
    for _, image in table.groupby("image"):
        sims = image.set_index("selector")["similarity"]
        assert all(sims["oracle"] >= sims[s] - 1e-6 for s in WINDOW_SELECTORS)  # the oracle bounds every window
    report = (out / "results.md").read_text()
    assert "8 images with ground truth scored; 0 without ground truth" in report
    for name in SELECTORS:
        assert f"| {name} | 8 |" in report
    assert "| scoring s | estimation s |" in report
    assert (out / "er_curve.png").stat().st_size > 5000 and (out / "psnr.png").stat().st_size > 5000
    assert len(list((out / "deblurred").glob("*_cnn.png"))) == 8


def test_evaluate_validation_split_and_folder_without_truth(setup):
    store, model, root = setup
    out = root / "eval_val"
    result = CliRunner().invoke(
        main,
        [
            "evaluate",
            store.url,
            "--model",
            str(model),
            "--out",
            str(out),
            "--selectors",
            "cnn,whole,oracle,cnn-consensus-3,cnn-consensus-1,cnn-joint-3,cnn-joint-1",
            "--split",
            "val",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    table = pq.read_table(out / "results.parquet").to_pandas()
    assert len(table) == 2 * 7  # 1 validation source x 2 kernels, 7 selectors
    for _, image in table.groupby("image"):
        rows = image.set_index("selector")
        # the 3 best windows that overlap little: this grid of 4 holds 2 or 3; joint and consensus share them
        assert 2 <= rows.loc["cnn-consensus-3", "regions"] <= 3 and rows.loc["cnn", "regions"] == 1
        assert rows.loc["cnn-joint-3", "regions"] == rows.loc["cnn-consensus-3", "regions"]
        # consensus over one window is the top-1 window; over three its pick is one of them, the oracle bounds it
        assert (
            rows.loc["cnn-consensus-1", ["y", "x", "similarity"]].tolist()
            == rows.loc["cnn", ["y", "x", "similarity"]].tolist()
        )
        assert rows.loc["oracle", "similarity"] >= rows.loc["cnn-consensus-3", "similarity"] - 1e-6
        # joint: one kernel from the 3 best distinct windows, reported at the best one; over one window, its own
        assert rows.loc["cnn-joint-1", "regions"] == 1
        assert rows.loc["cnn-joint-3", ["y", "x"]].tolist() == rows.loc["cnn", ["y", "x"]].tolist()
        assert 0 < rows.loc["cnn-joint-3", "similarity"] <= 1
        one, cnn = rows.loc["cnn-joint-1", "similarity"], rows.loc["cnn", "similarity"]
        assert np.isclose(one, cnn, **TOLERANCE["float32"])
        assert rows.loc["cnn-joint-3", "estimation_seconds"] > 0

    folder = root / "photos"
    folder.mkdir()
    pixels = np.asarray(store.array("blurred/128x128")[0])
    iio.imwrite(folder / "a.png", (pixels * 255).astype(np.uint8))
    out = root / "eval_folder"
    result = CliRunner().invoke(
        main,
        [
            "evaluate",
            str(folder),
            "--model",
            str(model),
            "--out",
            str(out),
            "--selectors",
            "cnn,fergus,oracle",
            "--kernel-size",
            "17",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert {r["selector"] for r in rows} == {"cnn", "fergus"}  # no oracle without ground truth
    assert all(r["error_ratio"] is None and r["kernel_size"] == 17 for r in rows)
    assert "0 images with ground truth scored; 1 without ground truth" in (out / "results.md").read_text()
    assert {p.name for p in (out / "deblurred").iterdir()} == {"a_cnn.png", "a_fergus.png"}


def test_select_outputs(setup, tmp_path):
    store, model, _ = setup
    image = tmp_path / "blurred.png"
    pixels = np.asarray(store.array("blurred/128x128")[3])
    iio.imwrite(image, np.round(pixels * 65535).astype(np.uint16))
    out = tmp_path / "sel"
    result = CliRunner().invoke(
        main, ["select", str(image), "--model", str(model), "-k", "15", "--top", "3", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "windows.json").read_text())
    assert summary["windows_scored"] == 4 and len(summary["windows"]) == 4
    # the best window first, then better-ranked windows that share at most 1/4 of its area with it
    regions = [(r["y"], r["x"]) for r in summary["regions"]]
    assert 1 <= len(regions) <= 3 and regions[0] == (summary["windows"][0]["y"], summary["windows"][0]["x"])
    size = summary["window"]
    for y, x in regions[1:]:
        assert max(size - abs(y - regions[0][0]), 0) * max(size - abs(x - regions[0][1]), 0) <= size * size / 4
    scores = [w["score"] for w in summary["windows"]]
    assert scores == sorted(scores, reverse=True) and summary["best"]["score"] == scores[0]
    assert (summary["best"]["y"], summary["best"]["x"]) == (summary["windows"][0]["y"], summary["windows"][0]["x"])
    kernel = np.load(out / "kernel.npy")
    assert kernel.shape == (15, 15) and kernel.sum() == pytest.approx(1, abs=1e-5)
    assert iio.imread(out / "deblurred.png").shape == (128, 128)
    assert iio.imread(out / "heatmap.png").ndim == 3


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--selectors", "cnn,nope"], "--selectors"),
        (["--selectors", ""], "--selectors"),
        (["--estimator", "nope"], "--estimator"),
        (["--selectors", "cnn-joint-0"], "--selectors"),
        (["--kernel-size", "4"], "--kernel-size"),
    ],
)
def test_evaluate_bad_options(setup, args, needle):
    store, model, root = setup
    result = CliRunner().invoke(
        main, ["evaluate", store.url, "--model", str(model), "--out", str(root / "x"), "-q", *args]
    )
    assert result.exit_code != 0 and result.output.startswith("Error:") and needle in result.output


def test_select_bad_inputs(setup, tmp_path):
    _store, model, _ = setup
    result = CliRunner().invoke(main, ["select", "builtin:camera", "--model", str(tmp_path), "--out", str(tmp_path)])
    assert result.exit_code != 0 and "--model" in result.output
    result = CliRunner().invoke(
        main, ["select", "builtin:camera", "--model", str(model), "-k", "14", "--out", str(tmp_path)]
    )
    assert result.exit_code != 0 and "--kernel-size" in result.output


def test_portable_name():
    assert portable_name("00008_builtin:camera_cnn.png") == "00008_builtin_camera_cnn.png"
    assert portable_name("a b/c\\d*?é.png") == "a_b_c_d_.png"
    assert portable_name("cnn-joint-3_x.png") == "cnn-joint-3_x.png"  # allowed characters stay
    assert portable_name(".hidden") == "_.hidden" and portable_name("-rf") == "_-rf" and portable_name("") == "_"
    for name in ("im1:ker2.png", "über:weird|name.tif"):
        assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", portable_name(name))
