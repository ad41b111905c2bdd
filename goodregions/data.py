"""The dataset: ``synth``, ``ingest``, ``info``."""

from __future__ import annotations

import json

import click

from pipeline.files import InputError

from ._shell import CONTEXT, Progress, user_errors


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
@click.option("--window", type=int, default=228, show_default=True, help="Window side (px).")
@click.option("--stride", type=int, default=20, show_default=True, help="Window stride (px).")
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the kernels, the noise and the --pairs subset."
)
@click.option("--pairs", default="all", show_default=True, help="'all' pairs or a seeded random subset of N.")
@click.option("--workers", type=int, default=0, help="Processes (default: all cores).")
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
    quiet: bool,
) -> None:
    """Blur sharp images with camera-shake kernels into the dataset STORE (a folder or fsspec URL).

    Every sharp image x every kernel (or a seeded subset); rerunning with more
    images or kernels adds only the new pairs.
    """
    from pipeline.store import Store
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
    target = Store(store)
    bar = Progress(0, "img", quiet, "synth")
    try:
        result = run_synth(target, config, progress=bar)
    finally:
        bar.close()
    if result.added == 0:
        click.echo(f"nothing to do: all {result.planned} pairs are already in {store} ({result.existing} images)")
        return
    total = result.added + result.existing
    click.echo(
        f"added {result.added} images ({result.planned} pairs asked, {result.existing} already there) "
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
    "--window", type=int, default=None, help="Window side of a new store (px)  [default: 228; a store keeps its own]"
)
@click.option(
    "--stride", type=int, default=None, help="Window stride of a new store (px)  [default: 20; a store keeps its own]"
)
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
    quiet: bool,
) -> None:
    """Add already-blurred images with known kernels (e.g. real photographs) to STORE.

    A kernel belongs to a blurred file whose name contains the kernel's name
    (im1_kernel2.png -> kernel2.npy), the same for sharp images; --pairs CSV
    states the pairs explicitly.
    """
    from pipeline.ingest import run_ingest
    from pipeline.store import Store

    bar = Progress(0, "img", quiet, "ingest")
    try:
        result = run_ingest(Store(store), blurred, kernels, sharp, pairs, window, stride, progress=bar)
    finally:
        bar.close()
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
@user_errors
def info(store: str, as_json: bool, threshold: float) -> None:
    """Summarise a dataset STORE: images, windows, kernels, sizes on disk, labelling progress."""
    from pipeline.inventory import store_info

    summary = store_info(store, threshold)
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
    parts = ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sorted(disk.items()))
    click.echo(f"  on disk  {sum(disk.values()) / 2**20:.1f} MiB ({parts})")
    for est in summary.get("labels", []):
        click.echo(
            f"  labels   {est['estimator']}: {est['done']}/{est['total']} windows, "
            f"positive rate {est['positive_rate']:.3f} at similarity > {threshold}"
        )
