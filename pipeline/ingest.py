"""``ingest``: add already-blurred images with their ground-truth kernels to a store.

Pairing of each blurred file with its kernel (and, optionally, its sharp image):

* ``--pairs CSV`` with columns ``blurred,kernel[,sharp]`` (file names inside the
  folders) says it explicitly;
* otherwise a kernel belongs to a blurred file when the kernel's file stem equals
  the blurred stem or appears in it as whole ``_``/``-``-separated tokens
  (``im1_kernel2.png`` -> ``kernel2.npy``; ``kernel1`` does not match
  ``kernel10``); the same rule finds the sharp image (``im1_kernel2`` -> ``im1.png``).
  A blurred file with no match, or with several, is an error that names it.

Everything is read and checked before the first write.  Rerunning skips blurred
files already in the store.
"""

from __future__ import annotations

import csv
import logging
import pathlib
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from kernels_gpu.kernels import fit_size

from . import schema
from .files import (
    IMAGE_SUFFIXES,
    KERNEL_SUFFIXES,
    SUFFIX_PREFERENCE,
    InputError,
    check_kernel,
    read_image,
    read_kernel_raw,
)
from .store import DEFAULT_STRIDE, DEFAULT_WINDOW, Store, check_window_grid, kernel_capacity
from .store_append import NewImages

