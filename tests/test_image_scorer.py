"""The one-pass image scorer: boxes pool the right feature cells, scores do not depend on the batch,
it learns a toy store, and tiling a large image does not change the best window."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.windows import grid, standardize
from tests.levin import LEVIN_SHARP
from tests.tolerance import TOLERANCE
from training.data import collate_images
from training.metrics import selection
from training.model import STRIDE, ImageScorer, build_model
from training.select import Classifier, cnn_scores, image_scores, tile_plan

WINDOW = 64


class TextureTrunk(nn.Module):
    """A hand-built trunk that responds to texture: gradient energy averaged over each 32 x 32 cell."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        dy = torch.diff(images, dim=-2, append=images[..., -1:, :])
        dx = torch.diff(images, dim=-1, append=images[..., :, -1:])
        energy = dy**2 + dx**2
        h, w = energy.shape[-2:]
        energy = F.pad(energy, (0, -w % STRIDE, 0, -h % STRIDE))
        return F.avg_pool2d(energy, STRIDE)  # (B, 1, ceil(H / 32), ceil(W / 32))


class TextureScorer(ImageScorer):
    """The real box pooling and linear head over the texture trunk's known feature map."""

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return TextureTrunk()(images)


def texture_scorer() -> ImageScorer:
    scorer = TextureScorer(build_model())
    scorer.fc = nn.Linear(1, 1)
    with torch.no_grad():
        scorer.fc.weight.fill_(1.0)
        scorer.fc.bias.zero_()
    return scorer.eval()


def boxes_of(corners: np.ndarray, size: int, image: int = 0) -> torch.Tensor:
    c = torch.as_tensor(corners, dtype=torch.float32)
    return torch.stack([torch.full_like(c[:, 0], image), c[:, 1], c[:, 0], c[:, 1] + size, c[:, 0] + size], 1)


def test_trunk_stride_and_a_box_pools_its_own_cells():
    """One textured window on a flat image: its box scores highest, a box half on it half as much,
    and every box scores the area-weighted mean of the 32 px feature cells under it."""
    assert build_model(arch="image").features(torch.zeros(1, 1, 450, 450)).shape == (1, 512, 15, 15)
    image = np.zeros((320, 320), np.float32)
    image[128:192, 64:128] = np.random.default_rng(0).random((64, 64))  # feature cells (4..5, 2..3)
    corners = np.stack(np.meshgrid(np.arange(0, 257, 16), np.arange(0, 257, 16), indexing="ij"), -1).reshape(-1, 2)
    scores = texture_scorer()(torch.from_numpy(image)[None, None], boxes_of(corners, WINDOW)).detach().numpy()
    top = scores.max()
    assert tuple(corners[np.argmax(scores)]) == (128, 64)
    at = {tuple(c): s for c, s in zip(corners.tolist(), scores, strict=True)}
    for corner in ((128, 96), (128, 32), (96, 64), (160, 64)):  # half on the texture
        assert 0.3 * top < at[corner] < 0.7 * top, corner
    cells = np.repeat(np.repeat(TextureTrunk()(torch.from_numpy(image)[None, None])[0, 0].numpy(), 32, 0), 32, 1)
    for (y, x), score in zip(corners, scores, strict=True):  # a cell's value on each of its pixels
        assert score == pytest.approx(cells[y : y + WINDOW, x : x + WINDOW].mean(), rel=1e-5, abs=1e-7), (y, x)


def test_scores_do_not_depend_on_the_other_images_of_the_batch():
    torch.manual_seed(0)
    scorer = build_model(arch="image").eval()
    rng = np.random.default_rng(1)
    images = torch.from_numpy(standardize(rng.random((3, 128, 128), dtype=np.float32)))[:, None]
    corners = grid(128, 128, WINDOW, 32)
    with torch.no_grad():
        alone = scorer(images[:1], boxes_of(corners, WINDOW))
        together = scorer(images, torch.cat([boxes_of(corners, WINDOW, b) for b in range(3)]))
        reordered = scorer(images.flip(0), boxes_of(corners, WINDOW, 2))
    np.testing.assert_allclose(together[: len(corners)].numpy(), alone.numpy(), **TOLERANCE["float32"])
    np.testing.assert_allclose(reordered.numpy(), alone.numpy(), **TOLERANCE["float32"])


