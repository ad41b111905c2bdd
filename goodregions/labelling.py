"""Labelling: ``label``, ``status``."""

from __future__ import annotations

import json

import click

from pipeline.files import InputError

from ._shell import CONTEXT, Progress, user_errors
from .data import WAIT, one_writer


@click.command(context_settings=CONTEXT)
@click.argument("store")
@click.option("--estimator", "-e", default="l0grad", show_default=True, help="Registered estimator name.")
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Estimator parameter override (a new estimator id); repeatable.",
)
@click.option("--address", default=None, help="Ray cluster to join ('auto' or HOST:PORT); default: start a local Ray.")
@click.option("--workers", type=int, default=0, help="Actors (default: as many as the resources allow).")
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "gpu"]),
    default="auto",
    show_default=True,
    help="Workers on GPUs (CuPy) or CPUs (NumPy); 'auto' takes GPUs where the cluster has them.",
)
@click.option("--gpus-per-worker", type=float, default=1.0, show_default=True, help="GPUs each GPU actor holds.")
@click.option(
    "--cpus-per-worker", type=float, default=1.0, show_default=True, help="CPUs each actor holds (fractions allowed)."
)
@click.option("--shard-images", type=int, default=8, show_default=True, help="Images per output shard.")
@WAIT
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@user_errors
def label(
    store: str,
    estimator: str,
    params: tuple[str, ...],
    address: str | None,
    workers: int,
    device: str,
    gpus_per_worker: float,
    cpus_per_worker: float,
    shard_images: int,
    wait: bool,
    quiet: bool,
) -> None:
    """Run a blind estimator on every window of STORE and record its similarity to the true kernel.

    Distributed over a pool of Ray actors; resumable (done shards are skipped) and
    incremental (only the rows this estimator id lacks are computed). One label run per
    estimator and store at a time: another one stops, or waits with --wait.
    """
    from pipeline.estimate import get_estimator, resolve_device
    from pipeline.labels import label_lock, plan_labels
    from pipeline.ray.cluster import RayOptions
    from pipeline.ray.labelling import run_labels
    from pipeline.store import persistent_store

    if shard_images < 1:
        raise InputError(f"--shard-images: must be >= 1, got {shard_images}")
    if workers < 0 or cpus_per_worker <= 0 or gpus_per_worker <= 0:
        raise InputError("--workers, --cpus-per-worker and --gpus-per-worker must be positive")
    est = get_estimator(estimator, params)
    if address is None:  # a local Ray gets this machine's devices: a missing GPU is one line, before Ray starts
        resolve_device(device)
    target = persistent_store(store)
    target.manifest()  # not a store: one line, before any lock file is made
    with one_writer(), label_lock(target, est.id, wait):
        plan = plan_labels(target, est, shard_images)
        if not plan.shards:
            click.echo(
                f"nothing to do: all {plan.total_windows} windows of {plan.total_images} images already "
                f"have {est.id} labels"
            )
            return
        todo = plan.todo_windows
        click.echo(
            f"{est.id}: {todo} windows of {sum(len(s) for _, s in plan.shards)} images to label in "
            f"{len(plan.shards)} shards ({plan.done_windows} already done)"
        )
        bar = Progress(todo, "win", quiet, "label")
        options = RayOptions(
            address=address,
            workers=workers,
            device=device,
            gpus_per_worker=gpus_per_worker,
            cpus_per_worker=cpus_per_worker,
        )
        try:
            run = run_labels(target, est, plan, options, progress=bar)
        finally:
            bar.close()
    rate = run.done_windows / run.seconds if run.seconds else 0.0
    click.echo(
        f"labelled {run.done_windows} windows of {run.planned_images - len(run.failed)} images in "
        f"{run.seconds:.1f} s ({rate:.2f} windows/s) on {run.workers} {run.device} workers; "
        f"rows in {target.url}/labels/estimator={est.id}/"
    )
    if run.failed:
        for image_id, error in sorted(run.failed.items()):
            click.echo(f"  image {image_id} failed: {error}", err=True)
        raise click.ClickException(f"{len(run.failed)} images failed (listed above); rerun to retry them")


@click.command(context_settings=CONTEXT)
@click.argument("store")
@click.option(
    "--threshold",
    type=float,
    default=0.75,
    show_default=True,
    help="Similarity above which a window is good (the label at lambda).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@user_errors
def status(store: str, threshold: float, as_json: bool) -> None:
    """Labelling progress of STORE per estimator: done/total, positive rate, similarity quartiles,
    throughput, time left; failed images, duplicate rows and broken shards, if any."""
    from pipeline.labels import label_summaries
    from pipeline.store import persistent_store

    summaries = label_summaries(persistent_store(store), threshold)
    if as_json:
        click.echo(json.dumps(summaries, indent=2))
        return
    if not summaries:
        click.echo(f"{store}: no labels yet")
    for s in summaries:
        rate = f"{s['windows_per_second']:.2f} windows/s" if s["windows_per_second"] else "rate unknown"
        left = f", {s['seconds_left'] / 60:.1f} min left" if s["seconds_left"] else ""
        click.echo(
            f"{s['estimator']}: {s['done']}/{s['total']} windows ({100 * s['done'] / max(s['total'], 1):.1f} %),"
            f" positive rate {s['positive_rate']:.3f} at similarity > {threshold}; {rate}{left}"
        )
        if s["similarity_quartiles"]:
            q1, median, q3 = s["similarity_quartiles"]
            click.echo(f"  similarity quartiles {q1:.3f} / median {median:.3f} / {q3:.3f}")
        for image_id, error in s["failed_images"].items():
            click.echo(f"  failed image {image_id}: {error}")
        if s["duplicate_rows"]:
            click.echo(
                f"  {s['duplicate_rows']} duplicate rows (the same image and window more than once; counted once)"
            )
        for path, why in s["broken_shards"].items():
            click.echo(f"  broken shard {path}: {why} (goodregions label relabels its images)")
