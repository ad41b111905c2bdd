"""Reading and writing images and kernels, with one-line errors and atomic writes.

Every function that can fail on user input raises :class:`InputError` whose
message names the file and the problem; the CLI prints it on one line and exits
non-zero.  Every write goes to a temporary file in the target directory and is
renamed into place, so an interrupted run never leaves a half-written file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = [
    "InputError",
    "atomic_path",
    "check_kernel",
    "is_no_space",
    "new_file_mode",
    "read_image",
    "read_kernel",
    "read_kernel_raw",
    "write_kernel",
    "write_kernel_preview",
    "write_png",
]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}
KERNEL_SUFFIXES = {".npy", ".png", ".mat"}
#: when a kernel comes in several formats (Levin's data ships .npy beside a .png preview), the most precise
SUFFIX_PREFERENCE = {".npy": 0, ".mat": 1, ".tif": 2, ".tiff": 2, ".png": 3, ".jpg": 4, ".jpeg": 4}


def one_format_per_name(paths: list[pathlib.Path]) -> list[pathlib.Path]:
    """Keep one file per stem, the one in the most precise format (kernel7.npy over kernel7.png)."""
    best: dict[str, pathlib.Path] = {}
    for p in paths:
        rank = SUFFIX_PREFERENCE.get(p.suffix.lower(), 9)
        if p.stem not in best or rank < SUFFIX_PREFERENCE.get(best[p.stem].suffix.lower(), 9):
            best[p.stem] = p
    return sorted(best.values())


class InputError(ValueError):
    """Bad user input; the message is one line that names the file or option."""


def is_no_space(exc: BaseException | None) -> bool:
    """Whether ``exc`` or an exception it was raised from is a full disk or quota (ENOSPC, EDQUOT).

    >>> wrapped = RuntimeError("saving the figure failed")
    >>> wrapped.__context__ = OSError(errno.ENOSPC, "No space left on device")
    >>> is_no_space(wrapped), is_no_space(OSError(errno.EACCES, "Permission denied"))
    (True, False)
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def new_file_mode() -> int:
    """The permission bits the user's umask gives a new file (``0o666 & ~umask``; 0o644 under umask 022).

    Read from ``/proc/self/status`` where Linux has it, so the process-wide umask is never changed.
    """
    try:
        with open("/proc/self/status") as fh:
            umask = next(int(line.split()[1], 8) for line in fh if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0o022)  # the only portable way to read it: set and restore at once
        os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[pathlib.Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The file renamed into place gets the mode the user's umask gives a new file (``mkstemp``
    makes its file 0600).  A full disk during the block is an :class:`InputError` naming
    ``path``; the file that was there before is kept as it was.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = pathlib.Path(tmp)
    try:
        try:
            yield tmp_path
            os.chmod(tmp_path, new_file_mode())
            os.replace(tmp_path, path)
        except Exception as exc:
            if not is_no_space(exc):
                raise
            kept = "the file as it was before is kept" if path.exists() else "not written"
            raise InputError(f"{path}: no space left on device ({kept})") from None
    finally:
        tmp_path.unlink(missing_ok=True)


def _plugin(path: pathlib.Path) -> str:
    """imageio plugin by suffix, so a corrupt file is not offered to every other plugin."""
    return "tifffile" if path.suffix.lower() in {".tif", ".tiff"} else "pillow"


def _first_line(exc: BaseException) -> str:
    """A library's error message cut to its first line (some span several)."""
    text = str(exc).strip().splitlines()
    return text[0].rstrip(" .") if text else type(exc).__name__


