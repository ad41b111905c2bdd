"""Training: ``train``."""

from __future__ import annotations

import click

from ._shell import CONTEXT, user_errors


@click.command(context_settings=CONTEXT)
@click.argument("store")
@click.option("--estimator", "-e", required=True, help="Estimator id whose labels to learn (see goodregions status).")
@click.option("--threshold", type=float, default=0.75, show_default=True, help="Good window: similarity > this.")
@click.option("--out", "-o", type=click.Path(file_okay=False), required=True, help="Model folder (resumable).")
@click.option("--epochs", type=int, default=20, show_default=True, help="Epochs in all (a resumed run continues).")
@click.option(
    "--arch",
    type=click.Choice(["window", "image"]),
    default="window",
    show_default=True,
    help="window: the paper's ResNet34 on every window; image: one pass per image, each window pooled from it.",
)
@click.option(
    "--batch-size",
    type=int,
    default=32,
    show_default=True,
    help="Windows per SGD step and worker (image: as many whole images as hold about this many windows).",
)
@click.option("--lr", type=float, default=1e-3, show_default=True, help="SGD learning rate (momentum 0.9).")
@click.option("--workers", type=int, default=1, show_default=True, help="Ray Train workers (DDP).")
@click.option("--use-gpu", is_flag=True, help="One GPU per worker.")
@click.option("--cpus-per-worker", type=float, default=1.0, show_default=True, help="CPUs each training worker holds.")
@click.option("--data-workers", type=int, default=1, show_default=True, help="Ray Data actors cropping windows.")
@click.option(
    "--init-weights",
    type=click.Path(dir_okay=False),
    default=None,
    help="Local torchvision ResNet34 state dict (ImageNet) to fine-tune from.",
)
@click.option("--val-fraction", type=float, default=0.2, show_default=True, help="Source images held out.")
@click.option(
    "--val-sources",
    default=None,
    help="Comma-separated source pictures to validate on (their keys, e.g. file:kodak/kodim08.png), "
    "instead of a seeded --val-fraction of them.",
)
@click.option("--balance", is_flag=True, help="Weight the positive class by negatives/positives.")
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the split, the initial weights and the shuffle."
)
@click.option("--address", default=None, help="Ray cluster to join ('auto' or HOST:PORT).")
@user_errors
def train(
    store: str,
    estimator: str,
    threshold: float,
    out: str,
    epochs: int,
    arch: str,
    batch_size: int,
    lr: float,
    workers: int,
    use_gpu: bool,
    cpus_per_worker: float,
    data_workers: int,
    init_weights: str | None,
    val_fraction: float,
    val_sources: str | None,
    balance: bool,
    seed: int,
    address: str | None,
) -> None:
    """Train the ResNet34 window classifier (--arch) on STORE's labels with Ray Train (resumes an interrupted run)."""
    from training.train import TrainConfig, run_training

    config = TrainConfig(
        store=store,
        estimator=estimator,
        out=out,
        threshold=threshold,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        workers=workers,
        use_gpu=use_gpu,
        cpus_per_worker=cpus_per_worker,
        data_workers=data_workers,
        init_weights=init_weights,
        val_fraction=val_fraction,
        val_sources=tuple(s.strip() for s in val_sources.split(",") if s.strip()) if val_sources else None,
        balance=balance,
        seed=seed,
        address=address,
        arch=arch,
    )
    result = run_training(config)
    m = result.metrics
    resumed = f" (resumed after epoch {result.resumed_from})" if result.resumed_from else ""
    click.echo(
        f"trained {result.epochs} epochs{resumed}; validation: AUC {m['val_auc']:.3f}, accuracy "
        f"{m['val_accuracy']:.3f}; top-1 window similarity {m['top1_similarity']:.3f} vs random "
        f"{m['random_similarity']:.3f} vs oracle {m['oracle_similarity']:.3f} on {m['val_images']} images"
    )
    click.echo(f"wrote {result.model_path}, model.json, metrics.csv and metrics.png in {out}")
