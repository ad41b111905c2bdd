"""Training: the Ray Train job trains, checkpoints, resumes after an interruption, and splits by image."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from kernels_gpu import estimators
from pipeline.files import InputError
from pipeline.labels import plan_labels
from pipeline.ray.cluster import RayOptions
from pipeline.ray.labelling import run_labels
from pipeline.store import Store
from pipeline.synth import SynthConfig, run_synth
from tests.levin import LEVIN_SHARP
from tests.raytools import ROOT, local_ray
from training.data import build_index, split_by_source
from training.metrics import roc_auc, selection
from training.model import TRAINABLE_WHEN_PRETRAINED, build_model, load_model

THRESHOLD = 0.6


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """4 sharp images x 3 kernels at 96 px, windows of 64 px (4 per image), labelled with l0grad."""
    ray = local_ray()
    store = Store(str(tmp_path_factory.mktemp("train") / "store"))
    run_synth(
        store,
        SynthConfig(
            sharp=str(LEVIN_SHARP),
            num_kernels=3,
            kernel_sizes=(7, 15),
            size=96,
            margin=8,
            fit="resize",
            window=64,
            stride=16,
            seed=2,
        ),
    )
    l0 = estimators.get("l0grad")
    run_labels(store, l0, plan_labels(store, l0, 4), RayOptions(workers=2))
    ray.shutdown()  # the training job starts its own Ray, as the CLI does
    return store, l0.id


def _train_cmd(store, estimator_id, out, epochs, *extra):
    return [
        sys.executable,
        "-c",
        "from goodregions.cli import main; main()",
        "train",
        store.url,
        "-e",
        estimator_id,
        "--threshold",
        str(THRESHOLD),
        "--out",
        str(out),
        "--epochs",
        str(epochs),
        "--batch-size",
        "8",
        "--val-fraction",
        "0.25",
        *extra,
    ]


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}


@pytest.fixture(scope="module")
def trained(labelled, tmp_path_factory):
    """One 2-epoch run of the per-window classifier (its stdout and folder)."""
    store, estimator_id = labelled
    out = tmp_path_factory.mktemp("trained") / "model"
    run = subprocess.run(
        _train_cmd(store, estimator_id, out, 2), env=_env(), capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout, out


def test_train_exports_model_metrics_and_split_by_image(labelled, trained):
    _, estimator_id = labelled
    stdout, out = trained
    assert "trained 2 epochs" in stdout
    model = load_model(out / "model.pt")  # weights_only load of the exported state dict
    assert model(torch.zeros(2, 1, 64, 64)).shape == (2, 1)
    info = json.loads((out / "model.json").read_text())
    assert info["window"] == 64 and info["estimator"] == estimator_id and info["threshold"] == THRESHOLD
    assert info["epochs_trained"] == 2 and "top1_similarity" in info["metrics"] and info["arch"] == "window"
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and rows[0].startswith("epoch,train_loss")
    assert (out / "metrics.png").stat().st_size > 10_000
    # the checkpoints go once the export is written: the folder is about the size of model.pt
    assert not (out / "ray_results").exists()
    folder = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    assert folder <= 2 * (out / "model.pt").stat().st_size
    # the split is by source picture: no source on both sides, every image of a source on one side
    split = info["split"]
    assert not set(split["train_sources"]) & set(split["val_sources"])
    assert split["train_images"] + split["val_images"] == 12 and split["val_images"] == 3  # 1 of 4 sources x 3


def test_the_same_seed_trains_the_same_model(labelled, trained, tmp_path):
    """Two runs with the same settings give bit-identical weights and metrics, epoch after epoch."""
    store, estimator_id = labelled
    _, first = trained
    second = tmp_path / "second"
    run = subprocess.run(
        _train_cmd(store, estimator_id, second, 2), env=_env(), capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert (first / "metrics.csv").read_text() == (second / "metrics.csv").read_text()
    weights = [torch.load(out / "model.pt", weights_only=True) for out in (first, second)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


def test_interrupted_training_resumes_from_its_checkpoint(labelled, tmp_path):
    store, estimator_id = labelled
    out = tmp_path / "model"
    proc = subprocess.Popen(
        _train_cmd(store, estimator_id, out, 4),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    run_dir = out / "ray_results" / "train"
    deadline = time.time() + 300
    while time.time() < deadline and not list(run_dir.glob("checkpoint_*/history.json")):
        time.sleep(0.5)
    assert list(run_dir.glob("checkpoint_*/history.json")), "no checkpoint appeared"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started
    proc.wait()
    assert not (out / "model.pt").exists()
    time.sleep(2)
    run = subprocess.run(
        _train_cmd(store, estimator_id, out, 4), env=_env(), capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "resumed after epoch" in run.stdout
    epochs = [int(line.split(",")[0]) for line in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert epochs == [1, 2, 3, 4]


def test_resume_refuses_other_settings(labelled, tmp_path):
    store, estimator_id = labelled
    out = tmp_path / "model"
    out.mkdir()
    (out / "train_config.json").write_text(json.dumps({"store": "elsewhere"}))
    from training.train import TrainConfig, run_training

    with pytest.raises(InputError, match="other settings"):
        run_training(TrainConfig(store=store.url, estimator=estimator_id, out=str(out), threshold=THRESHOLD))


def test_split_by_source_keeps_groups_apart(labelled):
    store, _ = labelled
    images = store.images()
    for seed in range(5):
        split = split_by_source(images, 0.25, seed)
        assert set(split.train_images).isdisjoint(split.val_images)
        assert len(split.train_images) + len(split.val_images) == images.num_rows
        source = dict(zip(images["image_id"].to_pylist(), images["sharp_source"].to_pylist(), strict=True))
        assert {source[i] for i in split.val_images} == set(split.val_sources)
        assert {source[i] for i in split.train_images}.isdisjoint(split.val_sources)
    with pytest.raises(InputError, match="val_fraction"):
        split_by_source(images, 1.5, 0)


def test_index_lists_every_window_with_its_label(labelled):
    store, estimator_id = labelled
    index = build_index(store, estimator_id, THRESHOLD)
    assert index.num_rows == 12
    for row in index.to_pylist():
        assert len(row["window_id"]) == 4
        assert row["label"] == [float(s > THRESHOLD) for s in row["similarity"]]
    with pytest.raises(InputError, match="no labels"):
        build_index(store, "nothing@1-0", THRESHOLD)


def test_roc_auc_and_selection_metric():
    rng = np.random.default_rng(0)
    scores, labels = rng.random(50), rng.random(50) > 0.5
    brute = np.mean([[(p > n) + 0.5 * (p == n) for n in scores[~labels]] for p in scores[labels]])
    assert roc_auc(scores, labels) == pytest.approx(brute)
    assert roc_auc(np.arange(4.0), np.array([0, 0, 1, 1])) == 1.0
    sims = np.array([0.2, 0.9, 0.5, 0.4, 0.8, 0.3])
    images = np.array([0, 0, 0, 1, 1, 1])
    m = selection(np.array([0, 1, 0, 1, 0, 0]), sims, images)  # picks 0.9 and 0.4
    assert m["top1_similarity"] == pytest.approx((0.9 + 0.4) / 2)
    assert m["random_similarity"] == pytest.approx((sims[:3].mean() + sims[3:].mean()) / 2)
    assert m["oracle_similarity"] == pytest.approx((0.9 + 0.8) / 2)
    assert m["top1_beats_random"] == 0.5


def test_model_stem_and_fine_tuned_layers(tmp_path):
    import torchvision

    model = build_model()
    assert model.conv1.in_channels == 1 and model.fc.out_features == 1
    assert isinstance(model.maxpool, torch.nn.Sequential)  # a strided convolution, not a max-pool
    assert model.maxpool[0].stride == (2, 2)
    assert all(p.requires_grad for p in model.parameters())
    weights = tmp_path / "resnet34.pt"
    reference = torchvision.models.resnet34(weights=None)
    torch.save(reference.state_dict(), weights)
    tuned = build_model(weights)
    trainable = {name.split(".")[0] for name, p in tuned.named_parameters() if p.requires_grad}
    assert trainable == set(TRAINABLE_WHEN_PRETRAINED)
    torch.testing.assert_close(tuned.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)
    torch.testing.assert_close(tuned.conv1.weight, reference.conv1.weight.sum(dim=1, keepdim=True))
    bad = tmp_path / "bad.pt"
    torch.save({"something": torch.zeros(3)}, bad)
    with pytest.raises(ValueError, match="not a torchvision resnet34"):
        build_model(bad)


def test_image_scorer_trains_selects_and_continues(labelled, tmp_path):
    """--arch image through Ray Train: exported, pruned, used by select; a finished run given more
    epochs continues from its weights."""
    store, estimator_id = labelled
    out = tmp_path / "model"
    name = estimator_id.split("@")[0]  # a registered name resolves to the store's one id of it
    run = subprocess.run(
        _train_cmd(store, name, out, 1, "--arch", "image"), env=_env(), capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    info = json.loads((out / "model.json").read_text())
    assert info["arch"] == "image" and info["estimator"] == estimator_id and "area-weighted" in info["architecture"]
    assert info["metrics"]["val_images"] == 3 and np.isfinite(info["metrics"]["val_loss"])
    assert not (out / "ray_results").exists()
    model = load_model(out / "model.pt", "image")
    boxes = torch.tensor([[0, 0, 0, 64, 64], [0, 32, 16, 96, 80]], dtype=torch.float32)
    assert model(torch.zeros(1, 1, 96, 96), boxes).shape == (2,)

    sharp = sorted(LEVIN_SHARP.glob("*.png"))[0]
    select = subprocess.run(
        [sys.executable, "-c", "from goodregions.cli import main; main()", "select", str(sharp), "--model", str(out),
         "--kernel-size", "9", "--out", str(tmp_path / "select")],
        env=_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert select.returncode == 0, select.stdout[-3000:] + select.stderr[-3000:]
    chosen = json.loads((tmp_path / "select" / "windows.json").read_text())
    assert chosen["arch"] == "image" and chosen["passes"] == 1 and chosen["windows_scored"] > 1

    more = subprocess.run(
        _train_cmd(store, name, out, 2, "--arch", "image"), env=_env(), capture_output=True, text=True, timeout=600
    )
    assert more.returncode == 0, more.stdout[-3000:] + more.stderr[-3000:]
    assert "resumed after epoch 1" in more.stdout
    epochs = [int(line.split(",")[0]) for line in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert epochs == [1, 2]
