"""Validation metrics of the window classifier, and their CSV (the plot is ``training.plots.plot_history``).

The metric that matters for the product is the *selection* metric: for each
validation image, the similarity of the window the model ranks first, against
the mean over its windows (what a random pick gets) and the best window (the
oracle that knows the truth).
"""

from __future__ import annotations

import csv
import pathlib
from typing import Any

import numpy as np
from scipy.stats import rankdata

__all__ = ["roc_auc", "selection", "validation_metrics", "write_history_csv"]


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied ranks); NaN with a single class."""
    labels = np.asarray(labels) > 0.5
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def selection(scores: np.ndarray, similarity: np.ndarray, image_ids: np.ndarray) -> dict[str, float]:
    """Mean over images of: the top-ranked window's similarity, the mean (random pick), the best (oracle)."""
    top, mean, best, beats = [], [], [], []
    for image in np.unique(image_ids):
        mine = image_ids == image
        s, sim = scores[mine], similarity[mine]
        top.append(sim[np.argmax(s)])
        mean.append(sim.mean())
        best.append(sim.max())
        beats.append(sim[np.argmax(s)] > sim.mean())
    return {
        "top1_similarity": float(np.mean(top)),
        "random_similarity": float(np.mean(mean)),
        "oracle_similarity": float(np.mean(best)),
        "top1_beats_random": float(np.mean(beats)),
        "val_images": len(top),
    }


def validation_metrics(
    logits: np.ndarray, labels: np.ndarray, similarity: np.ndarray, image_ids: np.ndarray
) -> dict[str, Any]:
    """Loss, accuracy, ROC-AUC and the selection metric on the validation windows."""
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels, np.float64)
    # binary cross-entropy with logits, computed stably
    loss = np.mean(np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits))))
    return {
        "val_loss": float(loss),
        "val_accuracy": float(np.mean((logits > 0) == (labels > 0.5))),
        "val_auc": roc_auc(logits, labels),
        "val_positive_rate": float(np.mean(labels > 0.5)),
        **selection(logits, np.asarray(similarity), np.asarray(image_ids)),
    }


COLUMNS = (
    "epoch",
    "train_loss",
    "val_loss",
    "val_accuracy",
    "val_auc",
    "val_positive_rate",
    "top1_similarity",
    "random_similarity",
    "oracle_similarity",
    "top1_beats_random",
    "val_images",
)


def write_history_csv(path: str | pathlib.Path, history: list[dict]) -> None:
    from pipeline.files import atomic_path

    with atomic_path(path, suffix=".csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
