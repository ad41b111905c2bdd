"""``evaluate``: compare region selectors by the deblurred images they lead to.

For every image and every selector: choose a region, estimate the kernel there
with the evaluation estimator, deconvolve the whole image, and score the result
against the ground truth with Levin et al.'s error ratio (the same non-blind
deconvolver for the estimated and the true kernel; SSD at the best alignment
within +-5 px, 15 px border cropped) and PSNR.  Images run as Ray tasks.

Selectors (``SELECTORS``): ``cnn`` (the trained classifier's top window),
``fergus``, ``xu-jia``, ``hu-yang`` (baselines, see ``training.selectors``),
``whole`` (the whole image), ``random`` (a seeded window), ``oracle`` (the window
whose estimate is closest to the true kernel: the upper bound).
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.files import InputError, atomic_path

__all__ = ["SELECTORS", "EvalJob", "evaluate_image", "run_evaluate", "summary_table"]

SELECTORS = ("cnn", "fergus", "xu-jia", "hu-yang", "whole", "random", "oracle")
ER_LEVELS = (1.5, 2.0, 2.5, 3.0, 4.0)

RESULTS = pa.schema([
    pa.field("image", pa.string(), nullable=False),
    pa.field("image_id", pa.int64()),
    pa.field("selector", pa.string(), nullable=False),
    pa.field("y", pa.int32(), nullable=False),
    pa.field("x", pa.int32(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("kernel_size", pa.int32(), nullable=False),
    pa.field("similarity", pa.float32()),  # null when the true kernel is unknown
    pa.field("error_ratio", pa.float32()),
    pa.field("psnr", pa.float32()),
    pa.field("seconds", pa.float32(), nullable=False),
])  # fmt: skip


@dataclass(frozen=True)
class EvalJob:
    """One image to evaluate (pixels are read by the worker)."""

    name: str
    model_dir: str
    selectors: tuple[str, ...]
    estimator: str
    estimator_params: dict
    window: int
    stride: int
    kernel_size: int  # used when the true kernel is unknown
    seed: int
    out_dir: str
    image_id: int | None = None
    store_url: str | None = None
    blurred: tuple[str, int] | None = None  # (array, row) in the store
    sharp: tuple[str, int] | None = None
    kernel: tuple[int, int] | None = None  # (kernel_index, kernel_size)
    path: str | None = None  # an image file without ground truth
    oracle_similarity: tuple[float, ...] | None = field(default=None, compare=False)  # labels, when available


def _load(job: EvalJob) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    if job.path is not None:
        from pipeline.files import read_image

        return read_image(job.path), None, None
    from pipeline.store import Store

    store = Store(job.store_url)
    blurred = np.asarray(store.array(job.blurred[0])[job.blurred[1]], np.float32)
    sharp = np.asarray(store.array(job.sharp[0])[job.sharp[1]], np.float32) if job.sharp else None
    truth = store.kernel(*job.kernel) if job.kernel else None
    return blurred, sharp, truth


def _boxes(
    job: EvalJob, image: np.ndarray, truth: np.ndarray | None, estimate: Any, ks: int
) -> dict[str, tuple[int, int, int, int]]:
    """The region each selector picks, as ``(y, x, height, width)``."""
    from kernels_gpu.similarity import similarity
    from pipeline.windows import grid

    from . import selectors as sel
    from .select import cnn_scores, load_classifier

    corners = grid(*image.shape, job.window, job.stride)
    size = job.window
    picked: dict[str, int] = {}
    for name in job.selectors:
        if name == "cnn":
            picked[name] = sel.best_by_scores(cnn_scores(load_classifier(job.model_dir, "cpu"), image, corners, size))
        elif name == "fergus":
            picked[name] = sel.best_by_scores(sel.fergus_scores(image, corners, size))
        elif name == "xu-jia":
            picked[name] = sel.best_by_scores(sel.xu_jia_scores(image, corners, size))
        elif name == "hu-yang":
            fitted = json.loads((pathlib.Path(job.model_dir) / "hu_yang.json").read_text())
            model = sel.LogisticRegression.from_dict(fitted["model"])
            picked[name] = sel.best_by_scores(model.decision_function(sel.gabor_features(image, corners, size)))
        elif name == "random":
            picked[name] = sel.random_window(corners, job.seed, job.image_id if job.image_id is not None else job.name)
        elif name == "oracle" and truth is not None:
            if job.oracle_similarity is not None and len(job.oracle_similarity) == len(corners):
                scores = np.asarray(job.oracle_similarity)
            else:
                views = np.lib.stride_tricks.sliding_window_view(image, (size, size))
                scores = similarity(estimate(views[corners[:, 0], corners[:, 1]], ks), truth)
            picked[name] = sel.best_by_scores(np.asarray(scores))
    boxes = {name: (int(corners[i][0]), int(corners[i][1]), size, size) for name, i in picked.items()}
    if "whole" in job.selectors:
        boxes["whole"] = (0, 0, int(image.shape[0]), int(image.shape[1]))
    return boxes


def evaluate_image(job: EvalJob, device: str = "cpu") -> dict[str, Any]:
    """Every selector on one image: rows of ``RESULTS`` (metrics null without ground truth)."""
    import time

    from kernels_gpu import estimators
    from kernels_gpu.backend import to_device, to_numpy
    from kernels_gpu.deconv import deconvolve
    from kernels_gpu.metrics import aligned_ssd, psnr
    from kernels_gpu.similarity import similarity
    from pipeline.files import write_png

    image, sharp, truth = _load(job)
    est = estimators.get(job.estimator, **job.estimator_params)
    ks = min(truth.shape[0] + 4, job.window - 1 + job.window % 2) if truth is not None else job.kernel_size

    def estimate(windows: np.ndarray, size: int) -> np.ndarray:
        return to_numpy(est(to_device(np.asarray(windows, np.float32), "gpu" if device == "gpu" else "cpu"), size))

    boxes = _boxes(job, image, truth, estimate, ks)
    reference_ssd = None
    if truth is not None and sharp is not None:
        reference_ssd = float(aligned_ssd(deconvolve(image, truth), sharp))
    rows, cache = [], {}
    for name, box in boxes.items():
        start = time.perf_counter()
        y, x, h, w = box
        if box not in cache:
            kernel = estimate(image[None, y : y + h, x : x + w], ks)[0]
            cache[box] = (kernel, deconvolve(image, kernel))
        kernel, restored = cache[box]
        row = {
            "image": job.name,
            "image_id": job.image_id,
            "selector": name,
            "y": y,
            "x": x,
            "height": h,
            "width": w,
            "kernel_size": ks,
            "similarity": None,
            "error_ratio": None,
            "psnr": None,
        }
        if truth is not None:
            row["similarity"] = float(similarity(kernel, truth))
        if reference_ssd is not None:
            row["error_ratio"] = float(aligned_ssd(restored, sharp)) / reference_ssd
            row["psnr"] = float(psnr(restored, sharp, crop=15))
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
        if name == "cnn" or truth is None:
            write_png(pathlib.Path(job.out_dir) / "deblurred" / f"{pathlib.Path(job.name).stem}_{name}.png", restored)
    return {"rows": rows}


def summary_table(results: pa.Table) -> str:
    """Markdown: per selector, success rate at ER <= 1.5 .. 4, median ER, mean PSNR, mean similarity."""
    known = results.filter(pc.is_valid(results["error_ratio"])).to_pandas()
    lines = [
        "| selector | images | "
        + " | ".join(f"ER ≤ {e:g}" for e in ER_LEVELS)
        + " | median ER | mean PSNR (dB) | mean similarity |",
        "|---" * (5 + len(ER_LEVELS)) + "|",
    ]
    for name in [s for s in SELECTORS if s in set(known["selector"])]:
        part = known[known["selector"] == name]
        rates = " | ".join(f"{np.mean(part['error_ratio'] <= e):.2f}" for e in ER_LEVELS)
        lines.append(
            f"| {name} | {len(part)} | {rates} | {part['error_ratio'].median():.2f} | "
            f"{part['psnr'].mean():.2f} | {part['similarity'].mean():.3f} |"
        )
    return "\n".join(lines)


def plot_curves(results: pa.Table, er_path: pathlib.Path, psnr_path: pathlib.Path) -> bool:
    """The paper's Fig. 8 (cumulative error ratio per selector) and Fig. 9 (PSNR per image); False if no data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = results.filter(pc.is_valid(results["error_ratio"])).to_pandas()
    if frame.empty:  # nothing with ground truth: no curve to draw
        return False
    names = [s for s in SELECTORS if s in set(frame["selector"])]
    levels = np.linspace(1, 5, 161)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name in names:
        ers = frame.loc[frame["selector"] == name, "error_ratio"].to_numpy()
        ax.plot(
            levels,
            [np.mean(ers <= v) for v in levels],
            label=name,
            linewidth=2 if name == "cnn" else 1.2,
            linestyle="--" if name in ("oracle", "random") else "-",
        )
    ax.set_xlabel("error ratio")
    ax.set_ylabel("fraction of images with error ratio ≤ x")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(er_path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)

    images = sorted(set(frame["image"]))
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(images) * len(names) / 3), 4.5))
    width = 0.8 / max(len(names), 1)
    for k, name in enumerate(names):
        part = frame[frame["selector"] == name].set_index("image")["psnr"]
        ax.bar(np.arange(len(images)) + k * width, [part.get(i, np.nan) for i in images], width, label=name)
    ax.set_xticks(np.arange(len(images)) + 0.4 - width / 2)
    ax.set_xticklabels([pathlib.Path(i).stem for i in images], rotation=90, fontsize=7)
    ax.set_ylabel("PSNR (dB)")
    low = np.nanmin(frame["psnr"]) if len(frame) else 0
    ax.set_ylim(max(0, low - 2), None)
    ax.legend(fontsize=7, ncol=min(len(names), 4))
    fig.tight_layout()
    with atomic_path(psnr_path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return True


def plan_jobs(
    source: str,
    model_dir: str,
    selectors: tuple[str, ...],
    estimator: Any,
    out: str,
    window: int,
    stride: int,
    kernel_size: int,
    seed: int,
    only_sources: set[str] | None = None,
) -> list[EvalJob]:
    """Jobs for every image of a store (ground truth where known) or of a folder (none).

    ``only_sources`` keeps the store images made from those sharp sources (e.g. a
    model's validation split).
    """
    from pipeline.files import IMAGE_SUFFIXES
    from pipeline.labels import read_labels
    from pipeline.store import Store

    common = {
        "model_dir": model_dir,
        "selectors": selectors,
        "estimator": estimator.name,
        "estimator_params": estimator.describe()["params"],
        "window": window,
        "stride": stride,
        "kernel_size": kernel_size,
        "seed": seed,
        "out_dir": out,
    }
    folder = pathlib.Path(source)
    store = Store(source)
    if not store.is_store():
        if not folder.is_dir():
            raise InputError(f"{source}: neither a goodregions store nor a folder of images")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputError(f"{source}: holds no PNG, JPEG or TIFF images")
        return [EvalJob(name=p.name, path=str(p), **common) for p in files]
    grid = store.manifest()["window"]
    labels = None
    if (grid["size"], grid["stride"]) == (window, stride):
        table = read_labels(store, estimator.id)
        labels = {}
        for image_id, window_id, sim in zip(
            *(table[c].to_pylist() for c in ("image_id", "window_id", "similarity")), strict=True
        ):
            labels.setdefault(image_id, {})[window_id] = sim
    jobs = []
    for row in store.images().to_pylist():
        if min(row["height"], row["width"]) < window:
            continue
        if only_sources is not None and (row["sharp_source"] or f"image:{row['image_id']}") not in only_sources:
            continue
        known = labels.get(row["image_id"]) if labels else None
        oracle = tuple(known[i] for i in sorted(known)) if known else None
        name = f"{row['image_id']:05d}_{pathlib.Path(row['blurred_source'] or row['sharp_source'] or '').stem}"
        jobs.append(EvalJob(
            name=name, image_id=row["image_id"], store_url=store.url,
            blurred=(row["blurred_array"], row["blurred_index"]),
            sharp=(row["sharp_array"], row["sharp_index"]) if row["sharp_array"] else None,
            kernel=(row["kernel_index"], row["kernel_size"]), oracle_similarity=oracle, **common,
        ))  # fmt: skip
    return jobs


def run_evaluate(jobs: list[EvalJob], out: str, options: Any, progress: Any = None) -> tuple[pa.Table, list[str]]:
    """Run the jobs on Ray; write results.parquet, results.md, er_curve.png, psnr.png; return (results, errors)."""
    import pyarrow.parquet as pq

    from pipeline.distributed import map_jobs

    folder = pathlib.Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    outcomes = map_jobs(evaluate_image, jobs, options, progress)
    rows, errors = [], []
    for job, outcome in zip(jobs, outcomes, strict=True):
        if "error" in outcome:
            errors.append(f"{job.name}: {outcome['error']}")
        else:
            rows.extend(outcome["rows"])
    results = pa.Table.from_pylist(rows, schema=RESULTS)
    with atomic_path(folder / "results.parquet") as tmp:
        pq.write_table(results, tmp)
    table = summary_table(results)
    unknown = len({r["image"] for r in rows if r["error_ratio"] is None})
    known = len({r["image"] for r in rows if r["error_ratio"] is not None})
    report = (
        f"# Evaluation\n\n{known} images with ground truth scored; {unknown} without ground truth were ranked "
        f"and deblurred but left out of the numbers; {len(errors)} failed.\n\n{table}\n"
    )
    with atomic_path(folder / "results.md") as tmp:
        tmp.write_text(report)
    plot_curves(results, folder / "er_curve.png", folder / "psnr.png")
    return results, errors