def _to_unit_grey(pixels: np.ndarray, source: str) -> np.ndarray:
    """Integer or float pixels, grey or colour -> (H, W) float32 in [0, 1]."""
    if pixels.ndim == 3 and pixels.shape[-1] in (2, 4):  # drop alpha
        pixels = pixels[..., :-1]
    if pixels.dtype == np.uint8:
        unit = pixels.astype(np.float32) / 255
    elif pixels.dtype == np.uint16:
        unit = pixels.astype(np.float32) / 65535
    elif pixels.dtype == bool:
        unit = pixels.astype(np.float32)
    elif np.issubdtype(pixels.dtype, np.floating):
        unit = pixels.astype(np.float32)
        if not np.isfinite(unit).all():
            raise InputError(f"{source}: image contains NaN or infinite values")
        if unit.min() < 0 or unit.max() > 1:
            raise InputError(f"{source}: float image values must lie in [0, 1]")
    else:
        raise InputError(f"{source}: unsupported pixel type {pixels.dtype} (expected 8- or 16-bit or float)")
    if unit.ndim == 3 and unit.shape[-1] == 3:
        unit = unit @ np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)  # ITU-R 709 luma, as skimage
    elif unit.ndim == 3 and unit.shape[-1] == 1:
        unit = unit[..., 0]
    if unit.ndim != 2:
        raise InputError(f"{source}: expected a grey or colour image, got array shape {pixels.shape}")
    return np.ascontiguousarray(unit, dtype=np.float32)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a PNG/JPEG/TIFF (8- or 16-bit, grey or colour) as ``(H, W) float32`` in [0, 1]."""
    import imageio.v3 as iio

    path = pathlib.Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such image file")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise InputError(f"{path}: unsupported image type {path.suffix!r} (expected PNG, JPEG or TIFF)")
    try:
        pixels = np.asarray(iio.imread(path, plugin=_plugin(path)))
    except Exception as exc:  # imageio raises many types for corrupt files
        raise InputError(f"{path}: cannot read image ({type(exc).__name__}: {_first_line(exc)})") from None
    image = _to_unit_grey(pixels, str(path))
    if min(image.shape) < 3:
        raise InputError(f"{path}: image is only {image.shape[0]}x{image.shape[1]} pixels")
    return image


def check_kernel(kernel: Any, source: str) -> np.ndarray:
    """Validate a kernel (2-D, finite, non-negative, not all zero); return it float32, sum 1, odd-sized.

    An even side is padded with one zero row/column (after the last), which keeps
    the kernel's mass where it was.
    """
    k = np.asarray(kernel)
    if k.ndim != 2:
        raise InputError(f"{source}: kernel must be a 2-D array, got shape {k.shape}")
    if not (np.issubdtype(k.dtype, np.floating) or np.issubdtype(k.dtype, np.integer)):
        raise InputError(f"{source}: kernel has non-numeric dtype {k.dtype}")
    k = k.astype(np.float64)
    if not np.isfinite(k).all():
        raise InputError(f"{source}: kernel contains NaN or infinite values")
    if (k < 0).any():
        raise InputError(f"{source}: kernel has negative entries (min {k.min():.3g})")
    if k.sum() <= 0:
        raise InputError(f"{source}: kernel is all zero")
    if k.shape[0] % 2 == 0 or k.shape[1] % 2 == 0:
        k = np.pad(k, ((0, 1 - k.shape[0] % 2), (0, 1 - k.shape[1] % 2)))
    return (k / k.sum()).astype(np.float32)


def read_kernel(path: str | os.PathLike) -> np.ndarray:
    """Read a kernel from ``.npy``, ``.png`` (grey levels) or MATLAB ``.mat``; validated, sum 1."""
    return check_kernel(read_kernel_raw(path), str(path))


def read_kernel_raw(path: str | os.PathLike) -> np.ndarray:
    """The array stored in a kernel file, as it is (no validation, no normalisation)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such kernel file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            kernel = np.load(path, allow_pickle=False)
        elif suffix in IMAGE_SUFFIXES:
            import imageio.v3 as iio

            pixels = np.asarray(iio.imread(path, plugin=_plugin(path)))
            kernel = pixels if pixels.ndim == 2 else _to_unit_grey(pixels, str(path))
        elif suffix == ".mat":
            kernel = _read_mat_kernel(path)
        else:
            raise InputError(f"{path}: unsupported kernel type {suffix!r} (expected .npy, .png or .mat)")
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: cannot read kernel ({type(exc).__name__}: {_first_line(exc)})") from None
    return np.asarray(kernel)


def _read_mat_kernel(path: pathlib.Path) -> np.ndarray:
    """The single 2-D numeric array of a MATLAB file (v5; v7.3/HDF5 files are not supported by scipy)."""
    import scipy.io

    contents = {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
    arrays = [v for v in contents.values() if isinstance(v, np.ndarray) and v.ndim == 2 and v.dtype.kind in "fiu"]
    if len(arrays) != 1:
        names = ", ".join(sorted(contents)) or "none"
        raise InputError(f"{path}: expected exactly one 2-D numeric array in the .mat file, found variables: {names}")
    return arrays[0]


def write_png(path: str | os.PathLike, image: np.ndarray, bits: int = 8) -> None:
    """Write ``(H, W)`` values in [0, 1] (clipped) as an 8- or 16-bit grey PNG, atomically."""
    import imageio.v3 as iio

    scale, dtype = (255, np.uint8) if bits == 8 else (65535, np.uint16)
    pixels = np.round(np.clip(np.asarray(image, dtype=np.float64), 0, 1) * scale).astype(dtype)
    with atomic_path(path, suffix=".png") as tmp:
        iio.imwrite(tmp, pixels, extension=".png")


def write_kernel(path: str | os.PathLike, kernel: np.ndarray) -> None:
    """Save a kernel as float32 ``.npy``, atomically."""
    with atomic_path(path, suffix=".npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.asarray(kernel, dtype=np.float32), allow_pickle=False)


def write_kernel_preview(path: str | os.PathLike, kernel: np.ndarray, min_side: int = 128) -> None:
    """A PNG preview of a kernel: ``kernel / max``, enlarged by nearest-neighbour to >= ``min_side`` px."""
    k = np.asarray(kernel, dtype=np.float64)
    peak = k.max()
    scale = max(1, -(-min_side // max(k.shape)))
    write_png(path, np.kron(k / peak if peak > 0 else k, np.ones((scale, scale))))
