"""``train``: a Ray Train job streaming labelled windows from the store into the window classifier.

The driver builds an image-level index of the labels, splits it by source sharp
image, checks that every image's pixels read and are finite, and hands two Ray
Datasets to a ``TorchTrainer``: windows cropped from Zarr on the fly for the
``window`` architecture, whole images with their windows' boxes for the one-pass
``image`` architecture (see :mod:`training.model`).  Each epoch every worker trains
on its shard of the training images (DDP across workers), evaluates on all
validation windows, and rank 0 reports the metrics with a checkpoint; a loss that
is not finite stops the run.  Rerunning with the same ``MODEL_DIR`` resumes from the
last checkpoint (Ray Train resumes a run of the same name and storage path).  At the
end the model is exported as ``model.pt`` (a state dict, read with
``weights_only=True``) plus ``model.json`` (with the whole history), the per-epoch
metrics as ``metrics.csv`` and ``metrics.png``, and the checkpoints are removed; a
finished run given more epochs continues from ``model.pt`` with a fresh optimiser.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
import tempfile
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.files import InputError, atomic_path
from pipeline.labels import check_threshold, resolve_estimator_id
from pipeline.store import Store

from .data import build_index, check_pixels, split_by_source, subset
from .metrics import validation_metrics, write_history_csv
from .plots import plot_history

__all__ = ["TrainConfig", "TrainResult", "run_training", "train_loop"]

log = logging.getLogger(__name__)

#: how each architecture's input is normalised (recorded in model.json)
NORMALISATION = {
    "window": "per-window standardisation: (x - mean) / (std + 1e-3), x in [0, 1]",
    "image": "whole-image standardisation: (x - mean) / (std + 1e-3), x in [0, 1]",
}


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (stored in MODEL_DIR; a resumed run must match them)."""

    store: str
    estimator: str
    out: str
    threshold: float = 0.75
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    momentum: float = 0.9
    workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    data_workers: int = 1
    init_weights: str | None = None
    val_fraction: float = 0.2
    val_sources: tuple[str, ...] | None = None
    balance: bool = False
    seed: int = 0
    address: str | None = None
    arch: str = "window"

    def __post_init__(self) -> None:
        from .model import ARCHITECTURES

        if self.arch not in ARCHITECTURES:
            raise InputError(f"arch: must be one of {', '.join(ARCHITECTURES)}, got {self.arch!r}")
        if self.epochs < 1:
            raise InputError(f"epochs: must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise InputError(f"batch_size: must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise InputError(f"lr: must be > 0, got {self.lr}")
        if self.workers < 1 or self.data_workers < 1 or self.cpus_per_worker <= 0:
            raise InputError("workers, data_workers and cpus_per_worker: must be positive")
        if self.init_weights is not None:
            if not pathlib.Path(self.init_weights).is_file():
                raise InputError(f"init_weights: {self.init_weights} does not exist")
            # the workers run in another folder: they get an absolute path
            object.__setattr__(self, "init_weights", str(pathlib.Path(self.init_weights).resolve()))
        check_threshold(self.threshold)

    def resumable_settings(self) -> dict[str, Any]:
        """What must not change between an interrupted run and its resumption (epochs may grow)."""
        keep = (
            "store",
            "estimator",
            "threshold",
            "batch_size",
            "lr",
            "momentum",
            "init_weights",
            "val_fraction",
            "val_sources",
            "balance",
            "seed",
            "arch",
        )
        settings = {k: getattr(self, k) for k in keep}
        settings["val_sources"] = list(self.val_sources) if self.val_sources else None  # as JSON reads it back
        return settings


@dataclass(frozen=True)
class TrainResult:
    model_path: str
    metrics: dict[str, Any]
    epochs: int
    resumed_from: int


def _batches(data: Any, cfg: dict[str, Any], device: Any, epoch: int | None) -> Any:
    """One pass over a dataset shard: ``(model inputs, labels, similarities, image ids)`` per step.

    ``epoch`` None: validation (no shuffling, larger batches).  The ``window``
    architecture takes batches of windows; the ``image`` one batches of whole images
    with every window's box (as many images as hold about ``batch_size`` windows).
    """
    import torch

    from .data import collate_images

    shuffle = {} if epoch is None else {
        "local_shuffle_buffer_size": 16 * cfg["batch_size"], "local_shuffle_seed": cfg["seed"] + epoch,
    }  # fmt: skip
    if cfg["arch"] == "window":
        size = cfg["batch_size"] if epoch is not None else 4 * cfg["batch_size"]
        for batch in data.iter_torch_batches(batch_size=size, device=device, dtypes=torch.float32, **shuffle):
            yield (batch["window"].unsqueeze(1),), batch["label"], batch["similarity"], batch["image_id"]
        return
    if shuffle:
        shuffle["local_shuffle_buffer_size"] = max(2, 4 * cfg["images_per_step"])
    size = cfg["images_per_step"]
    for batch in data.iter_batches(batch_size=size, batch_format="numpy", **shuffle):
        parts = collate_images(batch, cfg["window"])
        inputs = (parts["images"].to(device), parts["boxes"].to(device))
        yield inputs, parts["label"].to(device), parts["similarity"], parts["image_id"]


def train_loop(cfg: dict[str, Any]) -> None:
    """One Ray Train worker: train, validate and checkpoint every epoch (resuming if a checkpoint exists)."""
    import ray.train
    import ray.train.torch
    import torch
    from torch import nn

    from .model import build_model

    context = ray.train.get_context()
    rank = context.get_world_rank()
    torch.manual_seed(cfg["seed"] + rank)
    device = ray.train.torch.get_device()
    model = ray.train.torch.prepare_model(build_model(cfg["init_weights"], cfg["arch"]))
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=cfg["lr"], momentum=cfg["momentum"]
    )
    history: list[dict] = []
    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            state = torch.load(os.path.join(folder, "state.pt"), map_location=device, weights_only=True)
            history = json.loads(pathlib.Path(folder, "history.json").read_text())
        getattr(model, "module", model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"])
    elif cfg["finished"]:  # a finished, pruned run gets more epochs: its weights, a fresh optimizer
        state = torch.load(cfg["finished"]["model"], map_location=device, weights_only=True)
        getattr(model, "module", model).load_state_dict(state)
        history = cfg["finished"]["history"]
        start_epoch = len(history)
    pos_weight = torch.tensor([cfg["pos_weight"]], device=device) if cfg["pos_weight"] else None
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)  # the mean over the step's windows
    train_data = ray.train.get_dataset_shard("train")
    val_data = ray.train.get_dataset_shard("val")

    for epoch in range(start_epoch, cfg["epochs"]):
        model.train()
        losses = []
        for inputs, labels, _, _ in _batches(train_data, cfg, device, epoch):
            loss = loss_fn(model(*inputs).view(-1), labels.view(-1))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the training loss is {float(loss)} at epoch {epoch + 1}; stopped")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        model.eval()
        scores, labels, sims, images = [], [], [], []
        with torch.no_grad():
            for inputs, label, sim, image in _batches(val_data, cfg, device, None):
                scores.append(model(*inputs).view(-1).float().cpu().numpy())
                labels.append(label.cpu().numpy())
                sims.append(sim.cpu().numpy())
                images.append(image.cpu().numpy())
        metrics = validation_metrics(
            np.concatenate(scores), np.concatenate(labels), np.concatenate(sims), np.concatenate(images)
        )
        metrics.update(epoch=epoch + 1, train_loss=float(np.mean(losses)) if losses else float("nan"))
        history.append(metrics)
        with tempfile.TemporaryDirectory() as folder:
            if rank == 0:
                torch.save(
                    {
                        "model": getattr(model, "module", model).state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "epoch": epoch + 1,
                    },
                    os.path.join(folder, "state.pt"),
                )
                pathlib.Path(folder, "history.json").write_text(json.dumps(history))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
            else:
                ray.train.report(metrics)


