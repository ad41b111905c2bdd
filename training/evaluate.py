"""``evaluate``: compare region selectors by the deblurred images they lead to.

For every image and every selector: choose a region, estimate the kernel there
with the evaluation estimator, deconvolve the whole image, and score the result
against the ground truth with Levin et al.'s error ratio (the same non-blind
deconvolver for the estimated and the true kernel; SSD at the best alignment
within +-5 px, 15 px border cropped) and PSNR.  The selectors are those of the
registry :mod:`training.selectors`.  Each row also records the seconds the
selector spent scoring windows, estimating the kernel and deconvolving, as if it
ran alone (work shared with another selector is timed once and counted for each).
Images run as Ray tasks.

A Python user calls :func:`evaluation_config` (checks the selectors against the
model folder, reads the model's estimator and validation split), then
:func:`plan_jobs` and :func:`run_evaluate`; the ``evaluate`` command does just that.
"""

from __future__ import annotations

import pathlib
import re
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.files import InputError, atomic_path

from . import selectors as sel

__all__ = [
    "RESULTS",
    "SELECTORS",
    "EvalConfig",
    "EvalJob",
    "check_selectors",
    "evaluate_image",
    "evaluation_config",
    "joint_estimator",
    "plan_jobs",
    "portable_name",
    "run_evaluate",
    "summary_table",
]

#: the selectors compared unless told otherwise (the registry's default)
SELECTORS = sel.DEFAULT
ER_LEVELS = (1.5, 2.0, 2.5, 3.0, 4.0)

