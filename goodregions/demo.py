"""``demo``: the whole system end to end on built-in data, small enough for 2 CPU cores in minutes.

synth (18 built-in pictures x 8 trajectory kernels, 192 px, windows of 96 px) ->
label (``l0grad`` on Ray) -> train (the ResNet34 classifier, a few epochs, with
the threshold that balances good and bad windows) -> select (on a validation
image) -> evaluate (all selectors on the validation images).  Every step is the
same library code the commands run; each writes into one folder.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import click
import numpy as np

from pipeline.files import InputError

from ._shell import CONTEXT, user_errors

__all__ = ["DemoConfig", "demo", "run_demo"]


@dataclass(frozen=True)
class DemoConfig:
    out: str = "goodregions-demo"
    num_kernels: int = 8
    kernel_sizes: tuple[int, int] = (9, 21)
    size: int = 192
    window: int = 96
    stride: int = 32
    epochs: int = 3
    batch_size: int = 16
    seed: int = 0


def run_demo(config: DemoConfig, say: Callable[[str], None] = print) -> dict[str, str]:
    """Run every stage; returns the paths of the main outputs."""
    from kernels_gpu import estimators
    from pipeline.files import write_png
    from pipeline.labels import estimate_kernel_size, plan_labels, read_labels
    from pipeline.ray.cluster import RayOptions
    from pipeline.ray.labelling import run_labels
    from pipeline.store import Store
    from pipeline.synth import SynthConfig, run_synth
    from training.evaluate import SELECTORS, EvalConfig, plan_jobs, run_evaluate
    from training.select import SelectConfig, estimator_for, load_classifier, run_select
    from training.train import TrainConfig, run_training

    root = pathlib.Path(config.out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def step(text: str) -> None:
        say(f"[{time.perf_counter() - start:6.1f} s] {text}")

    store = Store(str(root / "store"))
    result = run_synth(
        store,
        SynthConfig(
            num_kernels=config.num_kernels,
            kernel_sizes=config.kernel_sizes,
            size=config.size,
            margin=16,
            window=config.window,
            stride=config.stride,
            seed=config.seed,
        ),
    )
    step(f"synth: {result.added + result.existing} blurred images in {store.url}")

    l0grad = estimators.get("l0grad")
    run = run_labels(store, l0grad, plan_labels(store, l0grad, 8), RayOptions(cpus_per_worker=1))
    similarity = read_labels(store, l0grad.id)["similarity"].to_numpy()
    threshold = round(float(np.median(similarity)), 2)  # balances good and bad windows
    step(
        f"label: {len(similarity)} windows with {l0grad.id} ({run.done_windows} computed); median similarity "
        f"{np.median(similarity):.3f}, so lambda = {threshold}"
    )

    model = root / "model"
    trained = run_training(
        TrainConfig(
            store=store.url,
            estimator=l0grad.id,
            out=str(model),
            threshold=threshold,
            epochs=config.epochs,
            batch_size=config.batch_size,
            val_fraction=0.25,
            seed=config.seed,
        )
    )
    m = trained.metrics
    step(
        f"train: {trained.epochs} epochs; validation top-1 window similarity {m['top1_similarity']:.3f} vs random "
        f"{m['random_similarity']:.3f} vs oracle {m['oracle_similarity']:.3f}"
    )

    classifier = load_classifier(model, "cpu")
    val_sources = set(classifier.info["split"]["val_sources"])
    images = store.images().to_pylist()
    example = next(r for r in images if r["sharp_source"] in val_sources)
    blurred = np.asarray(store.array(example["blurred_array"])[example["blurred_index"]])
    write_png(root / "example_blurred.png", blurred)
    truth = store.kernel(example["kernel_index"], example["kernel_size"])
    select_config = SelectConfig(
        model_dir=str(model),
        out=str(root / "select"),
        kernel_size=estimate_kernel_size(example["kernel_size"]),
        name=f"{example['sharp_source']} (validation image)",
    )
    selected = run_select(blurred, select_config, truth)
    step(
        f"select: best window of a validation image at ({selected['best']['y']}, {selected['best']['x']}); "
        f"kernel similarity {selected['similarity_to_true_kernel']:.3f}"
    )

    est = estimator_for(classifier.info, None)
    jobs = plan_jobs(
        EvalConfig(
            source=store.url,
            model_dir=str(model),
            out=str(root / "evaluate"),
            estimator=est,
            window=classifier.window,
            stride=classifier.stride,
            selectors=SELECTORS,
            seed=config.seed,
            only_sources=frozenset(val_sources),
        )
    )
    run_evaluate(jobs, str(root / "evaluate"), RayOptions(device="cpu"))
    step(f"evaluate: {len(jobs)} validation images x {len(SELECTORS)} selectors")
    return {
        "table": str(root / "evaluate" / "results.md"),
        "er_curve": str(root / "evaluate" / "er_curve.png"),
        "psnr": str(root / "evaluate" / "psnr.png"),
        "heatmap": str(root / "select" / "heatmap.png"),
        "deblurred": str(root / "select" / "deblurred.png"),
        "metrics": str(model / "metrics.png"),
    }


@click.command(context_settings=CONTEXT)
@click.option(
    "--out",
    "-o",
    type=click.Path(file_okay=False),
    default="goodregions-demo",
    show_default=True,
    help="Folder for the store, the model and every output.",
)
@click.option("--epochs", type=int, default=3, show_default=True, help="Training epochs.")
@user_errors
def demo(out: str, epochs: int) -> None:
    """Run synth -> label -> train -> select -> evaluate end to end on built-in images (minutes on 2 cores)."""
    if epochs < 1:
        raise InputError(f"--epochs: must be >= 1, got {epochs}")
    outputs = run_demo(DemoConfig(out=out, epochs=epochs), say=click.echo)
    click.echo("")
    click.echo(pathlib.Path(outputs["table"]).read_text().strip())
    click.echo("")
    for key in ("er_curve", "psnr", "heatmap", "deblurred", "metrics"):
        click.echo(f"{key:10s} {outputs[key]}")
