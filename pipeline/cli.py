"""The ``goodregions`` command line.

Commands import their heavy dependencies lazily: ``goodregions estimate`` never
imports Ray or torch.  Bad input ends with one line ``Error: <file or option>:
<problem>`` and exit status 1, and never a traceback.
"""

from __future__ import annotations

import functools
import json
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any

import click
import numpy as np

from .files import InputError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _user_errors(func: Callable) -> Callable:
    """Turn :class:`InputError` (and ValueError from validation) into a one-line click error."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except InputError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


class _OneLineErrors(click.Group):
    """A click group whose usage errors (bad option values, unknown options) end in one line, like ours."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except click.UsageError as exc:
            where = f" (see '{exc.ctx.command_path} -h')" if exc.ctx is not None else ""
            click.echo(f"Error: {exc.format_message()}{where}", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


@click.group(cls=_OneLineErrors, context_settings=CONTEXT)
@click.version_option(package_name="goodregions", prog_name="goodregions")
def main() -> None:
    """goodregions: learn which image regions are good for blind kernel estimation.

    Synthesise blurred data, label every window with a blind kernel estimator
    (distributed on Ray), train a window classifier, and deblur new images from
    their best window.
    """


def _load_input(image: str) -> tuple[np.ndarray, np.ndarray | None]:
    """An image path or ``builtin:NAME``; returns ``(pixels, true kernel or None)``."""
    from .files import read_image
    from .samples import is_builtin, load_builtin

    if is_builtin(image):
        sample = load_builtin(image)
        return sample.blurred, sample.kernel
    return read_image(image), None


def _crop_window(pixels: np.ndarray, window: tuple[int, int, int] | None, kernel_size: int) -> np.ndarray:
    if window is None:
        if kernel_size > min(pixels.shape):
            raise InputError(
                f"--kernel-size: {kernel_size} is larger than the image {pixels.shape[0]}x{pixels.shape[1]}"
            )
        return pixels
    y, x, size = window
    H, W = pixels.shape
    if y < 0 or x < 0 or size < 1 or y + size > H or x + size > W:
        raise InputError(f"--window: {y} {x} {size} lies outside the image {H}x{W}")
    if kernel_size > size:
        raise InputError(f"--kernel-size: {kernel_size} is larger than the window ({size} px)")
    return pixels[y : y + size, x : x + size]


def _check_kernel_size(kernel_size: int) -> None:
    if kernel_size < 3 or kernel_size % 2 == 0:
        raise InputError(f"--kernel-size: must be an odd number >= 3, got {kernel_size}")


@main.command(context_settings=CONTEXT)
@click.argument("image")
@click.option("--kernel-size", "-k", type=int, required=True, help="Odd size of the kernel to estimate (px).")
@click.option("--estimator", "-e", default="l0grad", show_default=True, help="Registered estimator name.")
@click.option(
    "--window",
    type=(int, int, int),
    default=None,
    metavar="Y X SIZE",
    help="Estimate from this square window only (default: the whole image).",
)
@click.option("--out", "-o", type=click.Path(dir_okay=False), required=True, help="Kernel file to write (.npy).")
@click.option(
    "--true-kernel",
    type=click.Path(dir_okay=False),
    default=None,
    help="Known kernel: report the Hu & Yang similarity of the estimate.",
)
@click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), default="auto", show_default=True)
@_user_errors
def estimate(
    image: str, kernel_size: int, estimator: str, window: Any, out: str, true_kernel: str | None, device: str
) -> None:
    """Estimate the blur kernel of IMAGE (PNG/JPEG/TIFF, or builtin:NAME for a bundled sample).

    Writes the kernel (float32, sum 1, convolution orientation) to OUT and a PNG
    preview beside it.
    """
    from kernels_gpu import estimators
    from kernels_gpu.backend import gpu_available, to_device, to_numpy
    from kernels_gpu.similarity import similarity

    from .files import read_kernel, write_kernel, write_kernel_preview

    _check_kernel_size(kernel_size)
    out_path = pathlib.Path(out)
    if out_path.suffix.lower() != ".npy":
        raise InputError(f"--out: {out} must end in .npy")
    try:
        est = estimators.get(estimator)
    except KeyError:
        raise InputError(
            f"--estimator: unknown estimator {estimator!r} (registered: {', '.join(estimators.available())})"
        ) from None
    pixels, truth = _load_input(image)
    if true_kernel is not None:
        truth = read_kernel(true_kernel)
    region = _crop_window(pixels, window, kernel_size)
    use_gpu = device == "gpu" or (device == "auto" and gpu_available())
    if device == "gpu" and not gpu_available():
        raise InputError("--device: gpu requested but CuPy or a CUDA device is not available")
    batch = to_device(region[None], "gpu" if use_gpu else "cpu")
    start = time.perf_counter()
    kernel = to_numpy(est(batch, kernel_size))[0]
    seconds = time.perf_counter() - start
    write_kernel(out_path, kernel)
    preview = out_path.with_suffix(".png")
    write_kernel_preview(preview, kernel)
    line = (
        f"{est.id}: {kernel_size}x{kernel_size} kernel from {region.shape[0]}x{region.shape[1]} px in {seconds:.2f} s"
    )
    if truth is not None:
        line += f"; similarity to the true kernel {float(similarity(kernel, truth)):.3f}"
    click.echo(line)
    click.echo(f"wrote {out_path} and {preview}")


