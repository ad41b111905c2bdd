"""Fitting the ``hu-yang`` baseline: Gabor window features + logistic regression on the CNN's labels.

Run by ``train`` on the same training split as the CNN, so the two learned
selectors see exactly the same labels; the fitted model goes to
``MODEL_DIR/hu_yang.json``.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pyarrow as pa

from pipeline.files import atomic_path
from pipeline.store import Store

__all__ = ["fit_hu_yang"]


def fit_hu_yang(store: Store, index: pa.Table, window: int, out: pathlib.Path, balance: bool = True) -> dict:
    """Fit on every window of the images in ``index`` (see ``training.data.build_index``); write hu_yang.json."""
    from .selectors.baselines import LogisticRegression, gabor_features

    features, labels = [], []
    arrays: dict[str, object] = {}
    for row in index.to_pylist():
        name = row["blurred_array"]
        if name not in arrays:
            arrays[name] = store.array(name)
        image = np.asarray(arrays[name][row["blurred_index"]], np.float32)
        corners = np.stack([row["y"], row["x"]], axis=1).astype(np.int32)
        features.append(gabor_features(image, corners, window))
        labels.append(np.asarray(row["label"], np.float64))
    X, y = np.concatenate(features), np.concatenate(labels)
    weight = None
    if balance and 0 < y.sum() < len(y):
        weight = np.where(y > 0.5, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    model = LogisticRegression().fit(X, y, sample_weight=weight)
    accuracy = float(np.mean((model.decision_function(X) > 0) == (y > 0.5)))
    description = {"model": model.to_dict(), "train_windows": len(y), "train_accuracy": accuracy}
    with atomic_path(out / "hu_yang.json") as tmp:
        tmp.write_text(json.dumps(description))
    return description
