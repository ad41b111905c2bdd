"""``select``: rank the windows of a new blurred image, estimate its kernel on the best one, deblur it.

The model folder written by ``train`` holds ``model.pt`` and ``model.json``
(window size, normalisation, estimator and its parameters).  Windows of any image
size are scored in batches on the CPU or a GPU; the kernel is estimated on the
top window with the model's estimator (or another registered one) and the whole
image is deconvolved with it.
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.files import InputError, atomic_path, write_kernel, write_kernel_preview, write_png
from pipeline.windows import grid, standardize

__all__ = [
    "Classifier",
    "SelectConfig",
    "cnn_scores",
    "estimator_for",
    "image_scores",
    "load_classifier",
    "run_select",
    "tile_plan",
]


@dataclass
class Classifier:
    model: Any  # torch.nn.Module in eval mode
    info: dict[str, Any]
    device: str

    @property
    def window(self) -> int:
        return int(self.info["window"])

    @property
    def stride(self) -> int:
        return int(self.info["stride"])

    @property
    def arch(self) -> str:
        return str(self.info.get("arch", "window"))


def load_classifier(model_dir: str | pathlib.Path, device: str = "auto") -> Classifier:
    """The trained window classifier of a ``train`` output folder (either architecture)."""
    import torch

    from .model import ARCHITECTURES, load_model

    folder = pathlib.Path(model_dir)
    if not (folder / "model.pt").is_file() or not (folder / "model.json").is_file():
        raise InputError(f"model: {folder} has no model.pt and model.json (run goodregions train)")
    try:
        info = json.loads((folder / "model.json").read_text())
        if not isinstance(info, dict):
            raise ValueError("not a JSON object")
        window, stride = int(info["window"]), int(info["stride"])
        if window < 1 or stride < 1:
            raise ValueError(f"window {window} and stride {stride} must be >= 1")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise InputError(f"{folder / 'model.json'}: not a goodregions model description ({exc})") from None
    arch = info.get("arch", "window")
    if arch not in ARCHITECTURES:
        raise InputError(f"{folder / 'model.json'}: unknown architecture {arch!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        model = load_model(folder / "model.pt", arch).to(device)
    except Exception as exc:  # truncated, garbage, or another network's weights
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{folder / 'model.pt'}: not a {arch} classifier's weights ({reason[:200]})") from None
    return Classifier(model, info, device)


#: the most pixels the one-pass scorer takes at once; larger images are scored in tiles
MAX_PIXELS = 2**23


def cnn_scores(
    classifier: Classifier, image: np.ndarray, corners: np.ndarray, size: int, batch: int = 64
) -> np.ndarray:
    """Logits of the classifier for the windows at ``corners`` (``(n, 2)``) of ``size`` px; higher is better.

    The ``window`` architecture scores the windows in batches of ``batch``; the ``image``
    one scores them all from one pass over the image (:func:`image_scores`).
    """
    import torch

    if classifier.arch == "image":
        return image_scores(classifier, image, corners, size)
    views = np.lib.stride_tricks.sliding_window_view(np.asarray(image, np.float32), (size, size))
    out = []
    with torch.no_grad():
        for start in range(0, len(corners), batch):
            part = corners[start : start + batch]
            windows = standardize(views[part[:, 0], part[:, 1]])
            x = torch.from_numpy(windows).unsqueeze(1).to(classifier.device)
            out.append(classifier.model(x).view(-1).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def image_scores(
    classifier: Classifier, image: np.ndarray, corners: np.ndarray, size: int, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """One-pass scores of the windows at ``corners``: the whole image through the trunk once.

    The image is standardised as a whole.  One larger than ``max_pixels`` is cut into
    overlapping tiles (:func:`tile_plan`), each scored in one pass, and every window is
    pooled from the tile where it lies furthest from a cut.
    """
    import torch

    pixels = standardize(np.asarray(image, np.float32)[None])[0]
    scores = np.zeros(len(corners), np.float32)
    with torch.no_grad():
        for (y0, x0, h, w), members in tile_plan(pixels.shape, corners, size, max_pixels):
            tile = torch.from_numpy(np.ascontiguousarray(pixels[y0 : y0 + h, x0 : x0 + w]))
            c = corners[members].astype(np.float32) - np.array([y0, x0], np.float32)
            boxes = np.stack([np.zeros(len(c), np.float32), c[:, 1], c[:, 0], c[:, 1] + size, c[:, 0] + size], 1)
            device = classifier.device
            logits = classifier.model(tile[None, None].to(device), torch.from_numpy(boxes).to(device))
            scores[members] = logits.float().cpu().numpy()
    return scores


def tile_plan(
    shape: tuple[int, int], corners: np.ndarray, size: int, max_pixels: int = MAX_PIXELS
) -> list[tuple[tuple[int, int, int, int], np.ndarray]]:
    """Tiles ``(y0, x0, height, width)`` covering an image, each with the indices of the windows it scores.

    One tile (the whole image) when it has at most ``max_pixels`` pixels.  Otherwise tiles
    of about ``sqrt(max_pixels)`` px a side start at multiples of the trunk's stride (so
    their feature cells fall on the whole image's) and overlap by at least ``size`` plus a
    margin on each side (a quarter of the room a tile leaves around one window), so that
    every window lies inside some tile; each window goes to the tile in which its distance
    to the nearest cut (an image border is no cut) is largest.

    >>> corners = np.array([[0, 0], [0, 300], [300, 300]])
    >>> [(t, m.tolist()) for t, m in tile_plan((400, 400), corners, 100)]
    [((0, 0, 400, 400), [0, 1, 2])]
    >>> [(t, m.tolist()) for t, m in tile_plan((400, 400), corners, 100, max_pixels=256 * 256)]
    [((0, 0, 256, 256), [0]), ((0, 128, 256, 272), [1]), ((128, 128, 272, 272), [2])]
    """
    from .model import STRIDE

    height, width = shape
    if height * width <= max_pixels:
        return [((0, 0, height, width), np.arange(len(corners)))]
    side = int(np.sqrt(max_pixels)) // STRIDE * STRIDE
    if side < size + 2 * STRIDE:
        raise InputError(f"max_pixels: a tile of {side} px cannot hold a window of {size} px with a margin")
    margin = (side - size) // 4
    step = max(STRIDE, (side - size - 2 * margin) // STRIDE * STRIDE)

    def spans(length: int) -> list[tuple[int, int]]:
        if length <= side:
            return [(0, length)]
        last = (length - side) // STRIDE * STRIDE  # the last tile reaches the border (up to STRIDE - 1 px more)
        return [(start, min(side, length - start)) for start in range(0, last, step)] + [(last, length - last)]

    tiles = [(y0, x0, h, w) for y0, h in spans(height) for x0, w in spans(width)]
    best = np.full(len(corners), -1.0)
    owner = np.full(len(corners), -1)
    ys, xs = corners[:, 0], corners[:, 1]
    for t, (y0, x0, h, w) in enumerate(tiles):
        inside = (ys >= y0) & (xs >= x0) & (ys + size <= y0 + h) & (xs + size <= x0 + w)
        far = np.inf
        room = np.stack([
            np.where(y0 == 0, far, ys - y0), np.where(x0 == 0, far, xs - x0),
            np.where(y0 + h == height, far, y0 + h - ys - size), np.where(x0 + w == width, far, x0 + w - xs - size),
        ]).min(axis=0)  # fmt: skip
        better = inside & (room > best)
        best[better], owner[better] = room[better], t
    return [(tiles[t], np.flatnonzero(owner == t)) for t in range(len(tiles)) if (owner == t).any()]


def estimator_for(classifier_info: dict[str, Any], name: str | None) -> Any:
    """The registered estimator ``name`` (defaults), or the one the model's labels came from."""
    from kernels_gpu import estimators
    from pipeline.estimate import get_estimator

    if name is not None:
        return get_estimator(name)
    spec = classifier_info.get("estimator_spec")
    if not spec:
        raise InputError("estimator: the model does not record its estimator's parameters; name one")
    return estimators.get(spec["name"], **spec["params"])


