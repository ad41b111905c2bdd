"""Regions of new images: ``select``, ``evaluate``."""

from __future__ import annotations

import pathlib

import click

from training.selectors import DEFAULT as SELECTORS
from training.selectors import available as available_selectors

from ._shell import CONTEXT, Progress, load_input, user_errors


@click.command(context_settings=CONTEXT)
@click.argument("image")
@click.option("--model", "-m", type=click.Path(file_okay=False), required=True, help="Folder written by train.")
@click.option(
    "--kernel-size",
    "-k",
    type=int,
    default=None,
    help="Odd kernel size to estimate (default: 31, or the true size + 4 for builtin samples).",
)
@click.option("--estimator", "-e", default=None, help="Registered estimator (default: the model's).")
@click.option("--window", type=int, default=None, help="Window side (default: the model's).")
@click.option("--stride", type=int, default=None, help="Window stride (default: the model's).")
@click.option(
    "--top",
    type=int,
    default=1,
    show_default=True,
    help="Estimate one kernel jointly from the K best windows that overlap little (1: the best window alone).",
)
@click.option("--out", "-o", type=click.Path(file_okay=False), required=True, help="Output folder.")
@user_errors
def select(
    image: str,
    model: str,
    kernel_size: int | None,
    estimator: str | None,
    window: int | None,
    stride: int | None,
    top: int,
    out: str,
) -> None:
    """Pick the best window of IMAGE with the trained model, estimate the kernel there, deblur the image.

    Writes windows.json (ranked windows), heatmap.png, kernel.npy/.png and deblurred.png to OUT.
    """
    from pipeline.labels import estimate_kernel_size
    from training.select import MAX_PIXELS, SelectConfig, run_select

    pixels, truth = load_input(image)
    if kernel_size is None:
        kernel_size = estimate_kernel_size(truth.shape[0]) if truth is not None else 31
    config = SelectConfig(
        model_dir=model, out=out, kernel_size=kernel_size, estimator=estimator, window=window, stride=stride,
        top=top, name=pathlib.Path(image).name,
    )  # fmt: skip
    summary = run_select(pixels, config, truth)
    best = summary["best"]
    line = (
        f"best of {summary['windows_scored']} windows: ({best['y']}, {best['x']}) {best['size']} px, "
        f"score {best['score']:.2f}; kernel by {summary['estimator']}"
        + (f" from the {len(summary['regions'])} best distinct windows" if len(summary["regions"]) > 1 else "")
        + f" in {summary['seconds']:.1f} s"
    )
    if "similarity_to_true_kernel" in summary:
        line += f"; similarity to the true kernel {summary['similarity_to_true_kernel']:.3f}"
    click.echo(line)
    if summary["passes"] and summary["passes"] > 1:
        click.echo(
            f"the image is larger than one pass holds ({MAX_PIXELS:,} px): scored in {summary['passes']} "
            "overlapping tiles, each window from the tile where it lies furthest from a cut"
        )
    click.echo(f"wrote windows.json, heatmap.png, kernel.npy, kernel.png and deblurred.png in {out}")


@click.command(context_settings=CONTEXT)
@click.argument("source")
@click.option("--model", "-m", type=click.Path(file_okay=False), required=True, help="Folder written by train.")
@click.option(
    "--selectors",
    default=",".join(SELECTORS),
    show_default=True,
    help=f"Comma-separated selectors to compare: {', '.join(available_selectors())}, and S-joint-K / "
    "S-consensus-K for a window selector S (e.g. cnn-joint-3: one kernel from the 3 best windows; "
    "cnn-consensus-3: the medoid of their 3 kernels).",
)
@click.option("--estimator", "-e", default=None, help="Evaluation estimator (default: the model's).")
@click.option("--window", type=int, default=None, help="Window side (default: the model's).")
@click.option("--stride", type=int, default=None, help="Window stride (default: the model's).")
@click.option(
    "--kernel-size",
    type=int,
    default=31,
    show_default=True,
    help="Kernel size for images whose true kernel is unknown (else true size + 4).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random selector.")
@click.option(
    "--split",
    type=click.Choice(["all", "val"]),
    default="all",
    show_default=True,
    help="'val': only the store images of the model's validation sources.",
)
@click.option("--address", default=None, help="Ray cluster to join ('auto' or HOST:PORT).")
@click.option("--workers", type=int, default=0, help="Parallel images (default: one per CPU).")
@click.option("--out", "-o", type=click.Path(file_okay=False), required=True, help="Output folder.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@user_errors
def evaluate(
    source: str,
    model: str,
    selectors: str,
    estimator: str | None,
    window: int | None,
    stride: int | None,
    kernel_size: int,
    seed: int,
    split: str,
    address: str | None,
    workers: int,
    out: str,
    quiet: bool,
) -> None:
    """Compare region selectors on SOURCE (a store, or a folder of images without ground truth).

    For each image and selector: choose a region, estimate the kernel there,
    deconvolve the whole image, and score it by Levin's error ratio and PSNR.
    Writes results.parquet, results.md, er_curve.png and psnr.png to OUT.
    """
    from pipeline.ray.cluster import RayOptions
    from training.evaluate import evaluation_config, plan_jobs, run_evaluate

    chosen = selectors.split(",")
    config = evaluation_config(source, model, out, chosen, estimator, window, stride, kernel_size, seed, split)
    jobs = plan_jobs(config)
    bar = Progress(0, "img", quiet, "evaluate")
    bar.set_total(len(jobs))
    try:
        _results, errors = run_evaluate(jobs, out, RayOptions(address=address, workers=workers, device="cpu"), bar)
    finally:
        bar.close()
    click.echo((pathlib.Path(out) / "results.md").read_text().strip())
    click.echo(f"\nwrote results.parquet, results.md, er_curve.png, psnr.png and deblurred/ in {out}")
    for error in errors:
        click.echo(f"  failed: {error}", err=True)
    if errors:
        raise click.ClickException(f"{len(errors)} images failed (listed above)")
