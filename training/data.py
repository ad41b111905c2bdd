"""Labelled windows for training: the image-level index, the split by source image, the datasets.

The split is by *source sharp image*: every blurred image made from one sharp
picture (all its kernels, all its overlapping windows) lands on the same side,
so validation never sees a window that overlaps, or shares content with, a
training window.  Images without a known sharp source form a group each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.files import InputError
from pipeline.labels import read_labels
from pipeline.store import Store

__all__ = ["Split", "build_index", "split_by_source"]


@dataclass(frozen=True)
class Split:
    """Which source groups (and images) train and which validate."""

    train_sources: tuple[str, ...]
    val_sources: tuple[str, ...]
    train_images: tuple[int, ...]
    val_images: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "train_sources": list(self.train_sources),
            "val_sources": list(self.val_sources),
            "train_images": len(self.train_images),
            "val_images": len(self.val_images),
        }


def _source_of(images: pa.Table) -> list[str]:
    return [
        s if s is not None else f"image:{i}"
        for s, i in zip(images["sharp_source"].to_pylist(), images["image_id"].to_pylist(), strict=True)
    ]


def split_by_source(images: pa.Table, val_fraction: float, seed: int) -> Split:
    """Seeded split of the images by source sharp image; at least one group on each side."""
    if not 0 < val_fraction < 1:
        raise InputError(f"val_fraction: must be in (0, 1), got {val_fraction}")
    sources = _source_of(images)
    groups = sorted(set(sources))
    if len(groups) < 2:
        raise InputError(f"the store has {len(groups)} source image(s): a split by source needs at least 2")
    order = np.random.default_rng(seed).permutation(len(groups))
    n_val = min(len(groups) - 1, max(1, round(val_fraction * len(groups))))
    val = {groups[i] for i in order[:n_val]}
    ids = images["image_id"].to_pylist()
    return Split(
        train_sources=tuple(sorted(set(groups) - val)),
        val_sources=tuple(sorted(val)),
        train_images=tuple(i for i, s in zip(ids, sources, strict=True) if s not in val),
        val_images=tuple(i for i, s in zip(ids, sources, strict=True) if s in val),
    )


def build_index(store: Store, estimator_id: str, threshold: float) -> pa.Table:
    """One row per labelled image: where its pixels are and list columns over its windows.

    Columns: image_id, blurred_array, blurred_index, y, x, window_id, similarity,
    label (similarity > threshold, as float32).
    """
    labels = read_labels(store, estimator_id)
    if labels.num_rows == 0:
        raise InputError(f"estimator: the store has no labels for {estimator_id!r}; run goodregions label first")
    windows = store.windows().select(["image_id", "window_id", "y", "x"])
    pixels = store.images().select(["image_id", "blurred_array", "blurred_index"])
    joined = labels.select(["image_id", "window_id", "similarity"]).join(windows, ["image_id", "window_id"])
    joined = joined.join(pixels, "image_id")
    joined = joined.append_column("label", pc.cast(pc.greater(joined["similarity"], threshold), pa.float32()))
    joined = joined.sort_by([("image_id", "ascending"), ("window_id", "ascending")])
    lists = ("window_id", "y", "x", "similarity", "label")
    grouped = joined.group_by("image_id", use_threads=False).aggregate(
        [(c, "list") for c in lists] + [("blurred_array", "first"), ("blurred_index", "first")]
    )
    names = {f"{c}_list": c for c in lists} | {
        "blurred_array_first": "blurred_array",
        "blurred_index_first": "blurred_index",
    }
    grouped = grouped.rename_columns([names.get(c, c) for c in grouped.column_names])
    return grouped.sort_by("image_id")


def subset(index: pa.Table, image_ids: tuple[int, ...]) -> pa.Table:
    return index.filter(pc.is_in(index["image_id"], pa.array(image_ids, pa.int64())))