@main.command(context_settings=CONTEXT)
@click.argument("image")
@click.option("--kernel", type=click.Path(dir_okay=False), required=True, help="Kernel file (.npy, .png or .mat).")
@click.option("--out", "-o", type=click.Path(dir_okay=False), required=True, help="Deblurred image to write (.png).")
@click.option(
    "--alpha",
    type=click.Choice(["2/3", "1"]),
    default="2/3",
    show_default=True,
    help="Exponent of the hyper-Laplacian prior.",
)
@click.option("--weight", type=float, default=None, help="Data-term weight lambda (default: the deconvolver's).")
@_user_errors
def deblur(image: str, kernel: str, out: str, alpha: str, weight: float | None) -> None:
    """Deconvolve the whole IMAGE with KERNEL (Krishnan & Fergus hyper-Laplacian prior)."""
    from kernels_gpu.deconv import deconvolve

    from .files import read_kernel, write_png

    out_path = pathlib.Path(out)
    if out_path.suffix.lower() != ".png":
        raise InputError(f"--out: {out} must end in .png")
    pixels, _ = _load_input(image)
    k = read_kernel(kernel)
    if max(k.shape) > min(pixels.shape):
        raise InputError(
            f"{kernel}: kernel {k.shape[0]}x{k.shape[1]} is larger than the image {pixels.shape[0]}x{pixels.shape[1]}"
        )
    kwargs = {"alpha": 2 / 3 if alpha == "2/3" else 1.0}
    if weight is not None:
        if weight <= 0:
            raise InputError(f"--weight: must be > 0, got {weight}")
        kwargs["lam"] = weight
    start = time.perf_counter()
    sharp = deconvolve(pixels, k, **kwargs)
    write_png(out_path, sharp)
    click.echo(
        f"deconvolved {pixels.shape[0]}x{pixels.shape[1]} px with a {k.shape[0]}x{k.shape[1]} kernel "
        f"in {time.perf_counter() - start:.2f} s; wrote {out_path}"
    )


