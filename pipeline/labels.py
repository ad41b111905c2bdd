"""Labels in the store: planning, shard outputs, done markers, reading and summaries.

Layout under the store::

    labels/estimator=<id>/_estimator.json          the estimator's name, version, parameters
    labels/estimator=<id>/shard-<s>-<hash>.parquet  one shard's rows (schema.LABELS), written atomically
    labels/estimator=<id>/_done/shard-<s>-<hash>.json   its done marker: images done, failures, timing
    estimates/<id>/<H>x<W>_k<ks>                    zarr (n, windows, ks, ks): the estimated kernels

A shard is a group of images with ids in ``[s*K, (s+1)*K)`` that lacked rows
when it was planned; its name hashes the planned ids, so a retry of the same
work writes the same file (never a second copy).  A shard counts as done when
its marker exists; a Parquet file without a marker (a crash between the two
writes) is adopted on the next plan.  Files whose names start with ``_`` or
``.`` are ignored by ``pyarrow.dataset``, so readers only ever see complete shards.

No Ray here: this module is the store side of labelling.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import schema
from .store import Store

__all__ = [
    "KERNEL_MARGIN",
    "ImageJob",
    "LabelPlan",
    "estimate_kernel_size",
    "label_summaries",
    "plan_labels",
    "read_labels",
    "write_shard",
]

#: estimates use the true kernel size + this margin (Cho & Lee's protocol), capped by the window
KERNEL_MARGIN = 4


def estimate_kernel_size(true_size: int, window: int) -> int:
    """Odd kernel size the estimator is asked for on windows of ``window`` px."""
    size = true_size + KERNEL_MARGIN
    size += 1 - size % 2
    return min(size, window - 1 + window % 2)


def label_dir(estimator_id: str) -> str:
    return f"labels/estimator={estimator_id}"


@dataclass(frozen=True)
class ImageJob:
    """Everything a worker needs to label one image (small; pixels are read by the worker)."""

    store_url: str
    estimator: str
    estimator_params: dict
    estimator_id: str
    image_id: int
    blurred_array: str
    blurred_index: int
    height: int
    width: int
    kernel_index: int
    kernel_size: int
    estimate_size: int
    window: int
    stride: int
    estimates_array: str


@dataclass
class LabelPlan:
    estimator_id: str
    total_images: int
    total_windows: int
    done_images: int
    done_windows: int
    shards: list[tuple[str, list[ImageJob]]] = field(default_factory=list)

    @property
    def todo_windows(self) -> int:
        from .windows import window_count

        return sum(window_count(j.height, j.width, j.window, j.stride) for _, jobs in self.shards for j in jobs)


def _markers(store: Store, estimator_id: str) -> dict[str, dict]:
    folder = store.path(label_dir(estimator_id), "_done")
    if not store.fs.exists(folder):
        return {}
    out = {}
    for path in store.fs.ls(folder, detail=False):
        name = posixpath.basename(path)
        if name.endswith(".json") and not name.startswith("."):
            out[name[: -len(".json")]] = json.loads(store.fs.cat_file(path))
    return out


def _adopt_orphans(store: Store, estimator_id: str, markers: dict[str, dict]) -> None:
    """Write the marker of any shard whose Parquet landed but whose marker did not (a crash in between)."""
    folder = store.path(label_dir(estimator_id))
    if not store.fs.exists(folder):
        return
    for path in store.fs.ls(folder, detail=False):
        name = posixpath.basename(path)
        if not (name.startswith("shard-") and name.endswith(".parquet")) or name[: -len(".parquet")] in markers:
            continue
        with store.fs.open(path, "rb") as fh:
            table = pq.read_table(fh, columns=["image_id"])
        ids = sorted(set(table["image_id"].to_pylist()))
        marker = {
            "shard": name[: -len(".parquet")],
            "images": ids,
            "failed": {},
            "windows": table.num_rows,
            "adopted": True,
        }
        store.write_bytes(f"{label_dir(estimator_id)}/_done/{marker['shard']}.json", json.dumps(marker).encode())
        markers[marker["shard"]] = marker


def done_images(store: Store, estimator_id: str) -> tuple[set[int], dict[int, str]]:
    """Images with rows for the estimator, and images whose last attempt failed (id -> error)."""
    markers = _markers(store, estimator_id)
    _adopt_orphans(store, estimator_id, markers)
    done: set[int] = set()
    failed: dict[int, str] = {}
    for marker in markers.values():
        done.update(marker["images"])
        failed.update({int(k): v for k, v in marker.get("failed", {}).items()})
    return done, {k: v for k, v in failed.items() if k not in done}


def plan_labels(store: Store, estimator: Any, shard_images: int) -> LabelPlan:
    """The shards of images that still lack rows for ``estimator`` (a registry Estimator)."""
    from .windows import window_count

    manifest = store.manifest()
    grid = manifest["window"]
    images = store.images()
    done, _ = done_images(store, estimator.id)
    shards: dict[int, list[ImageJob]] = {}
    total_windows = done_windows = 0
    for row in images.to_pylist():
        n = window_count(row["height"], row["width"], grid["size"], grid["stride"])
        total_windows += n
        if row["image_id"] in done:
            done_windows += n
            continue
        ks = estimate_kernel_size(row["kernel_size"], grid["size"])
        job = ImageJob(
            store_url=store.url, estimator=estimator.name, estimator_params=estimator.describe()["params"],
            estimator_id=estimator.id, image_id=row["image_id"], blurred_array=row["blurred_array"],
            blurred_index=row["blurred_index"], height=row["height"], width=row["width"],
            kernel_index=row["kernel_index"], kernel_size=row["kernel_size"], estimate_size=ks,
            window=grid["size"], stride=grid["stride"],
            estimates_array=f"estimates/{estimator.id}/{row['height']}x{row['width']}_k{ks}",
        )  # fmt: skip
        shards.setdefault(row["image_id"] // shard_images, []).append(job)
    plan = LabelPlan(estimator.id, images.num_rows, total_windows, len(done), done_windows)
    for s, jobs in sorted(shards.items()):
        digest = hashlib.sha1(",".join(str(j.image_id) for j in jobs).encode()).hexdigest()[:10]
        plan.shards.append((f"shard-{s:06d}-{digest}", jobs))
    return plan


def prepare_arrays(store: Store, plan: LabelPlan) -> None:
    """Create or grow the estimates arrays the plan writes to (metadata: the driver does it, once)."""
    from .windows import window_count

    needed: dict[str, tuple[int, tuple[int, ...]]] = {}
    for _, jobs in plan.shards:
        for j in jobs:
            rows = max(needed.get(j.estimates_array, (0, ()))[0], j.blurred_index + 1)
            n = window_count(j.height, j.width, j.window, j.stride)
            needed[j.estimates_array] = (rows, (n, j.estimate_size, j.estimate_size))
    for name, (rows, shape) in needed.items():
        store.ensure_array(name, rows, shape, ("blurred_index", "window_id", "ky", "kx"))


def write_estimator_description(store: Store, estimator: Any) -> None:
    path = f"{label_dir(estimator.id)}/_estimator.json"
    if not store.exists(path):
        store.write_bytes(path, json.dumps(estimator.describe(), indent=2, sort_keys=True).encode())


def write_shard(store: Store, estimator_id: str, shard: str, results: list[dict], meta: dict) -> None:
    """Atomically publish one shard: its rows (if any), then its done marker.

    ``results`` holds one dict per image: ``image_id`` and either ``similarity``
    (per-window array), ``seconds``, ``worker``, ``node``, ``device`` or ``error``.
    """
    ok = [r for r in results if "error" not in r]
    if ok:
        columns: dict[str, list] = {name: [] for name in schema.LABELS.names}
        for r in ok:
            n = len(r["similarity"])
            columns["image_id"].append(np.full(n, r["image_id"], np.int64))
            columns["window_id"].append(np.arange(n, dtype=np.int32))
            columns["similarity"].append(np.asarray(r["similarity"], np.float32))
            columns["seconds"].append(np.full(n, r["seconds"] / n, np.float32))
            for key in ("worker", "node", "device"):
                columns[key].append(np.full(n, r[key], dtype=object))
        table = pa.table({k: np.concatenate(v) for k, v in columns.items()}, schema=schema.LABELS)
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        store.write_bytes(f"{label_dir(estimator_id)}/{shard}.parquet", buffer.getvalue())
    marker = {
        **meta,
        "shard": shard,
        "images": sorted(r["image_id"] for r in ok),
        "failed": {str(r["image_id"]): r["error"] for r in results if "error" in r},
        "windows": int(sum(len(r["similarity"]) for r in ok)),
        "compute_seconds": float(sum(r["seconds"] for r in ok)),
    }
    store.write_bytes(f"{label_dir(estimator_id)}/_done/{shard}.json", json.dumps(marker, sort_keys=True).encode())


def read_labels(store: Store, estimator_id: str | None = None, threshold: float | None = None) -> pa.Table:
    """Label rows (all estimators, or one) with an ``estimator`` column; ``label`` at ``threshold`` if given."""
    import pyarrow.dataset as ds

    root = store.path("labels")
    if not store.fs.exists(root):
        table = schema.empty(schema.LABELS).append_column("estimator", pa.array([], pa.string()))
    else:
        dataset = ds.dataset(
            root,
            format="parquet",
            partitioning="hive",
            filesystem=store.fs,
            schema=schema.LABELS.append(pa.field("estimator", pa.string())),
        )
        flt = ds.field("estimator") == estimator_id if estimator_id else None
        table = dataset.to_table(filter=flt)
    if threshold is not None:
        import pyarrow.compute as pc

        table = table.append_column("label", pc.greater(table["similarity"], threshold))
    return table


def label_summaries(store: Store, threshold: float = 0.75) -> list[dict[str, Any]]:
    """Per estimator: windows done / total, positive rate at ``threshold``, throughput, time left, failures."""
    from .windows import windows_table

    root = store.path("labels")
    if not store.fs.exists(root):
        return []
    grid = store.manifest()["window"]
    images = store.images()
    total = windows_table(images, grid["size"], grid["stride"]).num_rows
    out = []
    for path in sorted(store.fs.ls(root, detail=False)):
        name = posixpath.basename(path)
        if not name.startswith("estimator="):
            continue
        estimator_id = name[len("estimator=") :]
        markers = _markers(store, estimator_id)
        _adopt_orphans(store, estimator_id, markers)
        labels = read_labels(store, estimator_id)
        done = labels.num_rows
        positives = int(np.count_nonzero(labels["similarity"].to_numpy() > threshold)) if done else 0
        starts = [m["started"] for m in markers.values() if "started" in m]
        ends = [m["finished"] for m in markers.values() if "finished" in m]
        wall = (max(ends) - min(starts)) if starts and ends else 0.0
        rate = done / wall if wall > 0 else None
        _, failed = done_images(store, estimator_id)
        out.append({
            "estimator": estimator_id,
            "done": done,
            "total": total,
            "positive_rate": positives / done if done else 0.0,
            "threshold": threshold,
            "windows_per_second": rate,
            "seconds_left": (total - done) / rate if rate else None,
            "median_similarity": float(np.median(labels["similarity"].to_numpy())) if done else None,
            "failed_images": {str(k): v for k, v in sorted(failed.items())},
        })  # fmt: skip
    return out