__all__ = ["IngestConfig", "IngestResult", "run_ingest"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestResult:
    added: int
    skipped: int


def _tokens(stem: str) -> list[str]:
    return [t for t in re.split(r"[_\-.\s]+", stem.lower()) if t]


def _contains(stem: str, candidate: str) -> bool:
    """Whether ``candidate``'s tokens appear consecutively in ``stem``'s tokens."""
    hay, needle = _tokens(stem), _tokens(candidate)
    return any(hay[i : i + len(needle)] == needle for i in range(len(hay) - len(needle) + 1)) if needle else False


def _match(blurred: pathlib.Path, candidates: list[pathlib.Path], what: str) -> pathlib.Path:
    exact = [c for c in candidates if c.stem.lower() == blurred.stem.lower()]
    found = exact or [c for c in candidates if _contains(blurred.stem, c.stem)]
    if len({c.stem for c in found}) == 1:  # one name in several formats: the most precise one
        found = sorted(found, key=lambda c: SUFFIX_PREFERENCE.get(c.suffix.lower(), 9))[:1]
    if len(found) != 1:
        names = ", ".join(c.name for c in found) or "none"
        raise InputError(f"{blurred}: cannot tell its {what} ({len(found)} candidates: {names}); give --pairs CSV")
    return found[0]


def _listing(folder: pathlib.Path, suffixes: set[str], option: str) -> list[pathlib.Path]:
    if not folder.is_dir():
        raise InputError(f"{option}: {folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes)
    if not files:
        raise InputError(f"{option}: {folder} holds no {'/'.join(sorted(suffixes))} files")
    return files


def plan_pairs(
    blurred_dir: pathlib.Path, kernel_dir: pathlib.Path, sharp_dir: pathlib.Path | None, pairs_csv: pathlib.Path | None
) -> list[tuple[pathlib.Path, pathlib.Path, pathlib.Path | None]]:
    """``(blurred, kernel, sharp or None)`` file triples."""
    kernels = _listing(kernel_dir, KERNEL_SUFFIXES, "kernels")
    sharps = _listing(sharp_dir, IMAGE_SUFFIXES, "sharp") if sharp_dir is not None else None
    if pairs_csv is None:
        blurred = _listing(blurred_dir, IMAGE_SUFFIXES, "blurred")
        return [
            (b, _match(b, kernels, "kernel"), _match(b, sharps, "sharp image") if sharps else None) for b in blurred
        ]
    if not pairs_csv.is_file():
        raise InputError(f"pairs: {pairs_csv} does not exist")
    out = []
    with open(pairs_csv, newline="") as fh:
        reader = csv.DictReader(fh)
        needed = {"blurred", "kernel"} | ({"sharp"} if sharp_dir is not None else set())
        if not needed <= set(reader.fieldnames or []):
            raise InputError(f"pairs: {pairs_csv} needs the columns {', '.join(sorted(needed))}")
        for line, row in enumerate(reader, start=2):
            missing = [c for c in ("blurred", "kernel") if not (row.get(c) or "").strip()]  # sharp may be empty
            if missing:
                raise InputError(f"pairs: {pairs_csv} line {line}: no {', '.join(missing)}")
            triple = (
                blurred_dir / row["blurred"],
                kernel_dir / row["kernel"],
                sharp_dir / row["sharp"] if sharp_dir is not None and row.get("sharp") else None,
            )
            for path in triple:
                if path is not None and not path.is_file():
                    raise InputError(f"pairs: {pairs_csv} line {line}: {path} does not exist")
            out.append(triple)
    if not out:
        raise InputError(f"pairs: {pairs_csv} lists no pairs")
    return out


@dataclass(frozen=True)
class IngestConfig:
    """What one ``ingest`` run adds: the folders, the optional pairs CSV, the window grid of a new store."""

    blurred: str
    kernels: str
    sharp: str | None = None
    pairs: str | None = None  # CSV with columns blurred,kernel[,sharp]
    window: int | None = None  # None: the store's, or DEFAULT_WINDOW for a new store
    stride: int | None = None

    def run_record(self) -> dict[str, Any]:
        return {"blurred": self.blurred, "kernels": self.kernels, "sharp": self.sharp, "pairs": self.pairs}


def run_ingest(store: Store, config: IngestConfig, progress: Any = None, *, wait: bool = False) -> IngestResult:
    """Add every pair of ``config`` to ``store``, holding its writer lock (as ``run_synth``).

    A new store gets the window grid ``window``/``stride`` (default 228/20); an
    existing store keeps its own, and values given must match it.
    """
    bdir, kdir = pathlib.Path(config.blurred), pathlib.Path(config.kernels)
    sdir = pathlib.Path(config.sharp) if config.sharp else None
    triples = plan_pairs(bdir, kdir, sdir, pathlib.Path(config.pairs) if config.pairs else None)
    with store.lock(wait=wait, command="ingest"):
        return _ingest_locked(store, config, triples, progress)


def _ingest_locked(store: Store, config: IngestConfig, triples: list, progress: Any) -> IngestResult:
    bdir, kdir = pathlib.Path(config.blurred), pathlib.Path(config.kernels)
    sdir = pathlib.Path(config.sharp) if config.sharp else None
    window, stride = config.window, config.stride
    if store.is_store():
        manifest = store.manifest()
        grid = manifest["window"]
        window = grid["size"] if window is None else window
        stride = grid["stride"] if stride is None else stride
        store.check_grid(manifest, window, stride)
        images = store.images()
    else:
        manifest, images = None, schema.empty(schema.IMAGES)
        window = DEFAULT_WINDOW if window is None else window
        stride = DEFAULT_STRIDE if stride is None else stride
        check_window_grid(window, stride)
    capacity = manifest["kernel_capacity"] if manifest else kernel_capacity(window)
    new = NewImages(images)
    stored_blurred = new.stored("blurred")
    # a synthesised image's sharp row is a crop of its picture: not shared
    stored_sharps = new.stored("sharp", origin="ingest")
    stored_kernels = dict(new.kernels)

    # read and check everything first
    def key(folder, path):
        return f"file:{folder.name}/{path.name}"

    todo, blurred_px, kernel_px, sharp_px = [], {}, {}, {}
    for b, k, s in triples:
        bkey = key(bdir, b)
        if bkey in blurred_px:  # listed twice
            continue
        if bkey in stored_blurred:  # already in the store: only if it is this very image
            store.check_same(*stored_blurred[bkey], read_image(b), str(b), bkey)
            continue
        blurred_px[bkey] = pixels = read_image(b)
        if min(pixels.shape) < window:
            raise InputError(f"{b}: image is {pixels.shape[0]}x{pixels.shape[1]}, smaller than a window ({window} px)")
        kkey = key(kdir, k)
        if kkey not in kernel_px:
            raw = read_kernel_raw(k)
            kernel = check_kernel(raw, str(k))
            if max(kernel.shape) > window:
                raise InputError(
                    f"{k}: kernel {kernel.shape[0]}x{kernel.shape[1]} is larger than the window ({window} px)"
                )
            if abs(float(np.asarray(raw, np.float64).sum()) - 1) > 1e-3:  # after the checks, as in synth
                log.warning("%s: kernel sums to %.4g, normalised to 1", k, float(np.asarray(raw, np.float64).sum()))
            kernel_px[kkey] = fit_size(kernel, max(kernel.shape))
            if kkey in stored_kernels:
                store.check_same("kernels", stored_kernels[kkey], fit_size(kernel, capacity), str(k), kkey)
        skey = key(sdir, s) if s is not None else None
        if skey is not None and skey not in sharp_px:
            sharp_px[skey] = read_image(s)
            if skey in stored_sharps:
                store.check_same(*stored_sharps[skey], sharp_px[skey], str(s), skey)
        if skey is not None and sharp_px[skey].shape != pixels.shape:
            raise InputError(
                f"{s}: sharp image is {sharp_px[skey].shape[0]}x{sharp_px[skey].shape[1]} but "
                f"{b} is {pixels.shape[0]}x{pixels.shape[1]}"
            )
        todo.append((bkey, kkey, skey))
    if not todo:
        return IngestResult(0, len(triples))

    store.create(window, stride)
    sharp_rows = dict(stored_sharps)
    writes = []
    for bkey, kkey, skey in todo:
        kernel_index, new_kernel = new.kernel_row(kkey, capacity)
        if new_kernel:
            writes.append(("kernels", kernel_index, fit_size(kernel_px[kkey], capacity)))
        shape = blurred_px[bkey].shape
        bucket = f"{shape[0]}x{shape[1]}"
        if skey is not None and skey not in sharp_rows:
            sharp_rows[skey] = (f"sharp/{bucket}", new.take(f"sharp/{bucket}", shape))
            writes.append((*sharp_rows[skey], sharp_px[skey]))
        blurred = (f"blurred/{bucket}", new.take(f"blurred/{bucket}", shape))
        writes.append((*blurred, blurred_px[bkey]))
        new.add(
            "ingest",
            sharp_source=skey,
            kernel_source=kkey,
            blurred_source=bkey,
            blurred=blurred,
            sharp=sharp_rows[skey] if skey is not None else None,
            kernel_size=kernel_px[kkey].shape[0],
        )

    # grow every array once, then write the chunks, then the tables that make them visible
    if progress is not None and hasattr(progress, "set_total"):
        progress.set_total(len(new.rows))

    def write_pixels(arrays: dict[str, Any]) -> None:
        for name, index, pixels in writes:
            arrays[name][index] = pixels
            if progress is not None and name.startswith("blurred/"):
                progress(1)

    store.append_images(new, write_pixels, {"command": "ingest", "config": config.run_record()})
    return IngestResult(len(new.rows), len(triples) - len(todo))