RESULTS = pa.schema([
    pa.field("image", pa.string(), nullable=False),
    pa.field("image_id", pa.int64()),
    pa.field("selector", pa.string(), nullable=False),
    pa.field("y", pa.int32(), nullable=False),  # the region the kernel came from (the best of a joint set)
    pa.field("x", pa.int32(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("regions", pa.int32(), nullable=False),  # windows the kernel was estimated from (K of joint/consensus)
    pa.field("kernel_size", pa.int32(), nullable=False),
    pa.field("similarity", pa.float32()),  # null when the true kernel is unknown
    pa.field("error_ratio", pa.float32()),
    pa.field("psnr", pa.float32()),
    pa.field("scoring_seconds", pa.float32(), nullable=False),  # scoring the windows (oracle: its estimates)
    pa.field("estimation_seconds", pa.float32(), nullable=False),  # the kernel from the chosen region(s)
    pa.field("deconvolution_seconds", pa.float32(), nullable=False),  # deconvolving the whole image
    pa.field("seconds", pa.float32(), nullable=False),  # the three together
])  # fmt: skip

_UNPORTABLE = re.compile(r"[^A-Za-z0-9._-]+")


def portable_name(name: str) -> str:
    """A file name that works on every file system, in zip files and in shells: letters, digits, ``-``, ``_``, ``.``.

    Every run of other characters becomes one ``_`` (``00008_builtin:camera_cnn.png`` ->
    ``00008_builtin_camera_cnn.png``); a name that would start with ``-`` or ``.`` gets a ``_`` in front.
    """
    portable = _UNPORTABLE.sub("_", name)
    return "_" + portable if not portable or portable[0] in "-." else portable


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate: the images of ``source`` (a store or a folder), the selectors, the estimator."""

    source: str
    model_dir: str
    out: str
    estimator: Any  # a kernels_gpu.estimators.Estimator
    window: int
    stride: int
    selectors: tuple[str, ...] = SELECTORS
    kernel_size: int = 31  # for images whose true kernel is unknown (else the true size + 4)
    seed: int = 0  # of the random selector
    only_sources: frozenset[str] | None = None  # keep the store images made from these sharp sources


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


def check_selectors(names: Any, model_dir: str | pathlib.Path) -> tuple[str, ...]:
    """The selector names, checked: registered (or ``S-joint-K`` / ``S-consensus-K``), their model files present.

    Raises :class:`~pipeline.files.InputError` naming ``selectors``.
    """
    chosen = tuple(dict.fromkeys(n.strip() for n in names if n.strip()))
    if not chosen:
        raise InputError(f"selectors: none given; choose from {', '.join(sel.available())}")
    for name in chosen:
        try:
            selector = sel.get(name)
        except KeyError as exc:
            raise InputError(f"selectors: {exc.args[0]}") from None
        if selector.model_file and not (pathlib.Path(model_dir) / selector.model_file).is_file():
            raise InputError(
                f"selectors: {name} needs {pathlib.Path(model_dir) / selector.model_file} (written by train)"
            )
    return chosen


def evaluation_config(
    source: str,
    model_dir: str,
    out: str,
    selectors: Any = SELECTORS,
    estimator: str | None = None,
    window: int | None = None,
    stride: int | None = None,
    kernel_size: int = 31,
    seed: int = 0,
    split: str = "all",
) -> EvalConfig:
    """The checked configuration of an evaluation: the model's estimator, grid and (``split="val"``) sources.

    ``selectors``: names (see :func:`check_selectors`); ``estimator``: a registered name, default the
    model's; ``window``/``stride``: default the model's; ``split``: ``"all"`` images or only ``"val"``,
    those of the model's validation sources.  Raises :class:`~pipeline.files.InputError` naming the field.
    """
    from .select import estimator_for, load_classifier

    chosen = check_selectors(selectors, model_dir)
    if split not in ("all", "val"):
        raise InputError(f"split: must be 'all' or 'val', got {split!r}")
    if kernel_size < 3 or kernel_size % 2 == 0:
        raise InputError(f"kernel_size: must be odd and >= 3, got {kernel_size}")
    classifier = load_classifier(model_dir, "cpu")
    est = estimator_for(classifier.info, estimator)
    joint = [n for n in chosen if sel.get(n).combine == "joint"]
    if joint and joint_estimator(est) is None:
        raise InputError(f"selectors: {', '.join(joint)} need joint estimation, which {est.name} does not have")
    only = frozenset(classifier.info["split"]["val_sources"]) if split == "val" else None
    return EvalConfig(
        source=source,
        model_dir=str(model_dir),
        out=str(out),
        estimator=est,
        window=window or classifier.window,
        stride=stride or classifier.stride,
        selectors=chosen,
        kernel_size=kernel_size,
        seed=seed,
        only_sources=only,
    )


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


def joint_estimator(estimator: Any) -> Any:
    """``joint(windows (K, h, w), kernel_size) -> (k, k)``: the estimator's joint estimation, or None.

    One kernel shared by K windows of one image (the ``-joint-K`` selectors):
    :meth:`kernels_gpu.estimators.Estimator.joint`, when the estimator registered one.
    """
    return estimator.joint if getattr(estimator, "run_joint", None) is not None else None


def _timed(fn: Any, *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - start


def evaluate_image(job: EvalJob, device: str = "cpu") -> dict[str, Any]:
    """Every selector on one image: rows of ``RESULTS`` (metrics null without ground truth)."""
    from kernels_gpu import estimators
    from kernels_gpu.backend import to_device, to_numpy
    from kernels_gpu.deconv import deconvolve
    from kernels_gpu.metrics import aligned_ssd, psnr
    from kernels_gpu.similarity import similarity
    from pipeline.files import write_png
    from pipeline.labels import estimate_kernel_size
    from pipeline.windows import grid

    image, sharp, truth = _load(job)
    est = estimators.get(job.estimator, **job.estimator_params)
    ks = estimate_kernel_size(truth.shape[0], job.window) if truth is not None else job.kernel_size
    where = "gpu" if device == "gpu" else "cpu"

    def estimate(windows: np.ndarray, size: int) -> np.ndarray:
        return to_numpy(est(to_device(np.asarray(windows, np.float32), where), size))

    joint = joint_estimator(est)
    context = sel.Context(
        image=image,
        corners=grid(*image.shape, job.window, job.stride),
        size=job.window,
        kernel_size=ks,
        estimate=estimate,
        estimate_joint=None if joint is None else lambda w, k: to_numpy(joint(to_device(w, where), k)),
        model_dir=job.model_dir,
        truth=truth,
        labels=None if job.oracle_similarity is None else np.asarray(job.oracle_similarity),
        seed=job.seed,
        key=job.image_id if job.image_id is not None else job.name,
    )
    reference_ssd = None
    if truth is not None and sharp is not None:
        reference_ssd = float(aligned_ssd(deconvolve(image, truth), sharp))
    # work two selectors share (cnn's scores, one box's kernel) is done once; its seconds count for each
    scored: dict[str, tuple[Any, float]] = {}
    estimated: dict[tuple, tuple[Any, float]] = {}
    restored: dict[tuple, tuple[np.ndarray, float]] = {}
    rows = []
    for name in job.selectors:
        selector = sel.get(name)
        if selector.needs == "truth" and truth is None:
            continue
        if selector.scores is None:  # the whole image: nothing to score
            scored[selector.base] = (None, 0.0)
        elif selector.base not in scored:  # a model's loading is not scoring: its seconds are taken out
            loading = sum(context.loading_seconds.values())
            scores, seconds = _timed(selector.scores, context)
            scored[selector.base] = (scores, seconds - (sum(context.loading_seconds.values()) - loading))
        scores, scoring_s = scored[selector.base]
        boxes = sel.choose(selector, context, scores)
        key = (selector.combine, tuple(boxes))
        if key not in estimated:
            estimated[key] = _timed(sel.estimate, selector, context, boxes)
        (kernel, index), estimation_s = estimated[key]
        if key not in restored:
            restored[key] = _timed(deconvolve, image, kernel)
        deblurred, deconvolution_s = restored[key]
        box = boxes[index]
        row = {
            "image": job.name,
            "image_id": job.image_id,
            "selector": name,
            "y": box.y,
            "x": box.x,
            "height": box.height,
            "width": box.width,
            "regions": len(boxes),
            "kernel_size": ks,
            "similarity": None if truth is None else float(similarity(kernel, truth)),
            "error_ratio": None,
            "psnr": None,
            "scoring_seconds": scoring_s,
            "estimation_seconds": estimation_s,
            "deconvolution_seconds": deconvolution_s,
            "seconds": scoring_s + estimation_s + deconvolution_s,
        }
        if reference_ssd is not None:
            row["error_ratio"] = float(aligned_ssd(deblurred, sharp)) / reference_ssd
            row["psnr"] = float(psnr(deblurred, sharp, crop=15))
        rows.append(row)
        if name == "cnn" or truth is None:
            file = portable_name(f"{pathlib.Path(job.name).stem}_{name}.png")
            write_png(pathlib.Path(job.out_dir) / "deblurred" / file, deblurred)
    return {"rows": rows}


def summary_table(results: pa.Table) -> str:
    """Markdown: per selector, success rate at ER <= 1.5 .. 4, median ER, mean PSNR, mean similarity, median seconds.

    The seconds are medians over the images of the selector's scoring and of its kernel estimation
    (the cost that grows with the region; deconvolving the whole image is the same for every selector).
    """
    known = results.filter(pc.is_valid(results["error_ratio"])).to_pandas()
    lines = [
        "| selector | images | "
        + " | ".join(f"ER ≤ {e:g}" for e in ER_LEVELS)
        + " | median ER | mean PSNR (dB) | mean similarity | scoring s | estimation s |",
        "|---" * (7 + len(ER_LEVELS)) + "|",
    ]
    for name in dict.fromkeys(known["selector"]):
        part = known[known["selector"] == name]
        rates = " | ".join(f"{np.mean(part['error_ratio'] <= e):.2f}" for e in ER_LEVELS)
        lines.append(
            f"| {name} | {len(part)} | {rates} | {part['error_ratio'].median():.2f} | "
            f"{part['psnr'].mean():.2f} | {part['similarity'].mean():.3f} | "
            f"{part['scoring_seconds'].median():.2f} | {part['estimation_seconds'].median():.2f} |"
        )
    return "\n".join(lines)


def plan_jobs(config: EvalConfig) -> list[EvalJob]:
    """Jobs for every image of a store (ground truth where known) or of a folder (none).

    ``config.only_sources`` keeps the store images made from those sharp sources (e.g. a
    model's validation split).  Raises :class:`~pipeline.files.InputError` when no image is
    at least one window large.
    """
    from pipeline.files import IMAGE_SUFFIXES
    from pipeline.labels import read_labels
    from pipeline.store import Store

    source, window, stride, estimator = config.source, config.window, config.stride, config.estimator
    common = {
        "model_dir": config.model_dir,
        "selectors": tuple(config.selectors),
        "estimator": estimator.name,
        "estimator_params": estimator.describe()["params"],
        "window": window,
        "stride": stride,
        "kernel_size": config.kernel_size,
        "seed": config.seed,
        "out_dir": config.out,
    }
    folder = pathlib.Path(source)
    store = Store(source)
    if not store.is_store():
        if not folder.is_dir():
            raise InputError(f"{source}: neither a goodregions store nor a folder of images")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputError(f"{source}: holds no PNG, JPEG or TIFF images")
        jobs = [EvalJob(name=p.name, path=str(p), **common) for p in files]
    else:
        jobs = _store_jobs(store, config, common, read_labels)
    if not jobs:
        raise InputError(f"{source}: no image is at least one window ({window} px) large")
    return jobs


def _store_jobs(store: Any, config: EvalConfig, common: dict, read_labels: Any) -> list[EvalJob]:
    grid = store.manifest()["window"]
    labels = None
    if (grid["size"], grid["stride"]) == (config.window, config.stride):
        table = read_labels(store, config.estimator.id)
        labels = {}
        for image_id, window_id, sim in zip(
            *(table[c].to_pylist() for c in ("image_id", "window_id", "similarity")), strict=True
        ):
            labels.setdefault(image_id, {})[window_id] = sim
    jobs = []
    for row in store.images().to_pylist():
        if min(row["height"], row["width"]) < config.window:
            continue
        source = row["sharp_source"] or f"image:{row['image_id']}"
        if config.only_sources is not None and source not in config.only_sources:
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
    """Run the jobs on Ray; write results.parquet, results.md, er_curve.png, psnr.png; return (results, errors).

    ``psnr.png`` shows each selector's PSNR gain over ``whole`` (:func:`training.plots.plot_psnr_gain`).
    """
    import pyarrow.parquet as pq

    from pipeline.ray.jobs import map_jobs

    from .plots import plot_er_curve, plot_psnr_gain

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
    known_rows = results.filter(pc.is_valid(results["error_ratio"])).to_pandas()
    if not known_rows.empty:  # nothing with ground truth: no curve to draw
        plot_er_curve(known_rows, folder / "er_curve.png")
        plot_psnr_gain(known_rows, folder / "psnr.png")
    return results, errors
