"""``train``: a Ray Train job streaming labelled windows from the store into the window classifier.

The driver builds an image-level index of the labels, splits it by source sharp
image, and hands two Ray Datasets (windows cropped from Zarr on the fly) to a
``TorchTrainer``.  Each epoch every worker trains on its shard of the training
windows (DDP across workers), evaluates on all validation windows, and rank 0
reports the metrics with a checkpoint.  Rerunning with the same ``MODEL_DIR``
resumes from the last checkpoint (Ray Train resumes a run of the same name and
storage path).  At the end the model is exported as ``model.pt`` (a state dict,
read with ``weights_only=True``) plus ``model.json``, and the per-epoch metrics as
``metrics.csv`` and ``metrics.png``.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import tempfile
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow.compute as pc

from pipeline.files import InputError, atomic_path
from pipeline.store import Store

from .data import build_index, split_by_source, subset
from .metrics import validation_metrics, write_history_csv
from .plots import plot_history

__all__ = ["TrainConfig", "TrainResult", "run_training", "train_loop"]

log = logging.getLogger(__name__)

NORMALISATION = "per-window standardisation: (x - mean) / (std + 1e-3), x in [0, 1]"


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
    balance: bool = False
    seed: int = 0
    address: str | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise InputError(f"epochs: must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise InputError(f"batch_size: must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise InputError(f"lr: must be > 0, got {self.lr}")
        if self.workers < 1 or self.data_workers < 1 or self.cpus_per_worker <= 0:
            raise InputError("workers, data_workers and cpus_per_worker: must be positive")
        if self.init_weights is not None and not pathlib.Path(self.init_weights).is_file():
            raise InputError(f"init_weights: {self.init_weights} does not exist")

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
            "balance",
            "seed",
        )
        return {k: getattr(self, k) for k in keep}


@dataclass(frozen=True)
class TrainResult:
    model_path: str
    metrics: dict[str, Any]
    epochs: int
    resumed_from: int


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
    model = ray.train.torch.prepare_model(build_model(cfg["init_weights"]))
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
    pos_weight = torch.tensor([cfg["pos_weight"]], device=device) if cfg["pos_weight"] else None
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    train_data = ray.train.get_dataset_shard("train")
    val_data = ray.train.get_dataset_shard("val")

    for epoch in range(start_epoch, cfg["epochs"]):
        model.train()
        losses = []
        for batch in train_data.iter_torch_batches(
            batch_size=cfg["batch_size"], device=device, local_shuffle_buffer_size=16 * cfg["batch_size"],
            local_shuffle_seed=cfg["seed"] + epoch, dtypes=torch.float32,
        ):  # fmt: skip
            logits = model(batch["window"].unsqueeze(1))
            loss = loss_fn(logits, batch["label"].view(-1, 1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        model.eval()
        scores, labels, sims, images = [], [], [], []
        with torch.no_grad():
            for batch in val_data.iter_torch_batches(batch_size=4 * cfg["batch_size"], device=device):
                scores.append(model(batch["window"].to(torch.float32).unsqueeze(1)).view(-1).cpu().numpy())
                labels.append(batch["label"].cpu().numpy())
                sims.append(batch["similarity"].cpu().numpy())
                images.append(batch["image_id"].cpu().numpy())
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

    from pipeline.distributed import configure_window_input, init_ray, window_dataset

    out = pathlib.Path(config.out).resolve()
    store = Store(config.store)
    grid = store.manifest()["window"]
    saved = out / "train_config.json"
    if saved.exists():
        previous = json.loads(saved.read_text())
        if previous != config.resumable_settings():
            raise InputError(f"out: {out} holds a run with other settings ({saved}); use a new folder")
    index = build_index(store, config.estimator, config.threshold)
    all_images = store.images()
    images = all_images.filter(pc.is_in(all_images["image_id"], index["image_id"]))
    split = split_by_source(images, config.val_fraction, config.seed)
    train_index, val_index = subset(index, split.train_images), subset(index, split.val_images)
    positives = sum(sum(x) for x in train_index["label"].to_pylist())
    n_train = sum(len(x) for x in train_index["label"].to_pylist())
    if positives in (0, n_train):
        raise InputError(
            f"threshold: every training window has the same label at {config.threshold} "
            f"({positives} of {n_train} positive); choose another threshold"
        )
    pos_weight = (n_train - positives) / positives if config.balance else None
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(saved) as tmp:
        tmp.write_text(json.dumps(config.resumable_settings(), indent=2))

    init_ray(config.address, 2048, log_to_driver=True, dashboard=True)
    configure_window_input()
    datasets = {
        "train": window_dataset(train_index, store.url, grid["size"], config.data_workers),
        "val": window_dataset(val_index, store.url, grid["size"], config.data_workers),
    }
    loop_config = {
        "seed": config.seed,
        "lr": config.lr,
        "momentum": config.momentum,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "init_weights": config.init_weights,
        "pos_weight": pos_weight,
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
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=2),
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )
    resumed_from = _epochs_checkpointed(out / "ray_results" / "train")
    result = trainer.fit()
    if result.error:
        raise result.error
    with result.checkpoint.as_directory() as folder:
        state = torch.load(os.path.join(folder, "state.pt"), map_location="cpu", weights_only=True)
        history = json.loads(pathlib.Path(folder, "history.json").read_text())
    with atomic_path(out / "model.pt") as tmp:
        torch.save(state["model"], tmp)
    write_history_csv(out / "metrics.csv", history)
    plot_history(out / "metrics.png", history, config.estimator, config.threshold)
    from .hu_yang import fit_hu_yang

    fit_hu_yang(store, train_index, grid["size"], out)  # the baseline learns from the same labels and split
    spec_path = f"labels/estimator={config.estimator}/_estimator.json"
    spec = json.loads(store.read_bytes(spec_path)) if store.exists(spec_path) else None
    description = {
        "format": "goodregions window classifier",
        "architecture": "torchvision resnet34, 1 input channel, max-pool replaced by a stride-2 convolution, 1 logit",
        "window": grid["size"],
        "stride": grid["stride"],
        "normalisation": NORMALISATION,
        "estimator": config.estimator,
        "estimator_spec": spec,
        "threshold": config.threshold,
        "split": split.as_dict(),
        "train": {k: v for k, v in asdict(config).items() if k not in ("out", "address")},
        "metrics": history[-1],
        "epochs_trained": len(history),
    }
    with atomic_path(out / "model.json") as tmp:
        tmp.write_text(json.dumps(description, indent=2))
    return TrainResult(str(out / "model.pt"), history[-1], len(history), resumed_from)


def _epochs_checkpointed(run_dir: pathlib.Path) -> int:
    """Epochs in the newest checkpoint of an earlier (interrupted or finished) run, 0 if none."""
    counts = [len(json.loads(p.read_text())) for p in run_dir.glob("checkpoint_*/history.json")]
    return max(counts, default=0)
