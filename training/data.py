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

__all__ = ["Split", "build_index", "check_pixels", "collate_images", "split_by_source", "subset"]


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


def split_by_source(
    images: pa.Table, val_fraction: float, seed: int, val_sources: tuple[str, ...] | None = None
) -> Split:
    """Seeded split of the images by source sharp image; at least one group on each side.

    ``val_sources``: validate on exactly these source groups (their ``sharp_source`` keys,
    e.g. ``file:kodak/kodim08.png``) instead of a seeded ``val_fraction`` of them.
    """
    sources = _source_of(images)
    groups = sorted(set(sources))
    if len(groups) < 2:
        raise InputError(f"the store has {len(groups)} source image(s): a split by source needs at least 2")
    if val_sources:
        unknown = sorted(set(val_sources) - set(groups))
        if unknown:
            raise InputError(f"val_sources: not sources of the store's labelled images: {', '.join(unknown)}")
        val = set(val_sources)
        if val == set(groups):
            raise InputError("val_sources: every source is held out; none is left to train on")
    else:
        if not 0 < val_fraction < 1:
            raise InputError(f"val_fraction: must be in (0, 1), got {val_fraction}")
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


def collate_images(batch: dict[str, Any], window: int) -> dict[str, Any]:
    """Whole-image rows (see ``pipeline.ray.training_input.ImageLoader``) as one-pass scorer input.

    Returns ``images`` ``(B, 1, H, W)`` float32 tensor (images smaller than the batch's
    largest are zero-padded at the bottom and right, zero being their mean), ``boxes``
    ``(N, 5)`` rows ``(image in batch, x0, y0, x1, y1)`` for every window of every image,
    and the windows' ``label``, ``similarity``, ``image_id`` and ``window_id`` ``(N,)``.

    >>> import numpy as np
    >>> row = {"image": [np.zeros((8, 8), np.float32)], "y": [np.array([0, 2])], "x": [np.array([4, 0])],
    ...        "label": [np.array([1.0, 0.0])], "similarity": [np.array([0.9, 0.1])],
    ...        "image_id": np.array([7]), "window_id": [np.array([0, 1])]}
    >>> out = collate_images(row, 4)
    >>> out["images"].shape, out["boxes"].tolist(), out["image_id"].tolist()
    (torch.Size([1, 1, 8, 8]), [[0.0, 4.0, 0.0, 8.0, 4.0], [0.0, 0.0, 2.0, 4.0, 6.0]], [7, 7])
    """
    import torch

    images = [np.asarray(image, np.float32) for image in batch["image"]]
    height, width = max(i.shape[0] for i in images), max(i.shape[1] for i in images)
    stacked = np.zeros((len(images), 1, height, width), np.float32)
    boxes, ids = [], []
    for b, image in enumerate(images):
        stacked[b, 0, : image.shape[0], : image.shape[1]] = image
        y, x = (np.asarray(batch[c][b], np.float32) for c in ("y", "x"))
        boxes.append(np.stack([np.full_like(y, b), x, y, x + window, y + window], axis=1))
        ids.append(np.full(len(y), batch["image_id"][b], np.int64))

    def flat(column: str, dtype: type) -> torch.Tensor:
        return torch.from_numpy(np.concatenate([np.asarray(v, dtype) for v in batch[column]]))

    return {
        "images": torch.from_numpy(stacked),
        "boxes": torch.from_numpy(np.concatenate(boxes)),
        "label": flat("label", np.float32),
        "similarity": flat("similarity", np.float32),
        "image_id": torch.from_numpy(np.concatenate(ids)),
        "window_id": flat("window_id", np.int64),
    }


def check_pixels(store: Store, index: pa.Table) -> None:
    """Refuse to train on an image whose blurred pixels are missing (a deleted chunk) or not finite.

    Reads each indexed image once, in the driver, before any worker starts: a model trained on
    NaN pixels has NaN weights.
    """
    arrays: dict[str, Any] = {}
    columns = (index[c].to_pylist() for c in ("image_id", "blurred_array", "blurred_index"))
    for image_id, name, row in zip(*columns, strict=True):
        if name not in arrays:
            arrays[name] = store.array(name)
        try:
            pixels = np.asarray(arrays[name][row])
        except Exception as exc:  # a chunk that does not decode
            raise InputError(f"image {image_id}: blurred pixels do not read ({name}[{row}]: {exc})") from None
        if not np.isfinite(pixels).all():
            raise InputError(
                f"image {image_id}: blurred pixels missing or not finite ({name}[{row}]; goodregions info --check)"
            )