def _toy_images(n: int, rng: np.random.Generator) -> list[dict]:
    """Flat-ish images in which a few random windows carry texture; those are the good ones."""
    import imageio.v3 as iio

    sharp = sorted(LEVIN_SHARP.glob("*.png"))
    rows = []
    corners = grid(128, 128, WINDOW, 32)
    for i in range(n):
        picture = iio.imread(sharp[i % len(sharp)]).astype(np.float32) / 255
        image = 0.5 + 0.02 * rng.standard_normal((128, 128)).astype(np.float32)
        good = rng.choice(len(corners), 2, replace=False)
        for g in good:
            y, x = corners[g]
            image[y : y + WINDOW, x : x + WINDOW] = picture[y : y + WINDOW, x : x + WINDOW]
        sims = np.full(len(corners), 0.3, np.float32)
        for g in good:
            sims[g] = 0.9
        y0, x0 = corners[:, 0], corners[:, 1]
        rows.append({"image": standardize(image[None])[0], "y": y0, "x": x0, "similarity": sims,
                     "label": (sims > 0.6).astype(np.float32), "image_id": i,
                     "window_id": np.arange(len(corners))})  # fmt: skip
    return rows


def test_a_small_image_scorer_learns_a_toy_store():
    """Training loss falls, and on the training images top-1 reaches the oracle window."""
    torch.manual_seed(0)
    rng = np.random.default_rng(2)
    rows = _toy_images(8, rng)
    batch = {k: [r[k] for r in rows] for k in rows[0]}
    batch["image_id"] = np.array(batch["image_id"])
    parts = collate_images(batch, WINDOW)
    model = build_model(arch="image")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    losses = []
    for _ in range(40):
        model.train()
        loss = loss_fn(model(parts["images"], parts["boxes"]), parts["label"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    model.eval()
    with torch.no_grad():
        scores = model(parts["images"], parts["boxes"]).numpy()
    metrics = selection(scores, parts["similarity"].numpy(), parts["image_id"].numpy())
    assert metrics["top1_similarity"] == pytest.approx(metrics["oracle_similarity"])


def test_tiled_scoring_equals_one_pass():
    """A large image scored in tiles gives every window about its one-pass score, and the same best windows."""
    rng = np.random.default_rng(3)
    image = rng.random((416, 480), dtype=np.float32) * np.linspace(0.2, 1, 480, dtype=np.float32)
    corners = grid(*image.shape, WINDOW, 20)
    classifier = Classifier(texture_scorer(), {"arch": "image", "window": WINDOW, "stride": 20}, "cpu")
    whole = cnn_scores(classifier, image, corners, WINDOW)
    small = 192 * 192
    plan = tile_plan(image.shape, corners, WINDOW, small)
    assert len(plan) > 4 and sorted(np.concatenate([m for _, m in plan]).tolist()) == list(range(len(corners)))
    tiled = image_scores(classifier, image, corners, WINDOW, max_pixels=small)
    # only the texture trunk's cells at a cut differ (one row of gradients less), and no box reaches them
    np.testing.assert_allclose(tiled, whole, rtol=1e-5, atol=1e-7)
    assert np.argmax(tiled) == np.argmax(whole)
    assert (np.argsort(-tiled)[:5] == np.argsort(-whole)[:5]).all()


def test_tile_plan_puts_every_window_inside_its_tile():
    corners = grid(1000, 700, 228, 20)
    plan = tile_plan((1000, 700), corners, 228, 400 * 400)
    for (y0, x0, h, w), members in plan:
        assert y0 % STRIDE == 0 and x0 % STRIDE == 0
        c = corners[members]
        assert (c[:, 0] >= y0).all() and (c[:, 1] >= x0).all()
        assert (c[:, 0] + 228 <= y0 + h).all() and (c[:, 1] + 228 <= x0 + w).all()
    assert sum(len(m) for _, m in plan) == len(corners)
