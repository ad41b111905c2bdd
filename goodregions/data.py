"""The dataset: ``synth``, ``ingest``, ``info``."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import click

from pipeline.files import InputError
from pipeline.store import DEFAULT_STRIDE, DEFAULT_WINDOW

from ._shell import CONTEXT, Progress, user_errors

#: the option of every command that writes to a store
WAIT = click.option(
    "--wait", is_flag=True, help="If another run writes the store (or these labels), wait for it instead of stopping."
)


@contextlib.contextmanager
def one_writer() -> Iterator[None]:
    """The library's busy-store error, with the flag that waits."""
    from pipeline.store_locks import StoreBusy, describe_holder

    try:
        yield
    except StoreBusy as exc:
        raise InputError(f"{exc.url} is being written by {describe_holder(exc.holder)} (use --wait)") from None


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def _parse_sizes(value: str) -> tuple[int, int]:
    try:
        lo, _, hi = value.partition(":")
        return (int(lo), int(hi or lo))
    except ValueError:
        raise InputError(f"--kernel-sizes: expected MIN:MAX (e.g. 11:55), got {value!r}") from None


def _parse_pairs(value: str) -> int | None:
    if value == "all":
        return None
    try:
        return int(value)
    except ValueError:
        raise InputError(f"--pairs: expected 'all' or a number, got {value!r}") from None


def _add_images(store: str, run: Any, config: Any, quiet: bool, wait: bool, what: str) -> Any:
    """Run ``synth``'s or ``ingest``'s library step on STORE as the only writer, with a progress bar."""
    from pipeline.store import persistent_store

    target = persistent_store(store)
    target.is_store()  # a store that cannot be reached (credentials, network): one line, before the lock
    bar = Progress(0, "img", quiet, what)
    try:
        with one_writer():
            return run(target, config, progress=bar, wait=wait)
    finally:
        bar.close()


@click.command(context_settings=CONTEXT)
@click.argument("store")
@click.option("--sharp", default="builtin", show_default=True, help="'builtin' (scikit-image pictures) or a folder.")
@click.option("--kernels", default="trajectory", show_default=True, help="'trajectory' (generated) or a folder.")
@click.option("--num-kernels", type=int, default=32, show_default=True, help="Generated kernels (trajectory).")
@click.option("--kernel-sizes", default="11:55", show_default=True, help="MIN:MAX odd sizes of generated kernels.")
@click.option("--size", type=int, default=450, show_default=True, help="Side of the square output images (px).")
@click.option(
    "--margin",
    type=int,
    default=32,
    show_default=True,
    help="Scene kept beyond each side for the blur (px); at least half the largest kernel.",
)
@click.option("--noise-sigma", type=float, default=2.0, show_default=True, help="Gaussian noise, 8-bit units.")
@click.option(
    "--fit",
    default="crop",
    show_default=True,
    metavar="crop|resize",
    help="Folder pictures: centre-crop, or resize the short side first.",
)  # checked by SynthConfig, so a bad value is a one-line error like every other
@click.option("--window", type=int, default=DEFAULT_WINDOW, show_default=True, help="Window side (px).")
@click.option("--stride", type=int, default=DEFAULT_STRIDE, show_default=True, help="Window stride (px).")
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the kernels, the noise and the --pairs subset."
)
@click.option("--pairs", default="all", show_default=True, help="'all' pairs or a seeded random subset of N.")
@click.option("--workers", type=int, default=0, help="Processes (default: all cores).")
@WAIT
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@user_errors
def synth(
    store: str,
    sharp: str,
    kernels: str,
    num_kernels: int,
    kernel_sizes: str,
    size: int,
    margin: int,
    noise_sigma: float,
    fit: str,
    window: int,
    stride: int,
    seed: int,
    pairs: str,
    workers: int,
    wait: bool,
    quiet: bool,
) -> None:
    """Blur sharp images with camera-shake kernels into the dataset STORE (a folder or fsspec URL).

    Every sharp image x every kernel (or a seeded subset); rerunning with more
    images or kernels adds only the new pairs. One synth or ingest per store at a time:
    another one stops, or waits with --wait.
    """
    from pipeline.synth import SynthConfig, run_synth

    config = SynthConfig(
        sharp=sharp,
        kernels=kernels,
        num_kernels=num_kernels,
        kernel_sizes=_parse_sizes(kernel_sizes),
        size=size,
        margin=margin,
        noise_sigma=noise_sigma,
        fit=fit,
        window=window,
        stride=stride,
        seed=seed,
        pairs=_parse_pairs(pairs),
        workers=workers,
    )
    result = _add_images(store, run_synth, config, quiet, wait, "synth")
    if result.added == 0:
        click.echo(f"nothing to do: all {result.planned} pairs are already in {store} ({result.existing} images)")
        return
    total = result.added + result.existing
    click.echo(
        f"added {result.added} images ({result.planned} pairs asked, {result.already} already there) "
        f"in {result.seconds:.1f} s ({result.added / result.seconds:.1f} images/s); "
        f"{store} now holds {total} images"
    )


