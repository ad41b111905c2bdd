"""Labelling: ``label``, ``status``."""

from __future__ import annotations

import json

import click

from pipeline.files import InputError

from ._shell import CONTEXT, Progress, user_errors


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
    quiet: bool,
) -> None:
    """Run a blind estimator on every window of STORE and record its similarity to the true kernel.

    Distributed over a pool of Ray actors; resumable (done shards are skipped) and
    incremental (only the rows this estimator id lacks are computed).
    """
    from pipeline.distributed import RayOptions, run_labels
    from pipeline.estimate import get_estimator, resolve_device
    from pipeline.labels import plan_labels
    from pipeline.store import Store

    if shard_images < 1:
        raise InputError(f"--shard-images: must be >= 1, got {shard_images}")
    if workers < 0 or cpus_per_worker <= 0 or gpus_per_worker <= 0:
        raise InputError("--workers, --cpus-per-worker and --gpus-per-worker must be positive")
    est = get_estimator(estimator, params)
    if address is None:  # a local Ray gets this machine's devices: a missing GPU is one line, before Ray starts
        resolve_device(device)
    target = Store(store)
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
    try:
        run = run_labels(
            target,
            est,
            plan,
            RayOptions(
                address=address,
                workers=workers,
                device=device,
                gpus_per_worker=gpus_per_worker,
                cpus_per_worker=cpus_per_worker,
            ),
            progress=bar,
        )
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
    """Labelling progress of STORE per estimator: done/total, positive rate, throughput, time left."""
    from pipeline.labels import label_summaries
    from pipeline.store import Store

    summaries = label_summaries(Store(store), threshold)
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
        for image_id, error in s["failed_images"].items():
            click.echo(f"  failed image {image_id}: {error}")
