"""What a store holds: the numbers behind ``goodregions info``, and ``info --check``'s scan."""

from __future__ import annotations

import posixpath
from typing import Any

import numpy as np
import pyarrow.compute as pc

from .store import Store

__all__ = ["check_store", "store_info"]


def store_info(url: str, threshold: float = 0.75) -> dict[str, Any]:
    """Counts, sizes and labelling progress of the store at ``url`` (JSON-serialisable)."""
    from .labels import check_threshold, label_summaries

    check_threshold(threshold)
    store = Store(url)
    manifest = store.manifest()
    images = store.images()
    windows = store.windows()
    origins = images["origin"].value_counts().to_pylist() if images.num_rows else []
    shapes = sorted(
        {f"{h}x{w}" for h, w in zip(images["height"].to_pylist(), images["width"].to_pylist(), strict=True)}
    )
    sizes = images["kernel_size"]
    summary: dict[str, Any] = {
        "url": store.url,
        "schema_version": manifest["schema_version"],
        "package_version": manifest.get("package_version"),
        "window": manifest["window"],
        "images": images.num_rows,
        "images_by_origin": {o["values"]: o["counts"] for o in origins},
        "image_sizes": shapes,
        "windows": windows.num_rows,
        "kernels": len(set(images["kernel_index"].to_pylist())),
        "kernel_sizes": f"{pc.min(sizes).as_py()}-{pc.max(sizes).as_py()}" if images.num_rows else "-",
        "sharp_images": len(
            {
                (a, i)
                for a, i in zip(images["sharp_array"].to_pylist(), images["sharp_index"].to_pylist(), strict=True)
                if a
            }
        ),
        "disk_bytes": store.disk_usage(),
        "runs": len(manifest.get("runs", [])),
        "labels": [
            {k: s[k] for k in ("estimator", "done", "total", "positive_rate", "threshold", "duplicate_rows")}
            | {"broken_shards": len(s["broken_shards"])}
            for s in label_summaries(store, threshold)
        ],
    }
    return summary


def _referenced(images: Any) -> dict[str, set[int]]:
    """Array name -> the rows that some image row points to (blurred, sharp, kernels)."""
    out: dict[str, set[int]] = {}
    for array_column, index_column in (("blurred_array", "blurred_index"), ("sharp_array", "sharp_index")):
        for name, index in zip(images[array_column].to_pylist(), images[index_column].to_pylist(), strict=True):
            if name is not None:
                out.setdefault(name, set()).add(int(index))
    out["kernels"] = set(int(i) for i in images["kernel_index"].to_pylist())
    return out


def _pixel_arrays(store: Store) -> list[str]:
    """The zarr arrays that hold images: ``blurred/*``, ``sharp/*`` and ``kernels``."""
    names = []
    for group in ("blurred", "sharp"):
        if store.exists(group):
            names += [f"{group}/{posixpath.basename(p)}" for p in store.fs.ls(store.path(group), detail=False)]
    return sorted(names) + (["kernels"] if store.exists("kernels") else [])


def check_store(url: str, fix: bool = False, wait: bool = False) -> dict[str, Any]:
    """Scan every pixel a table row points to, and the chunks no row points to.

    ``problems`` lists, per image, a blurred, sharp or kernel chunk that is missing, does not
    decode or holds non-finite values; ``broken_shards`` the labels shards that do not read.
    ``orphans`` counts chunk files (and temporary files of interrupted writes) that no row points
    to, e.g. after a full disk; ``fix`` removes them and shrinks the arrays to the rows in use.
    Reads every chunk: the cost of a full read of the store.  ``fix`` holds the store's writer
    lock (a running ``synth``'s new chunks are not orphans).
    """
    store = Store(url)
    store.manifest()
    if not fix:
        return _check(store, False)
    with store.lock(wait=wait, command="info --check --fix"):
        return _check(store, True)


def _check(store: Store, fix: bool) -> dict[str, Any]:
    from .labels import labelled_estimators, verify_shards

    images = store.images()
    referenced = _referenced(images)
    problems: list[dict[str, Any]] = []
    orphans: dict[str, int] = {}
    removed = 0
    chunks = {name: store.chunk_rows(name) for name in _pixel_arrays(store)}
    opened: dict[str, Any] = {}

    def check(image_id: int, what: str, name: str | None, index: int | None) -> None:
        if name is None:
            return
        if index not in chunks.get(name, {}):
            problems.append({"image_id": image_id, "what": what, "array": name, "row": index, "problem": "missing"})
            return
        try:
            if name not in opened:
                opened[name] = store.array(name)
            pixels = np.asarray(opened[name][int(index)])
        except Exception as exc:  # a chunk that does not decode: zstd, size, ... errors
            problem = f"does not decode ({type(exc).__name__})"
        else:
            problem = None if np.isfinite(pixels).all() else "holds non-finite values"
        if problem:
            problems.append({"image_id": image_id, "what": what, "array": name, "row": index, "problem": problem})

    for row in images.to_pylist():
        check(row["image_id"], "blurred", row["blurred_array"], row["blurred_index"])
        check(row["image_id"], "sharp", row["sharp_array"], row["sharp_index"])
        check(row["image_id"], "kernel", "kernels", row["kernel_index"])

    for name, rows in chunks.items():
        used = referenced.get(name, set())
        extra = {r: paths for r, paths in rows.items() if r not in used}
        if extra:
            orphans[name] = sum(len(p) for p in extra.values())
            if fix:
                for paths in extra.values():
                    for path in paths:
                        store.fs.rm(path)
                removed += orphans[name]
                keep = max(used) + 1 if used else 0
                arr = store.array(name, "r+")
                if arr.shape[0] > keep:
                    arr.resize((keep, *arr.shape[1:]))
    temporary = [  # labels have their own writer lock: their temporary files are left alone
        p
        for p in store.fs.find(store.root)
        if posixpath.basename(p).startswith(".tmp-") and not posixpath.relpath(p, store.root).startswith("labels/")
    ]
    if temporary:
        orphans["temporary files"] = len(temporary)
        if fix:
            for path in temporary:
                store.fs.rm(path)
            removed += len(temporary)
    broken = {}
    for estimator_id in labelled_estimators(store):
        broken.update(verify_shards(store, estimator_id)[1])
    return {
        "url": store.url,
        "images": images.num_rows,
        "problems": problems,
        "broken_shards": broken,
        "orphans": orphans,
        "removed": removed,
    }
