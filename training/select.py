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

__all__ = ["Classifier", "cnn_scores", "estimator_for", "load_classifier", "run_select"]


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


def load_classifier(model_dir: str | pathlib.Path, device: str = "auto") -> Classifier:
    """The trained window classifier of a ``train`` output folder."""
    import torch

    from .model import load_model

    folder = pathlib.Path(model_dir)
    if not (folder / "model.pt").is_file() or not (folder / "model.json").is_file():
        raise InputError(f"model: {folder} has no model.pt and model.json (run goodregions train)")
    info = json.loads((folder / "model.json").read_text())
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(folder / "model.pt").to(device)
    return Classifier(model, info, device)


def cnn_scores(
    classifier: Classifier, image: np.ndarray, corners: np.ndarray, size: int, batch: int = 64
) -> np.ndarray:
    """Logits of the classifier for the windows at ``corners`` (``(n, 2)``) of ``size`` px; higher is better."""
    import torch

    views = np.lib.stride_tricks.sliding_window_view(np.asarray(image, np.float32), (size, size))
    out = []
    with torch.no_grad():
        for start in range(0, len(corners), batch):
            part = corners[start : start + batch]
            windows = standardize(views[part[:, 0], part[:, 1]])
            x = torch.from_numpy(windows).unsqueeze(1).to(classifier.device)
            out.append(classifier.model(x).view(-1).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


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


def run_select(
    image: np.ndarray,
    model_dir: str,
    out: str,
    kernel_size: int,
    estimator: str | None = None,
    window: int | None = None,
    stride: int | None = None,
    top: int = 10,
    true_kernel: np.ndarray | None = None,
    name: str = "image",
) -> dict[str, Any]:
    """Rank, estimate, deblur, write the outputs; returns the summary written to ``windows.json``."""
    import time

    from kernels_gpu.backend import gpu_available, to_device, to_numpy
    from kernels_gpu.deconv import deconvolve
    from kernels_gpu.similarity import similarity

    from .plots import plot_selection
    from .selectors import rank_by_scores

    classifier = load_classifier(model_dir)
    size = window or classifier.window
    step = stride or classifier.stride
    if size > min(image.shape):
        raise InputError(f"window: {size} px is larger than the image {image.shape[0]}x{image.shape[1]}")
    if kernel_size < 3 or kernel_size % 2 == 0 or kernel_size > size:
        raise InputError(f"kernel_size: must be odd, >= 3 and at most the window ({size} px), got {kernel_size}")
    est = estimator_for(classifier.info, estimator)
    corners = grid(*image.shape, size, step)
    start = time.perf_counter()
    scores = cnn_scores(classifier, image, corners, size)
    order = rank_by_scores(scores)
    y, x = (int(v) for v in corners[order[0]])
    region = image[y : y + size, x : x + size][None]
    device = "gpu" if gpu_available() else "cpu"
    kernel = to_numpy(est(to_device(region, device), kernel_size))[0]
    sharp = deconvolve(image, kernel)
    seconds = time.perf_counter() - start

    folder = pathlib.Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "image": name,
        "height": int(image.shape[0]),
        "width": int(image.shape[1]),
        "window": size,
        "stride": step,
        "estimator": est.id,
        "kernel_size": kernel_size,
        "best": {"y": y, "x": x, "size": size, "score": float(scores[order[0]])},
        "windows": [
            {
                "rank": r + 1,
                "window_id": int(i),
                "y": int(corners[i][0]),
                "x": int(corners[i][1]),
                "score": float(scores[i]),
            }
            for r, i in enumerate(order[:top])
        ],
        "windows_scored": len(corners),
        "seconds": seconds,
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
        f"{name}: best window at ({y}, {x}), {size} px; {len(corners)} windows scored",
    )
    return summary