@main.command(name="estimators", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_estimators(as_json: bool) -> None:
    """List the registered blind kernel estimators with their ids and parameters."""
    from kernels_gpu import estimators

    entries = [estimators.get(name) for name in estimators.available()]
    if as_json:
        click.echo(json.dumps([e.describe() for e in entries], indent=2))
        return
    for e in entries:
        click.echo(f"{e.name:12s} {e.id}  {e.summary}")
        params = ", ".join(f"{k}={v}" for k, v in e.describe()["params"].items())
        click.echo(f"{'':12s} {params}")


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


class _Progress:
    """A tqdm bar on stderr, or nothing with --quiet.

    Made with ``total=0``, the bar opens at the first :meth:`set_total`, once the
    command has checked its input: bad input then prints its error line only.
    """

    def __init__(self, total: int, unit: str, quiet: bool, desc: str) -> None:
        self.bar = None
        self._options = None if quiet else {"unit": unit, "desc": desc}
        if total:
            self._open(total)

    def _open(self, total: int) -> None:
        if self._options is not None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, dynamic_ncols=True, file=sys.stderr, **self._options)

    def set_total(self, total: int) -> None:
        if self.bar is not None:
            self.bar.reset(total=total)
        else:
            self._open(total)

    def __call__(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@main.command(context_settings=CONTEXT)
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
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--pairs", default="all", show_default=True, help="'all' pairs or a seeded random subset of N.")
@click.option("--workers", type=int, default=0, help="Processes (default: all cores).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@_user_errors
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
    from .store import Store
    from .synth import SynthConfig, run_synth

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
    bar = _Progress(0, "img", quiet, "synth")
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


@main.command(context_settings=CONTEXT)
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
@_user_errors
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
    from .ingest import run_ingest
    from .store import Store

    bar = _Progress(0, "img", quiet, "ingest")
    try:
        result = run_ingest(Store(store), blurred, kernels, sharp, pairs, window, stride, progress=bar)
    finally:
        bar.close()
    if result.added == 0:
        click.echo(f"nothing to do: all {result.skipped} blurred images are already in {store}")
        return
    click.echo(f"ingested {result.added} images into {store} ({result.skipped} already there)")


@main.command(context_settings=CONTEXT)
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--threshold",
    type=float,
    default=0.75,
    show_default=True,
    help="Similarity above which a window is good (for label summaries).",
)
@_user_errors
def info(store: str, as_json: bool, threshold: float) -> None:
    """Summarise a dataset STORE: images, windows, kernels, sizes on disk, labelling progress."""
    from .inventory import store_info

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


def _estimator_from_options(name: str, params: tuple[str, ...]) -> Any:
    """A registered estimator with ``KEY=VALUE`` overrides, typed by the parameter dataclass."""
    import dataclasses

    from kernels_gpu import estimators

    try:
        base = estimators.get(name)
    except KeyError:
        raise InputError(
            f"--estimator: unknown estimator {name!r} (registered: {', '.join(estimators.available())})"
        ) from None
    fields = {f.name: f for f in dataclasses.fields(base.params)}
    overrides: dict[str, Any] = {}
    for item in params:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise InputError(f"--param: expected KEY=VALUE with KEY one of {', '.join(fields)}, got {item!r}")
        kind = type(getattr(base.params, key))
        try:
            overrides[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
        except ValueError:
            raise InputError(f"--param: {key} expects a {kind.__name__}, got {value!r}") from None
    try:
        return estimators.get(name, **overrides)
    except ValueError as exc:
        raise InputError(f"--param: {exc}") from None


@main.command(context_settings=CONTEXT)
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
@click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), default="auto", show_default=True)
@click.option("--gpus-per-worker", type=float, default=1.0, show_default=True)
@click.option("--cpus-per-worker", type=float, default=1.0, show_default=True)
@click.option("--shard-images", type=int, default=8, show_default=True, help="Images per output shard.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@_user_errors
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
    from .distributed import RayOptions, run_labels
    from .labels import plan_labels
    from .store import Store

    if shard_images < 1:
        raise InputError(f"--shard-images: must be >= 1, got {shard_images}")
    if workers < 0 or cpus_per_worker <= 0 or gpus_per_worker <= 0:
        raise InputError("--workers, --cpus-per-worker and --gpus-per-worker must be positive")
    est = _estimator_from_options(estimator, params)
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
    bar = _Progress(todo, "win", quiet, "label")
    try:
        run = run_labels(
            target, est, plan, RayOptions(address, workers, device, gpus_per_worker, cpus_per_worker), progress=bar
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


@main.command(context_settings=CONTEXT)
@click.argument("store")
@click.option(
    "--threshold",
    type=float,
    default=0.75,
    show_default=True,
    help="Similarity above which a window is good (the label at lambda).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_user_errors
def status(store: str, threshold: float, as_json: bool) -> None:
    """Labelling progress of STORE per estimator: done/total, positive rate, throughput, time left."""
    from .labels import label_summaries
    from .store import Store

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


@main.command(context_settings=CONTEXT)
@click.argument("store")
@click.option("--estimator", "-e", required=True, help="Estimator id whose labels to learn (see goodregions status).")
@click.option("--threshold", type=float, default=0.75, show_default=True, help="Good window: similarity > this.")
@click.option("--out", "-o", type=click.Path(file_okay=False), required=True, help="Model folder (resumable).")
@click.option("--epochs", type=int, default=20, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--workers", type=int, default=1, show_default=True, help="Ray Train workers (DDP).")
@click.option("--use-gpu", is_flag=True, help="One GPU per worker.")
@click.option("--cpus-per-worker", type=float, default=1.0, show_default=True)
@click.option("--data-workers", type=int, default=1, show_default=True, help="Ray Data actors cropping windows.")
@click.option(
    "--init-weights",
    type=click.Path(dir_okay=False),
    default=None,
    help="Local torchvision ResNet34 state dict (ImageNet) to fine-tune from.",
)
@click.option("--val-fraction", type=float, default=0.2, show_default=True, help="Source images held out.")
@click.option("--balance", is_flag=True, help="Weight the positive class by negatives/positives.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--address", default=None, help="Ray cluster to join ('auto' or HOST:PORT).")
@_user_errors
def train(
    store: str,
    estimator: str,
    threshold: float,
    out: str,
    epochs: int,
    batch_size: int,
    lr: float,
    workers: int,
    use_gpu: bool,
    cpus_per_worker: float,
    data_workers: int,
    init_weights: str | None,
    val_fraction: float,
    balance: bool,
    seed: int,
    address: str | None,
) -> None:
    """Train the ResNet34 window classifier on STORE's labels with Ray Train (resumes an interrupted run)."""
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
        balance=balance,
        seed=seed,
        address=address,
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


@main.command(context_settings=CONTEXT)
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
@click.option("--top", type=int, default=10, show_default=True, help="Ranked windows listed in windows.json.")
@click.option("--out", "-o", type=click.Path(file_okay=False), required=True, help="Output folder.")
@_user_errors
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
    from training.select import run_select

    pixels, truth = _load_input(image)
    if kernel_size is None:
        kernel_size = truth.shape[0] + 4 if truth is not None else 31
    if top < 1:
        raise InputError(f"--top: must be >= 1, got {top}")
    summary = run_select(
        pixels, model, out, kernel_size, estimator, window, stride, top, truth, name=pathlib.Path(image).name
    )
    best = summary["best"]
    line = (
        f"best of {summary['windows_scored']} windows: ({best['y']}, {best['x']}) {best['size']} px, "
        f"score {best['score']:.2f}; kernel by {summary['estimator']} in {summary['seconds']:.1f} s"
    )
    if "similarity_to_true_kernel" in summary:
        line += f"; similarity to the true kernel {summary['similarity_to_true_kernel']:.3f}"
    click.echo(line)
    click.echo(f"wrote windows.json, heatmap.png, kernel.npy, kernel.png and deblurred.png in {out}")


@main.command(context_settings=CONTEXT)
@click.argument("source")
@click.option("--model", "-m", type=click.Path(file_okay=False), required=True, help="Folder written by train.")
@click.option(
    "--selectors",
    default=",".join(("cnn", "fergus", "xu-jia", "hu-yang", "whole", "random", "oracle")),
    show_default=True,
    help="Comma-separated selectors to compare.",
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
@_user_errors
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
    from training.evaluate import SELECTORS, plan_jobs, run_evaluate
    from training.select import estimator_for, load_classifier

    from .distributed import RayOptions

    chosen = tuple(s.strip() for s in selectors.split(",") if s.strip())
    unknown = [s for s in chosen if s not in SELECTORS]
    if unknown or not chosen:
        raise InputError(
            f"--selectors: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(SELECTORS)}"
        )
    if "hu-yang" in chosen and not (pathlib.Path(model) / "hu_yang.json").is_file():
        raise InputError(f"--selectors: hu-yang needs {pathlib.Path(model) / 'hu_yang.json'} (written by train)")
    classifier = load_classifier(model, "cpu")
    est = estimator_for(classifier.info, estimator)
    only = set(classifier.info["split"]["val_sources"]) if split == "val" else None
    size, step = window or classifier.window, stride or classifier.stride
    jobs = plan_jobs(source, model, chosen, est, out, size, step, kernel_size, seed, only)
    if not jobs:
        raise InputError(f"{source}: no image is at least one window ({window or classifier.window} px) large")
    bar = _Progress(0, "img", quiet, "evaluate")
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


@main.command(context_settings=CONTEXT)
@click.option(
    "--out",
    "-o",
    type=click.Path(file_okay=False),
    default="goodregions-demo",
    show_default=True,
    help="Folder for the store, the model and every output.",
)
@click.option("--epochs", type=int, default=3, show_default=True, help="Training epochs.")
@_user_errors
def demo(out: str, epochs: int) -> None:
    """Run synth -> label -> train -> select -> evaluate end to end on built-in images (minutes on 2 cores)."""
    from training.demo import DemoConfig, run_demo

    if epochs < 1:
        raise InputError(f"--epochs: must be >= 1, got {epochs}")
    outputs = run_demo(DemoConfig(out=out, epochs=epochs), say=click.echo)
    click.echo("")
    click.echo(pathlib.Path(outputs["table"]).read_text().strip())
    click.echo("")
    for key in ("er_curve", "psnr", "heatmap", "deblurred", "metrics"):
        click.echo(f"{key:10s} {outputs[key]}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
