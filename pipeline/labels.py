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

One ``label`` run per estimator writes at a time (:func:`label_lock`).  The plan verifies
every shard it relies on (a footer that reads, the marker's row count): a broken shard is
moved to ``_broken/`` beside the others, its marker removed, and its images are labelled
again.  Readers count each (image, window) key of an estimator once, even in a store that
holds duplicates (from versions without the lock), and report broken shards by name.

No Ray here: this module is the store side of labelling.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import posixpath
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import schema
from .files import InputError
from .store import Store, kernel_capacity

log = logging.getLogger(__name__)

__all__ = [
    "KERNEL_MARGIN",
    "ImageJob",
    "LabelPlan",
    "busy_seconds",
    "estimate_kernel_size",
    "label_lock",
    "label_summaries",
    "plan_labels",
    "read_labels",
    "resolve_estimator_id",
    "verify_shards",
    "write_shard",
]

#: estimates use the true kernel size + this margin (Cho & Lee's protocol), capped by the window
KERNEL_MARGIN = 4


def estimate_kernel_size(true_size: int, window: int | None = None) -> int:
    """Odd kernel size an estimator is asked for: the true size + ``KERNEL_MARGIN``, capped by the window.

    The one home of Cho & Lee's "true size + 4" (labelling, evaluation, the demo); ``window=None``
    for a whole image.
    """
    size = true_size + KERNEL_MARGIN
    size += 1 - size % 2
    return size if window is None else min(size, kernel_capacity(window))


def label_dir(estimator_id: str) -> str:
    return f"labels/estimator={estimator_id}"


def label_lock(store: Store, estimator_id: str, wait: bool = False) -> contextlib.AbstractContextManager:
    """The writer lock of ``estimator_id``'s labels in ``store`` (one ``label`` run per estimator at a time)."""
    return store.lock(f"label-{estimator_id}", wait=wait, command=f"label {estimator_id}")


def check_threshold(threshold: float) -> float:
    if not (isinstance(threshold, int | float) and math.isfinite(threshold)):
        raise InputError(f"threshold: must be a finite number (a similarity, e.g. 0.75), got {threshold}")
    return float(threshold)


def resolve_estimator_id(store: Store, name_or_id: str) -> str:
    """The estimator id of ``name_or_id`` among those with labels in ``store``.

    An id is returned as it is; a registered name (``l0grad``) resolves to the one id of that
    name that has labels; several versions or parameter sets are an error listing them.
    """
    ids = labelled_estimators(store)
    if name_or_id in ids:
        return name_or_id
    matching = [i for i in ids if i.split("@", 1)[0] == name_or_id]
    if len(matching) == 1:
        return matching[0]
    if matching:
        raise InputError(
            f"estimator: the store has labels of several {name_or_id!r} estimators ({', '.join(matching)}); "
            "name one of these ids"
        )
    have = f"it has labels of {', '.join(ids)}" if ids else "it has no labels yet"
    raise InputError(f"estimator: the store has no labels for {name_or_id!r} ({have}); run goodregions label first")


def labelled_estimators(store: Store) -> list[str]:
    """Ids of the estimators with a labels folder in ``store``, sorted."""
    root = store.path("labels")
    if not store.fs.exists(root):
        return []
    names = [posixpath.basename(p) for p in store.fs.ls(root, detail=False)]
    return sorted(n[len("estimator=") :] for n in names if n.startswith("estimator="))


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
            try:
                out[name[: -len(".json")]] = json.loads(store.fs.cat_file(path))
            except (ValueError, UnicodeDecodeError):  # a torn marker: its shard is adopted or relabelled
                continue
    return out


def _shard_files(store: Store, estimator_id: str) -> dict[str, str]:
    """Shard name -> path of every published Parquet shard of the estimator."""
    folder = store.path(label_dir(estimator_id))
    if not store.fs.exists(folder):
        return {}
    out = {}
    for path in store.fs.ls(folder, detail=False):
        name = posixpath.basename(path)
        if name.startswith("shard-") and name.endswith(".parquet"):
            out[name[: -len(".parquet")]] = path
    return out


def _shard_rows(store: Store, path: str) -> int:
    """Rows of a shard from its footer; raises on a file that is not (or no longer) Parquet."""
    with store.fs.open(path, "rb") as fh:
        return pq.ParquetFile(fh).metadata.num_rows


def verify_shards(store: Store, estimator_id: str) -> tuple[list[str], dict[str, str]]:
    """Paths of the readable shards, and the broken ones (path -> why): no footer, or fewer rows than marked."""
    markers = _markers(store, estimator_id)
    good, broken = [], {}
    for name, path in sorted(_shard_files(store, estimator_id).items()):
        try:
            rows = _shard_rows(store, path)
        except Exception as exc:  # pyarrow: ArrowInvalid "Parquet magic bytes not found", OSError ...
            text = str(exc).strip().splitlines()
            broken[path] = f"not a readable Parquet file ({type(exc).__name__}: {text[0] if text else ''})"
            continue
        expected = markers.get(name, {}).get("windows")
        if expected is not None and rows != expected:
            broken[path] = f"holds {rows} rows, its done marker says {expected}"
            continue
        good.append(path)
    return good, broken


def _set_aside(store: Store, estimator_id: str, broken: dict[str, str]) -> None:
    """Move broken shards to ``_broken/`` (kept for inspection) and drop their markers: their images are redone."""
    for path, why in broken.items():
        name = posixpath.basename(path)[: -len(".parquet")]
        aside = store.path(label_dir(estimator_id), "_broken", f"{name}.parquet")
        store.fs.makedirs(posixpath.dirname(aside), exist_ok=True)
        store.fs.mv(path, aside)
        marker = store.path(label_dir(estimator_id), "_done", f"{name}.json")
        if store.fs.exists(marker):
            store.fs.rm(marker)
        log.warning("%s: %s; moved to %s, its images will be labelled again", path, why, aside)


def _adopt_orphans(store: Store, estimator_id: str, markers: dict[str, dict]) -> None:
    """Write the marker of any shard whose Parquet landed but whose marker did not (a crash in between)."""
    folder = store.path(label_dir(estimator_id))
    if not store.fs.exists(folder):
        return
    for path in store.fs.ls(folder, detail=False):
        name = posixpath.basename(path)
        if not (name.startswith("shard-") and name.endswith(".parquet")) or name[: -len(".parquet")] in markers:
            continue
        try:
            with store.fs.open(path, "rb") as fh:
                table = pq.read_table(fh, columns=["image_id"])
        except Exception:  # a broken orphan is left to verify_shards, which sets it aside
            continue
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
    """The shards of images that still lack rows for ``estimator`` (a registry Estimator).

    Broken shards are set aside first (:func:`verify_shards`), so their images are planned again.
    Hold :func:`label_lock` from planning to the end of the run.
    """
    from .windows import window_count

    manifest = store.manifest()
    grid = manifest["window"]
    images = store.images()
    _, broken = verify_shards(store, estimator.id)
    _set_aside(store, estimator.id, broken)
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
        plan.shards.append((shard_name(s, jobs), jobs))
    return plan


def shard_name(index: int, jobs: list[ImageJob]) -> str:
    """``shard-<index>-<hash of its image ids>``: the same work always gets the same name."""
    digest = hashlib.sha1(",".join(str(j.image_id) for j in jobs).encode()).hexdigest()[:10]
    return f"shard-{index:06d}-{digest}"


def without_done(store: Store, plan: LabelPlan) -> LabelPlan:
    """``plan`` less the images that have rows by now (another run finished them after it was made)."""
    done, _ = done_images(store, plan.estimator_id)
    if not any(j.image_id in done for _, jobs in plan.shards for j in jobs):
        return plan
    out = LabelPlan(plan.estimator_id, plan.total_images, plan.total_windows, len(done), plan.done_windows)
    for name, jobs in plan.shards:
        left = [j for j in jobs if j.image_id not in done]
        if left:
            out.shards.append((name if len(left) == len(jobs) else shard_name(int(name.split("-")[1]), left), left))
    return out


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


def read_labels(
    store: Store,
    estimator_id: str | None = None,
    threshold: float | None = None,
    *,
    broken: str = "raise",
    duplicates: dict[str, int] | None = None,
) -> pa.Table:
    """Label rows (all estimators, or one) with an ``estimator`` column; ``label`` at ``threshold`` if given.

    Each (image, window, estimator) key appears once: of several rows for a key (a store written
    without the lock) the first, in shard-name order, is kept; ``duplicates`` (a dict) receives
    the count of rows left out per estimator.  A broken shard raises an :class:`InputError` naming
    it (``broken="raise"``) or is left out (``"skip"``).
    """
    import pyarrow.dataset as ds

    if threshold is not None:
        check_threshold(threshold)
    ids = [estimator_id] if estimator_id else labelled_estimators(store)
    files: list[str] = []
    for eid in ids:
        good, bad = verify_shards(store, eid)
        if bad and broken == "raise":
            path, why = sorted(bad.items())[0]
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise InputError(f"{path}: broken labels shard{more}: {why}; run goodregions label to relabel its images")
        files += good
    full = schema.LABELS.append(pa.field("estimator", pa.string()))
    if not files:
        table = schema.empty(full)
    else:
        dataset = ds.dataset(
            files,
            format="parquet",
            filesystem=store.fs,
            partitioning=ds.partitioning(pa.schema([pa.field("estimator", pa.string())]), flavor="hive"),
            partition_base_dir=store.path("labels"),
            schema=full,
        )
        table = dataset.to_table()
    table = _first_per_key(table, duplicates)
    if threshold is not None:
        import pyarrow.compute as pc

        table = table.append_column("label", pc.greater(table["similarity"], threshold))
    return table


def _first_per_key(table: pa.Table, duplicates: dict[str, int] | None) -> pa.Table:
    """Keep the first row of each (estimator, image, window) key, in the table's order."""
    if table.num_rows == 0:
        return table
    estimators, codes = np.unique(table["estimator"].to_numpy(zero_copy_only=False), return_inverse=True)
    keys = np.stack([codes, table["image_id"].to_numpy(), table["window_id"].to_numpy().astype(np.int64)], axis=1)
    _, first = np.unique(keys, axis=0, return_index=True)
    if len(first) == table.num_rows:
        return table
    first.sort()
    if duplicates is not None:
        kept = np.bincount(codes[first], minlength=len(estimators))
        total = np.bincount(codes, minlength=len(estimators))
        for name, extra in zip(estimators, total - kept, strict=True):
            if extra:
                duplicates[str(name)] = duplicates.get(str(name), 0) + int(extra)
    return table.take(first)


def busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of the shards' (started, finished) intervals: the time some run was labelling.

    Pauses between runs (a stopped run resumed the next day) do not count, and shards labelled
    at the same time count once, so done / busy is the rate a resumed run will go at.

    >>> busy_seconds([(0, 10), (5, 12), (100, 110)])
    22
    >>> busy_seconds([])
    0
    """
    total, end = 0, None
    for start, finish in sorted(intervals):
        if end is None or start > end:
            total, end = total + (finish - start), finish
        elif finish > end:
            total, end = total + (finish - end), finish
    return total


def label_summaries(store: Store, threshold: float = 0.75) -> list[dict[str, Any]]:
    """Per estimator: windows done / total, positive rate at ``threshold``, similarity quartiles,
    throughput, time left, failures, duplicate rows and broken shards.

    Refuses a location that is not a store, as every other reader does.
    """
    from .windows import windows_table

    check_threshold(threshold)
    grid = store.manifest()["window"]
    images = store.images()
    total = windows_table(images, grid["size"], grid["stride"]).num_rows
    out = []
    for estimator_id in labelled_estimators(store):
        markers = _markers(store, estimator_id)
        _adopt_orphans(store, estimator_id, markers)
        duplicates: dict[str, int] = {}
        labels = read_labels(store, estimator_id, broken="skip", duplicates=duplicates)
        _, broken = verify_shards(store, estimator_id)
        done = labels.num_rows
        sims = labels["similarity"].to_numpy()
        positives = int(np.count_nonzero(sims > threshold)) if done else 0
        timed = [(m["started"], m["finished"]) for m in markers.values() if "started" in m and "finished" in m]
        wall = busy_seconds(timed)
        rate = done / wall if wall > 0 else None
        _, failed = done_images(store, estimator_id)
        quartiles = [float(q) for q in np.quantile(sims, [0.25, 0.5, 0.75])] if done else None
        out.append({
            "estimator": estimator_id,
            "done": done,
            "total": total,
            "positive_rate": positives / done if done else 0.0,
            "threshold": threshold,
            "windows_per_second": rate,
            "seconds_left": max(total - done, 0) / rate if rate else None,
            "median_similarity": quartiles[1] if quartiles else None,
            "similarity_quartiles": quartiles,
            "failed_images": {str(k): v for k, v in sorted(failed.items())},
            "duplicate_rows": duplicates.get(estimator_id, 0),
            "broken_shards": dict(sorted(broken.items())),
        })  # fmt: skip
    return out
