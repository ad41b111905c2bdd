"""One image by hand: ``estimate``, ``deblur``, ``estimators``."""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any

import click

from pipeline.files import InputError

from ._shell import CONTEXT, load_input, user_errors


@click.command(context_settings=CONTEXT)
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
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "gpu"]),
    default="auto",
    show_default=True,
    help="Where to estimate: 'auto' takes the GPU when CuPy sees one.",
)
@user_errors
def estimate(
    image: str, kernel_size: int, estimator: str, window: Any, out: str, true_kernel: str | None, device: str
) -> None:
    """Estimate the blur kernel of IMAGE (PNG/JPEG/TIFF, or builtin:NAME for a bundled sample).

    Writes the kernel (float32, sum 1, convolution orientation) to OUT and a PNG
    preview beside it.
    """
    from kernels_gpu.similarity import similarity
    from pipeline.estimate import estimate_kernel
    from pipeline.files import read_kernel, write_kernel, write_kernel_preview

    out_path = pathlib.Path(out)
    if out_path.suffix.lower() != ".npy":
        raise InputError(f"out: {out} must end in .npy")
    pixels, truth = load_input(image)
    if true_kernel is not None:
        truth = read_kernel(true_kernel)
    result = estimate_kernel(pixels, kernel_size, estimator, window, device)
    write_kernel(out_path, result.kernel)
    preview = out_path.with_suffix(".png")
    write_kernel_preview(preview, result.kernel)
    h, w = result.region_shape
    line = f"{result.estimator_id}: {kernel_size}x{kernel_size} kernel from {h}x{w} px in {result.seconds:.2f} s"
    if truth is not None:
        line += f"; similarity to the true kernel {float(similarity(result.kernel, truth)):.3f}"
    click.echo(line)
    click.echo(f"wrote {out_path} and {preview}")


@click.command(context_settings=CONTEXT)
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
@user_errors
def deblur(image: str, kernel: str, out: str, alpha: str, weight: float | None) -> None:
    """Deconvolve the whole IMAGE with KERNEL (Krishnan & Fergus hyper-Laplacian prior)."""
    from kernels_gpu.deconv import deconvolve
    from pipeline.files import read_kernel, write_png

    out_path = pathlib.Path(out)
    if out_path.suffix.lower() != ".png":
        raise InputError(f"out: {out} must end in .png")
    pixels, _ = load_input(image)
    k = read_kernel(kernel)
    if max(k.shape) > min(pixels.shape):
        raise InputError(
            f"{kernel}: kernel {k.shape[0]}x{k.shape[1]} is larger than the image {pixels.shape[0]}x{pixels.shape[1]}"
        )
    kwargs = {"alpha": 2 / 3 if alpha == "2/3" else 1.0}
    if weight is not None:
        if weight <= 0:
            raise InputError(f"weight: must be > 0, got {weight}")
        kwargs["lam"] = weight
    start = time.perf_counter()
    sharp = deconvolve(pixels, k, **kwargs)
    write_png(out_path, sharp)
    click.echo(
        f"deconvolved {pixels.shape[0]}x{pixels.shape[1]} px with a {k.shape[0]}x{k.shape[1]} kernel "
        f"in {time.perf_counter() - start:.2f} s; wrote {out_path}"
    )


@click.command(name="estimators", context_settings=CONTEXT)
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
