"""The figures the commands write: evaluate's error-ratio and PSNR-gain curves, select's heatmap, train's history.

Every figure is drawn for reading at 600-1000 px wide (100 dpi), with labelled
axes and a title, whatever the number of images or epochs, and is written
atomically.
"""

from __future__ import annotations

import pathlib
import textwrap
from typing import Any

import numpy as np

from pipeline.files import atomic_path

__all__ = [
    "er_curve_figure",
    "history_figure",
    "plot_er_curve",
    "plot_history",
    "plot_psnr_gain",
    "plot_selection",
    "psnr_gain_figure",
    "psnr_reference",
    "selection_figure",
]

DPI = 100


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | pathlib.Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=DPI)
    _pyplot().close(fig)


def _style(name: str) -> dict[str, Any]:
    """The line of a selector: the CNN's family bold, the bounds (oracle, random) dashed."""
    return {
        "linewidth": 2 if name.startswith("cnn") else 1.2,
        "linestyle": "--" if name in ("oracle", "random") else "-",
    }


def plot_er_curve(frame: Any, path: str | pathlib.Path, title: str = "") -> None:
    """Write :func:`er_curve_figure`."""
    _save(er_curve_figure(frame, title), path)


def er_curve_figure(frame: Any, title: str = "") -> Any:
    """The paper's Fig. 8: per selector, the fraction of images whose error ratio is at most x.

    ``frame``: a pandas frame with ``image``, ``selector`` and ``error_ratio`` columns (rows with
    ground truth); selectors in their order of appearance.
    """
    plt = _pyplot()
    names = list(dict.fromkeys(frame["selector"]))
    levels = np.linspace(1, 5, 161)
    fig, ax = plt.subplots(figsize=(6.4, 4.5))
    for name in names:
        ers = frame.loc[frame["selector"] == name, "error_ratio"].to_numpy()
        ax.plot(levels, [np.mean(ers <= v) for v in levels], label=name, **_style(name))
    ax.set_xlabel("error ratio")
    ax.set_ylabel("fraction of images with error ratio ≤ x")
    ax.set_xlim(1, 5)
    ax.set_ylim(0, 1.02)
    ax.set_title(title or f"Cumulative error ratio, {frame['image'].nunique()} images", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2 if len(names) > 6 else 1, loc="lower right")
    fig.tight_layout()
    return fig


def psnr_reference(names: list[str]) -> str:
    """The selector the PSNR gains are measured against: ``whole``, else ``random``, else the first."""
    return next((n for n in ("whole", "random") if n in names), names[0])


def plot_psnr_gain(frame: Any, path: str | pathlib.Path) -> bool:
    """Write :func:`psnr_gain_figure`; False (nothing written) when there is no other selector to compare."""
    fig = psnr_gain_figure(frame)
    if fig is None:
        return False
    _save(fig, path)
    return True


def psnr_gain_figure(frame: Any) -> Any:
    """Each selector's PSNR gain over a reference selector, per image, sorted: one curve per selector.

    The x axis is the fraction of images (so the figure reads the same for 5 images or 500); the
    legend gives each selector's median gain.  ``frame`` has ``image``, ``selector`` and ``psnr``.
    None when there is no other selector to compare.
    """
    names = list(dict.fromkeys(frame["selector"]))
    if len(names) < 2:
        return None
    reference = psnr_reference(names)
    table = frame.pivot_table(index="image", columns="selector", values="psnr", aggfunc="first")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.5))
    for name in names:
        if name == reference:
            continue
        gain = np.sort((table[name] - table[reference]).dropna().to_numpy())
        if len(gain) == 0:
            continue
        x = (np.arange(len(gain)) + 0.5) / len(gain)
        ax.plot(
            x, gain, marker="." if len(gain) <= 40 else None, label=f"{name} ({np.median(gain):+.2f})", **_style(name)
        )
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of images (sorted by gain)")
    ax.set_ylabel(f"PSNR gain over {reference} (dB)")
    ax.set_title(f"PSNR gain over '{reference}' per image, {len(table)} images (legend: median, dB)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2 if len(names) > 6 else 1, loc="upper left")
    fig.tight_layout()
    return fig


def plot_selection(
    path: str | pathlib.Path, image: np.ndarray, heat: np.ndarray, box: tuple[int, int, int, int], title: str
) -> None:
    """Write :func:`selection_figure`."""
    _save(selection_figure(image, heat, box, title), path)


def selection_figure(image: np.ndarray, heat: np.ndarray, box: tuple[int, int, int, int], title: str) -> Any:
    """The image with the windows' scores overlaid (colours span the scores' range) and the chosen box."""
    from matplotlib.patches import Rectangle

    plt = _pyplot()
    finite = heat[np.isfinite(heat)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if high - low < 1e-6:  # one score everywhere: a range around it, so the colour bar still reads
        low, high = low - 0.005, high + 0.005
    aspect = image.shape[0] / image.shape[1]
    fig, ax = plt.subplots(figsize=(6.4, 5.4 * aspect + 0.9))
    ax.imshow(image, cmap="gray", vmin=0, vmax=1)
    shown = ax.imshow(heat, cmap="inferno", alpha=0.5, vmin=low, vmax=high)
    y, x, h, w = box
    ax.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, edgecolor="cyan", linewidth=2))
    ax.set_title(textwrap.fill(title, 70), fontsize=9)
    ax.axis("off")
    bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label(f"P(good window), mean over covering windows: {low:.2f} to {high:.2f}", fontsize=8)
    fig.tight_layout()
    return fig


def plot_history(path: str | pathlib.Path, history: list[dict], estimator: str, threshold: float) -> None:
    """Write :func:`history_figure`."""
    _save(history_figure(history, estimator, threshold), path)


def history_figure(history: list[dict], estimator: str, threshold: float) -> Any:
    """Three panels per epoch: training and validation loss; validation ROC AUC; the selection similarity."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (loss, auc, sim) = plt.subplots(1, 3, figsize=(9.6, 3.6))
    loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="training")
    loss.plot(epochs, [h["val_loss"] for h in history], "s-", label="validation")
    loss.set_ylabel("binary cross-entropy")
    loss.set_title("loss", fontsize=10)
    loss.legend(fontsize=8)
    auc.plot(epochs, [h["val_auc"] for h in history], "s-", color="tab:purple")
    auc.set_ylabel("validation ROC AUC")
    auc.set_title("ranking of good vs bad windows", fontsize=10)
    for key, label, style in [
        ("oracle_similarity", "oracle (best window)", "g^-"),
        ("top1_similarity", "model's top-1 window", "bo-"),
        ("random_similarity", "random window (mean)", "r--"),
    ]:
        sim.plot(epochs, [h[key] for h in history], style, label=label)
    sim.set_ylabel("kernel similarity")
    sim.set_title("validation images", fontsize=10)
    sim.legend(fontsize=8)
    for ax in (loss, auc, sim):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.suptitle(f"window classifier: labels {estimator}, good when similarity > {threshold}", fontsize=10)
    fig.tight_layout()
    return fig
