"""The figures read at the size they are shown: 600-1000 px wide whatever the data, every label inside the figure."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest

from training import plots

SELECTORS = ("cnn", "fergus", "xu-jia", "hu-yang", "whole", "random", "oracle", "cnn-joint-3", "cnn-consensus-3")


def _results(images: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(images):
        base = rng.uniform(18, 30)
        for s, name in enumerate(SELECTORS):
            rows.append({
                "image": f"{i:05d}_builtin_camera", "selector": name,
                "error_ratio": 1 + rng.gamma(2, 0.5 + 0.1 * s), "psnr": base + rng.normal(0, 1) - 0.2 * s,
            })  # fmt: skip
    return pd.DataFrame(rows)


def _fits(fig) -> None:
    """Everything the figure draws (titles, labels, tick labels, legends) lies inside it: nothing clipped."""
    fig.canvas.draw()
    drawn = fig.get_tightbbox(fig.canvas.get_renderer())  # inches, over the drawn artists only
    page = fig.bbox_inches
    tolerance = 2 / fig.dpi
    assert drawn.x0 >= page.x0 - tolerance and drawn.y0 >= page.y0 - tolerance, (drawn, page)
    assert drawn.x1 <= page.x1 + tolerance and drawn.y1 <= page.y1 + tolerance, (drawn, page)


@pytest.mark.parametrize("images", [3, 400])
def test_evaluate_figures_keep_their_size_for_any_number_of_images(tmp_path, images):
    frame = _results(images)
    plots.plot_er_curve(frame, tmp_path / "er.png")
    assert plots.plot_psnr_gain(frame, tmp_path / "psnr.png")
    for name in ("er.png", "psnr.png"):
        height, width = iio.imread(tmp_path / name).shape[:2]
        assert 600 <= width <= 800 and 400 <= height <= 500
    for fig in (plots.er_curve_figure(frame), plots.psnr_gain_figure(frame)):
        _fits(fig)
        ax = fig.axes[0]
        assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
        assert len(ax.get_lines()) >= len(SELECTORS) - 1
        plots._pyplot().close(fig)


def test_psnr_gain_is_measured_against_the_whole_image():
    frame = _results(5)
    fig = plots.psnr_gain_figure(frame)
    ax = fig.axes[0]
    assert "whole" in ax.get_ylabel()
    cnn = next(line for line in ax.get_lines() if line.get_label().startswith("cnn ("))
    table = frame.pivot(index="image", columns="selector", values="psnr")
    assert np.allclose(cnn.get_ydata(), np.sort(table["cnn"] - table["whole"]))  # sorted gains per image
    plots._pyplot().close(fig)
    assert plots.psnr_reference(["cnn", "random"]) == "random" and plots.psnr_reference(["cnn", "fergus"]) == "cnn"
    assert plots.psnr_gain_figure(frame[frame["selector"] == "cnn"]) is None


def test_selection_heatmap_spans_the_scores_and_keeps_a_long_title():
    rng = np.random.default_rng(1)
    image = rng.random((192, 192))
    heat = np.full((192, 192), np.nan)
    heat[:160, :160] = rng.uniform(0.12, 0.45, (160, 160))
    title = "builtin:camera (validation image): best window at (32, 64), 96 px; 16 windows scored"
    fig = plots.selection_figure(image, heat, (32, 64, 96, 96), title)
    _fits(fig)
    overlay = fig.axes[0].get_images()[1]
    low, high = overlay.get_clim()
    assert low == pytest.approx(np.nanmin(heat)) and high == pytest.approx(np.nanmax(heat))
    assert f"{low:.2f} to {high:.2f}" in fig.axes[1].get_ylabel()  # the colour bar names its range
    width, _ = fig.canvas.get_width_height()
    assert 600 <= width <= 800
    plots._pyplot().close(fig)


def test_history_has_loss_and_auc_on_their_own_axes_and_integer_epochs():
    history = [
        {"epoch": e, "train_loss": 0.7 - 0.1 * e, "val_loss": 0.68 - 0.05 * e, "val_auc": 0.6 + 0.05 * e,
         "top1_similarity": 0.6, "random_similarity": 0.5, "oracle_similarity": 0.8}
        for e in (1, 2, 3)
    ]  # fmt: skip
    fig = plots.history_figure(history, "l0grad@1-abc", 0.68)
    _fits(fig)
    loss, auc, sim = fig.axes
    assert "cross-entropy" in loss.get_ylabel() and "AUC" in auc.get_ylabel() and sim.get_ylabel()
    assert len(loss.get_lines()) == 2 and len(auc.get_lines()) == 1
    for ax in (loss, auc, sim):
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks) and ax.get_xlabel() == "epoch"
    plots._pyplot().close(fig)