def run_training(config: TrainConfig) -> TrainResult:
    """Train (or resume) and export; see the module docstring."""
    import torch
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipeline.ray.cluster import init_ray
    from pipeline.ray.training_input import configure_window_input, image_dataset, window_dataset

    from .model import ARCHITECTURES

    out = pathlib.Path(config.out).resolve()
    store = Store(config.store)
    grid = store.manifest()["window"]
    saved = out / "train_config.json"
    if saved.exists():
        previous = json.loads(saved.read_text())
        if previous != config.resumable_settings():
            raise InputError(f"out: {out} holds a run with other settings ({saved}); use a new folder")
    estimator_id = resolve_estimator_id(store, config.estimator)
    index = build_index(store, estimator_id, config.threshold)
    all_images = store.images()
    images = all_images.filter(pc.is_in(all_images["image_id"], index["image_id"]))
    split = split_by_source(images, config.val_fraction, config.seed, config.val_sources)
    train_index, val_index = subset(index, split.train_images), subset(index, split.val_images)
    positives = sum(sum(x) for x in train_index["label"].to_pylist())
    n_train = sum(len(x) for x in train_index["label"].to_pylist())
    if positives in (0, n_train):
        raise InputError(
            f"threshold: every training window has the same label at {config.threshold} "
            f"({positives} of {n_train} positive); choose another threshold"
        )
    pos_weight = (n_train - positives) / positives if config.balance else None
    check_pixels(store, pa.concat_tables([train_index, val_index]))
    finished = _finished_run(out)
    if finished and len(finished["history"]) >= config.epochs:
        history = finished["history"]
        return TrainResult(str(out / "model.pt"), history[-1], len(history), len(history))
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(saved) as tmp:
        tmp.write_text(json.dumps(config.resumable_settings(), indent=2))

    _check_init_weights(config)
    parts = {"train": train_index, "val": val_index}
    windows_per_image = n_train / max(train_index.num_rows, 1)
    init_ray(config.address, 2048, log_to_driver=True, dashboard=True)
    configure_window_input()
    if config.arch == "image":
        datasets = {name: image_dataset(part, store.url, config.data_workers) for name, part in parts.items()}
    else:
        datasets = {
            name: window_dataset(part, store.url, grid["size"], config.data_workers) for name, part in parts.items()
        }
    loop_config = {
        "seed": config.seed,
        "lr": config.lr,
        "momentum": config.momentum,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "init_weights": config.init_weights,
        "pos_weight": pos_weight,
        "arch": config.arch,
        "window": grid["size"],
        "images_per_step": max(1, round(config.batch_size / windows_per_image)),
        "finished": finished,
    }
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=config.workers, use_gpu=config.use_gpu, resources_per_worker={"CPU": config.cpus_per_worker}
        ),
        run_config=RunConfig(
            name="train",
            storage_path=str(out / "ray_results"),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            failure_config=FailureConfig(max_failures=2),
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )
    resumed_from = _epochs_checkpointed(out / "ray_results" / "train") or len(finished["history"] if finished else [])
    result = trainer.fit()
    if result.error:
        if "FloatingPointError" in str(result.error):
            raise InputError(f"lr: training diverged ({_last_line(result.error)}); no model written") from None
        raise result.error
    with result.checkpoint.as_directory() as folder:
        state = torch.load(os.path.join(folder, "state.pt"), map_location="cpu", weights_only=True)
        history = json.loads(pathlib.Path(folder, "history.json").read_text())
    if not all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point()):
        raise InputError("lr: training diverged (non-finite weights); no model written")
    with atomic_path(out / "model.pt") as tmp:
        torch.save(state["model"], tmp)
    write_history_csv(out / "metrics.csv", history)
    plot_history(out / "metrics.png", history, estimator_id, config.threshold)
    from .hu_yang import fit_hu_yang

    fit_hu_yang(store, train_index, grid["size"], out)  # the baseline learns from the same labels and split
    spec_path = f"labels/estimator={estimator_id}/_estimator.json"
    spec = json.loads(store.read_bytes(spec_path)) if store.exists(spec_path) else None
    description = {
        "format": "goodregions window classifier",
        "arch": config.arch,
        "architecture": ARCHITECTURES[config.arch],
        "window": grid["size"],
        "stride": grid["stride"],
        "normalisation": NORMALISATION[config.arch],
        "estimator": estimator_id,
        "estimator_spec": spec,
        "threshold": config.threshold,
        "split": split.as_dict(),
        "train": {k: v for k, v in asdict(config).items() if k not in ("out", "address")},
        "metrics": history[-1],
        "epochs_trained": len(history),
        "history": history,
    }
    with atomic_path(out / "model.json") as tmp:
        tmp.write_text(json.dumps(description, indent=2))
    shutil.rmtree(out / "ray_results", ignore_errors=True)  # the export is complete: checkpoints go
    return TrainResult(str(out / "model.pt"), history[-1], len(history), resumed_from)


def _check_init_weights(config: TrainConfig) -> None:
    """Load ``--init-weights`` once in the driver, so a wrong file is one line before any worker starts."""
    if config.init_weights is None:
        return
    from .model import build_model

    try:
        build_model(config.init_weights, config.arch)
    except Exception as exc:  # garbage, truncated, or another network's state dict
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise InputError(
            f"init_weights: {config.init_weights}: not a torchvision resnet34 state dict ({reason})"
        ) from None


def _finished_run(out: pathlib.Path) -> dict[str, Any] | None:
    """The exported weights and history of a finished (pruned) run in ``out``, None if there is none."""
    info_path = out / "model.json"
    if (out / "ray_results").exists() or not (out / "model.pt").is_file() or not info_path.is_file():
        return None
    try:
        history = json.loads(info_path.read_text())["history"]
    except (ValueError, KeyError):
        return None
    return {"model": str(out / "model.pt"), "history": history}


def _last_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _epochs_checkpointed(run_dir: pathlib.Path) -> int:
    """Epochs in the newest checkpoint of an earlier (interrupted or finished) run, 0 if none."""
    counts = [len(json.loads(p.read_text())) for p in run_dir.glob("checkpoint_*/history.json")]
    return max(counts, default=0)