def heatmap(image: np.ndarray, corners: np.ndarray, size: int, scores: np.ndarray) -> np.ndarray:
    """Per-pixel mean of the (sigmoid) scores of the windows covering it; NaN where no window reaches."""
    total = np.zeros(image.shape, np.float64)
    count = np.zeros(image.shape, np.float64)
    probs = 1 / (1 + np.exp(-np.asarray(scores, np.float64)))
    for (y, x), p in zip(corners, probs, strict=True):
        total[y : y + size, x : x + size] += p
        count[y : y + size, x : x + size] += 1
    with np.errstate(invalid="ignore"):
        return total / np.where(count > 0, count, np.nan)


@dataclass(frozen=True, kw_only=True)
class SelectConfig:
    """Settings of one ``select`` run.

    ``top``: the kernel is estimated jointly from the ``top`` best windows that overlap little
    (``selectors.distinct_top``: one kernel whose normal equations sum over them, each window
    keeping its own latent image); 1 is the paper's single best window.  ``window``/``stride``
    default to the model's; ``estimator`` to the model's labelling estimator.
    """

    model_dir: str
    out: str
    kernel_size: int
    estimator: str | None = None
    window: int | None = None
    stride: int | None = None
    top: int = 1
    name: str = "image"


def run_select(image: np.ndarray, config: SelectConfig, true_kernel: np.ndarray | None = None) -> dict[str, Any]:
    """Rank, estimate, deblur, write the outputs; returns the summary written to ``windows.json``."""
    import time

    from kernels_gpu.backend import gpu_available, to_device, to_numpy
    from kernels_gpu.deconv import deconvolve
    from kernels_gpu.similarity import similarity

    from .plots import plot_selection
    from .selectors import distinct_top, rank_by_scores

    classifier = load_classifier(config.model_dir)
    size = config.window or classifier.window
    step = config.stride or classifier.stride
    kernel_size = config.kernel_size
    if size > min(image.shape):
        raise InputError(f"window: {size} px is larger than the image {image.shape[0]}x{image.shape[1]}")
    if kernel_size < 3 or kernel_size % 2 == 0 or kernel_size > size:
        raise InputError(f"kernel_size: must be odd, >= 3 and at most the window ({size} px), got {kernel_size}")
    if config.top < 1:
        raise InputError(f"top: must be >= 1, got {config.top}")
    est = estimator_for(classifier.info, config.estimator)
    corners = grid(*image.shape, size, step)
    start = time.perf_counter()
    scores = cnn_scores(classifier, image, corners, size)
    scoring = time.perf_counter() - start
    chosen = distinct_top(scores, corners, size, config.top)
    y, x = (int(v) for v in corners[chosen[0]])
    regions = np.stack([image[cy : cy + size, cx : cx + size] for cy, cx in corners[chosen]])
    device = "gpu" if gpu_available() else "cpu"
    batch = to_device(regions, device)
    kernel = to_numpy(est.joint(batch, kernel_size) if len(chosen) > 1 else est(batch, kernel_size)[0])
    estimation = time.perf_counter() - start - scoring
    sharp = deconvolve(image, kernel)
    seconds = time.perf_counter() - start

    folder = pathlib.Path(config.out)
    folder.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "image": config.name,
        "height": int(image.shape[0]),
        "width": int(image.shape[1]),
        "window": size,
        "stride": step,
        "estimator": est.id,
        "kernel_size": kernel_size,
        "best": {"y": y, "x": x, "size": size, "score": float(scores[chosen[0]])},
        "regions": [{"y": int(corners[i][0]), "x": int(corners[i][1]), "size": size} for i in chosen],
        "windows": [
            {
                "rank": r + 1,
                "window_id": int(i),
                "y": int(corners[i][0]),
                "x": int(corners[i][1]),
                "score": float(scores[i]),
            }
            for r, i in enumerate(rank_by_scores(scores))
        ],
        "windows_scored": len(corners),
        "arch": classifier.arch,
        "passes": len(tile_plan(image.shape, corners, size)) if classifier.arch == "image" else None,
        "seconds": seconds,
        "seconds_scoring": scoring,
        "seconds_estimation": estimation,
    }
    if true_kernel is not None:
        summary["similarity_to_true_kernel"] = float(similarity(kernel, true_kernel))
    with atomic_path(folder / "windows.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    write_kernel(folder / "kernel.npy", kernel)
    write_kernel_preview(folder / "kernel.png", kernel)
    write_png(folder / "deblurred.png", sharp)
    plot_selection(
        folder / "heatmap.png",
        image,
        heatmap(image, corners, size, scores),
        (y, x, size, size),
        f"{config.name}: best window at ({y}, {x}), {size} px; {len(corners)} windows scored",
    )
    return summary