@click.command(context_settings=CONTEXT)
@click.argument("store")
@click.option("--blurred", type=click.Path(), required=True, help="Folder of blurred images.")
@click.option("--kernels", type=click.Path(), required=True, help="Folder of their true kernels (.npy/.png/.mat).")
@click.option("--sharp", type=click.Path(), default=None, help="Folder of the sharp images, where known.")
@click.option(
    "--pairs",
    type=click.Path(),
    default=None,
    help="CSV with columns blurred,kernel[,sharp] (default: pair files by name).",
)
@click.option(
    "--window",
    type=int,
    default=None,
    help=f"Window side of a new store (px)  [default: {DEFAULT_WINDOW}; a store keeps its own]",
)
@click.option(
    "--stride",
    type=int,
    default=None,
    help=f"Window stride of a new store (px)  [default: {DEFAULT_STRIDE}; a store keeps its own]",
)
@WAIT
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@user_errors
def ingest(
    store: str,
    blurred: str,
    kernels: str,
    sharp: str | None,
    pairs: str | None,
    window: int | None,
    stride: int | None,
    wait: bool,
    quiet: bool,
) -> None:
    """Add already-blurred images with known kernels (e.g. real photographs) to STORE.

    A kernel belongs to a blurred file whose name contains the kernel's name
    (im1_kernel2.png -> kernel2.npy), the same for sharp images; --pairs CSV
    states the pairs explicitly.
    """
    from pipeline.ingest import IngestConfig, run_ingest

    config = IngestConfig(blurred, kernels, sharp, pairs, window, stride)
    result = _add_images(store, run_ingest, config, quiet, wait, "ingest")
    if result.added == 0:
        click.echo(f"nothing to do: all {result.skipped} blurred images are already in {store}")
        return
    click.echo(f"ingested {result.added} images into {store} ({result.skipped} already there)")


@click.command(context_settings=CONTEXT)
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--threshold",
    type=float,
    default=0.75,
    show_default=True,
    help="Similarity above which a window is good (for label summaries).",
)
@click.option(
    "--check", is_flag=True, help="Also read every chunk the tables point to, and find chunks no row points to."
)
@click.option("--fix", is_flag=True, help="With --check: remove the chunks no row points to (after a full disk).")
@WAIT
@user_errors
def info(store: str, as_json: bool, threshold: float, check: bool, fix: bool, wait: bool) -> None:
    """Summarise a dataset STORE: images, windows, kernels, sizes on disk, labelling progress.

    --check reads every pixel the store's tables point to (as long as reading the whole store)
    and exits 1 if any is missing, corrupt or not finite, or a labels shard is broken.
    """
    from pipeline.inventory import check_store, store_info
    from pipeline.store import persistent_store

    if fix and not check:
        raise InputError("--fix: only with --check")
    persistent_store(store)
    summary = store_info(store, threshold)
    if check:
        with one_writer():
            summary["check"] = check_store(store, fix=fix, wait=wait)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(
        f"store {summary['url']} (schema {summary['schema_version']}, "
        f"windows {summary['window']['size']} px at stride {summary['window']['stride']})"
    )
    origins = ", ".join(f"{n} {o}" for o, n in summary["images_by_origin"].items()) or "none"
    click.echo(f"  images   {summary['images']} ({origins}); sizes {', '.join(summary['image_sizes']) or '-'}")
    click.echo(f"  windows  {summary['windows']}")
    click.echo(
        f"  kernels  {summary['kernels']} (sizes {summary['kernel_sizes']}); sharp images {summary['sharp_images']}"
    )
    disk = summary["disk_bytes"]
    parts = ", ".join(f"{k} {_size(v)}" for k, v in sorted(disk.items()))
    click.echo(f"  on disk  {_size(sum(disk.values()))} ({parts})")
    for est in summary["labels"]:
        extra = f"; {est['duplicate_rows']} duplicate rows" if est["duplicate_rows"] else ""
        extra += f"; {est['broken_shards']} broken shards" if est["broken_shards"] else ""
        click.echo(
            f"  labels   {est['estimator']}: {est['done']}/{est['total']} windows, "
            f"positive rate {est['positive_rate']:.3f} at similarity > {threshold}{extra}"
        )
    if check:
        _report_check(summary["check"], fix)


def _report_check(report: dict, fix: bool) -> None:
    for p in report["problems"]:
        click.echo(f"  image {p['image_id']}: {p['what']} pixels ({p['array']} row {p['row']}) {p['problem']}")
    for path, why in report["broken_shards"].items():
        click.echo(f"  broken labels shard {path}: {why}")
    orphans = sum(report["orphans"].values())
    if orphans:
        where = ", ".join(f"{n} in {name}" for name, n in report["orphans"].items())
        if fix:
            click.echo(f"  removed {report['removed']} files no table row points to ({where})")
        else:
            click.echo(f"  {orphans} files no table row points to ({where}); --check --fix removes them")
    if report["problems"] or report["broken_shards"]:
        images = len({p["image_id"] for p in report["problems"]})
        raise click.ClickException(
            f"{report['url']}: {images} images with missing or unreadable pixels, "
            f"{len(report['broken_shards'])} broken labels shards (listed above)"
        )
    click.echo(f"  check    every pixel of the {report['images']} images reads and is finite")
