"""Region selectors: one registry of the ways to choose where a kernel is estimated.

A selector has a **name**, what it **needs** (``"model"``: a file of the model
folder; ``"truth"``: the true kernel; ``"nothing"``), a **scorer** that gives each
window of the grid a score (higher is better; ``None`` for ``whole``), and how
many of the best windows it keeps and how it turns them into one kernel
(``combine``):

- ``"single"``: the kernel estimated on the best window (``top = 1``);
- ``"joint"``: one kernel estimated jointly from the ``top`` best windows, whose
  kernel steps share their normal equations (``name-joint-K``);
- ``"consensus"``: a kernel estimated on each of the ``top`` best windows, the
  one with the highest median similarity to the others kept (the medoid;
  ``name-consensus-K``).

Registered: ``cnn`` (the trained classifier), ``fergus``, ``xu-jia``,
``hu-yang`` (the baselines of :mod:`training.selectors.baselines`), ``whole``
(the whole image), ``random`` (a seeded window) and ``oracle`` (the window whose
estimate is closest to the true kernel: the upper bound of one window).  Any
window selector ``S`` also reads as ``S-joint-K`` and ``S-consensus-K`` for
``K >= 1`` (``cnn-joint-3``); :func:`get` parses those names.

The scorers' modules (SciPy, torch) are imported when a selector runs, so
reading the registry is cheap.  Ranking is :func:`rank_by_scores` everywhere (``select``, ``evaluate``): the
highest score first, ties in window-id order, NaN last.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "COMBINE",
    "DEFAULT",
    "NEEDS",
    "Box",
    "Context",
    "Selector",
    "available",
    "best_by_scores",
    "choose",
    "distinct_top",
    "estimate",
    "get",
    "medoid",
    "random_window",
    "rank_by_scores",
    "register",
]

# --------------------------------------------------------------------------- boxes


@dataclass(frozen=True)
class Box:
    """A rectangular region of an image, in pixels: rows ``y:y+height``, columns ``x:x+width``."""

    y: int
    x: int
    height: int
    width: int

    def __post_init__(self) -> None:
        for name in ("y", "x", "height", "width"):
            value = getattr(self, name)
            if int(value) != value:
                raise ValueError(f"Box.{name} must be an integer, got {value!r}")
            object.__setattr__(self, name, int(value))  # plain ints, so the box serialises to JSON
        if self.y < 0 or self.x < 0:
            raise ValueError(f"a box starts inside the image, got y={self.y}, x={self.x}")
        if self.height < 1 or self.width < 1:
            raise ValueError(f"a box is at least 1x1 px, got {self.height}x{self.width}")

    @classmethod
    def from_corner(cls, corner: Any, size: int) -> Box:
        """The square window of side ``size`` whose top-left corner is ``corner = (y, x)`` (a row of ``grid``)."""
        y, x = (int(v) for v in corner)
        return cls(y, x, int(size), int(size))

    @classmethod
    def whole(cls, shape: tuple[int, ...]) -> Box:
        """The whole image of ``shape`` ``(H, W, ...)``: the ``whole`` selector."""
        return cls(0, 0, int(shape[0]), int(shape[1]))

    @property
    def slices(self) -> tuple[slice, slice]:
        """``image[box.slices]`` is the region."""
        return slice(self.y, self.y + self.height), slice(self.x, self.x + self.width)

    def fits(self, shape: tuple[int, ...]) -> bool:
        """Whether the box lies inside an image of ``shape`` ``(H, W, ...)``."""
        return self.y + self.height <= shape[0] and self.x + self.width <= shape[1]

    def as_dict(self) -> dict[str, int]:
        return {"y": self.y, "x": self.x, "height": self.height, "width": self.width}


# ------------------------------------------------------------- random, choosing


def random_window(corners: Any, seed: int, key: int | str) -> int:
    """A seeded random window id: the same ``(seed, key)`` always gives the same window.

    ``key`` names the image (e.g. its ``image_id``), so different images get
    independent picks; ``key`` is hashed from its text (``3`` and ``"3"`` are the
    same key), not with Python's salted ``hash``, so picks survive restarts.
    """
    n = len(np.asarray(corners))
    if n == 0:
        raise ValueError("no windows to choose from")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    digest = hashlib.blake2b(str(key).encode(), digest_size=8).digest()
    rng = np.random.default_rng([int(seed), int.from_bytes(digest, "little")])
    return int(rng.integers(n))


def rank_by_scores(scores: Any) -> np.ndarray:
    """Window ids ``(n,)`` int64 from best to worst; equal scores keep window-id order, NaN ranks last."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or len(scores) == 0:
        raise ValueError(f"expected scores (n,) with n >= 1, got shape {scores.shape}")
    missing = np.isnan(scores)
    # lexsort is stable and sorts by its last key first: NaN last, then by descending score
    return np.lexsort((np.where(missing, 0.0, -scores), missing))


#: a joint/consensus selector's windows may share at most this fraction of a window's area with
#: each better-ranked window it keeps: neighbours on the grid (82 % shared at stride 40 of 228 px)
#: would add almost no evidence the best window has not already given
MAX_SHARED_AREA = 0.25


def distinct_top(scores: Any, corners: Any, size: int, k: int) -> np.ndarray:
    """Window ids of the ``k`` best windows, each sharing at most ``MAX_SHARED_AREA`` of its area with
    every better-ranked window kept; fewer when the image cannot hold ``k`` such windows.

    Greedy in rank order, so the first id is always the best window.

    >>> corners = np.array([[0, 0], [0, 40], [0, 200], [40, 0]])
    >>> distinct_top([0.9, 0.8, 0.7, 0.6], corners, 228, 3).tolist()  # 1 and 3 overlap 0 by 82 %
    [0, 2]
    >>> distinct_top([0.9, 0.8, 0.7, 0.6], corners, 228, 1).tolist()
    [0]
    """
    corners = np.asarray(corners, dtype=np.int64)
    kept: list[int] = []
    for i in rank_by_scores(scores):
        if len(kept) == k:
            break
        if kept:
            overlap = np.clip(size - np.abs(corners[kept] - corners[i]), 0, None).prod(axis=1)
            if overlap.max() > MAX_SHARED_AREA * size * size:
                continue
        kept.append(int(i))
    return np.asarray(kept, dtype=np.int64)


def best_by_scores(scores: Any) -> int:
    """The best window id: the largest score, the lowest window id among exact ties, NaN never preferred."""
    return int(rank_by_scores(scores)[0])


# ---------------------------------------------------------------------- registry

#: what a selector may need: a file of the model folder, the true kernel, or nothing
NEEDS = ("model", "truth", "nothing")
COMBINE = ("single", "joint", "consensus")


@dataclass
class Context:
    """What a selector sees of one image.

    Attributes
    ----------
    image : (H, W) float32 in [0, 1]
    corners : (n, 2) int, the window grid (``pipeline.windows.grid``), window-id order
    size : window side in px
    kernel_size : odd kernel size the estimator is asked for
    estimate : ``estimate(windows (B, h, w), kernel_size) -> (B, k, k)`` NumPy, one kernel per window
    estimate_joint : ``estimate_joint(windows (K, h, w), kernel_size) -> (k, k)``, one kernel shared by K windows
    model_dir : the ``train`` output folder (for ``needs == "model"``)
    truth : the true kernel (for ``needs == "truth"``)
    labels : stored similarity of each window's estimate to the truth, window-id order (spares the oracle
        its estimates)
    seed, key : the random selector's seed and the image's key (its id or name)
    """

    image: np.ndarray
    corners: np.ndarray
    size: int
    kernel_size: int
    estimate: Callable[[np.ndarray, int], np.ndarray]
    estimate_joint: Callable[[np.ndarray, int], np.ndarray] | None = None
    model_dir: str | None = None
    truth: np.ndarray | None = None
    labels: np.ndarray | None = None
    seed: int = 0
    key: int | str = 0
    loading_seconds: dict[str, float] = field(default_factory=dict, repr=False)  # time spent in :meth:`load`
    _loaded: dict[str, Any] = field(default_factory=dict, repr=False)

    def windows(self, ids: Any) -> np.ndarray:
        """The windows ``ids`` as one ``(len(ids), size, size)`` float32 stack."""
        views = np.lib.stride_tricks.sliding_window_view(np.asarray(self.image, np.float32), (self.size, self.size))
        part = np.asarray(self.corners)[np.asarray(ids, dtype=np.int64)]
        return np.ascontiguousarray(views[part[:, 0], part[:, 1]])

    def load(self, what: str, loader: Callable[[], Any]) -> Any:
        """``loader()`` once per image (a model read from the model folder), timed in ``loading_seconds``."""
        if what not in self._loaded:
            start = time.perf_counter()
            self._loaded[what] = loader()
            self.loading_seconds[what] = time.perf_counter() - start
        return self._loaded[what]


@dataclass(frozen=True)
class Selector:
    """A registered selector, possibly widened to its ``top`` best windows.

    Attributes
    ----------
    name : e.g. ``"cnn"`` or ``"cnn-joint-3"``
    needs : one of :data:`NEEDS`
    scores : ``scores(context) -> (n,)`` float, higher is better; ``None`` for the whole image
    top : how many of the best windows are used
    combine : one of :data:`COMBINE` (``"single"`` when ``top == 1``)
    model_file : the file of the model folder the scorer reads, when ``needs == "model"``
    summary : one line for the help text
    """

    name: str
    needs: str
    scores: Callable[[Context], np.ndarray] | None
    top: int = 1
    combine: str = "single"
    model_file: str | None = None
    summary: str = ""

    @property
    def base(self) -> str:
        """The scorer's registered name (``cnn`` for ``cnn-joint-3``)."""
        return _WIDENED.sub("", self.name)


_REGISTRY: dict[str, Selector] = {}
_WIDENED = re.compile(r"-(joint|consensus)-(\d+)$")


def register(selector: Selector) -> None:
    """Add a selector (names ending in ``-joint-K`` / ``-consensus-K`` are reserved for :func:`get`)."""
    if selector.name in _REGISTRY:
        raise ValueError(f"selector {selector.name!r} is already registered")
    if _WIDENED.search(selector.name) or selector.needs not in NEEDS or selector.combine not in COMBINE:
        raise ValueError(f"selector {selector.name!r}: bad name, needs {selector.needs!r} or combine")
    _REGISTRY[selector.name] = selector


def available() -> list[str]:
    """Registered selector names, in registration order (``-joint-K`` / ``-consensus-K`` forms not listed)."""
    return list(_REGISTRY)


def get(name: str) -> Selector:
    """The selector ``name``: a registered one, or a window selector widened as ``S-joint-K`` / ``S-consensus-K``.

    Raises ``KeyError`` naming the choices for an unknown name.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    match = _WIDENED.search(name)
    base = _REGISTRY.get(name[: match.start()]) if match else None
    if match is None or base is None or base.scores is None or int(match[2]) < 1:
        raise KeyError(
            f"unknown selector {name!r}; registered: {', '.join(available())}, "
            "and S-joint-K / S-consensus-K for a window selector S and K >= 1"
        )
    top, combine = int(match[2]), match[1]
    return Selector(name, base.needs, base.scores, top, combine, base.model_file, f"{base.name}, {combine} of {top}")


def choose(selector: Selector, context: Context, scores: np.ndarray | None = None) -> list[Box]:
    """The regions ``selector`` picks, best first: its ``top`` best windows that overlap little
    (:func:`distinct_top`; fewer if the image cannot hold ``top`` of them).

    ``scores`` are the selector's window scores when already computed (they are shared by ``cnn`` and
    ``cnn-joint-3``).
    """
    if selector.scores is None:
        return [Box.whole(context.image.shape)]
    scores = selector.scores(context) if scores is None else scores
    ids = distinct_top(scores, context.corners, context.size, selector.top)
    return [Box.from_corner(context.corners[i], context.size) for i in ids]


def medoid(kernels: Any) -> int:
    """The kernel with the highest median Hu & Yang similarity to the others, ``(K, k, k)`` -> index.

    Ties go to the lower index (the better-ranked window); one kernel is its own medoid.
    """
    from kernels_gpu.similarity import similarity

    kernels = np.asarray(kernels, dtype=np.float64)
    if len(kernels) == 1:
        return 0
    pairs = np.asarray(similarity(kernels[:, None], kernels[None, :]))
    np.fill_diagonal(pairs, np.nan)
    return best_by_scores(np.nanmedian(pairs, axis=1))


def estimate(selector: Selector, context: Context, boxes: list[Box]) -> tuple[np.ndarray, int]:
    """The kernel ``selector`` estimates from its regions, and the index of the region it came from.

    ``single``: the first region; ``joint``: one kernel shared by every region (index 0, the best);
    ``consensus``: the medoid of the regions' kernels (:func:`medoid`).
    """
    stack = np.stack([np.asarray(context.image[b.slices], np.float32) for b in boxes])
    if selector.combine == "joint":
        if context.estimate_joint is None:
            raise ValueError(f"selector {selector.name}: the estimator has no joint estimation")
        return np.asarray(context.estimate_joint(stack, context.kernel_size)), 0
    kernels = context.estimate(stack, context.kernel_size)
    best = medoid(kernels)
    return np.asarray(kernels[best]), best


# ----------------------------------------------------------- the registered ones


def _fergus(context: Context) -> np.ndarray:
    from .baselines import fergus_scores

    return fergus_scores(context.image, context.corners, context.size)


def _xu_jia(context: Context) -> np.ndarray:
    from .baselines import xu_jia_scores

    return xu_jia_scores(context.image, context.corners, context.size)


def _cnn(context: Context) -> np.ndarray:
    from training.select import cnn_scores, load_classifier

    classifier = context.load("cnn", lambda: load_classifier(context.model_dir, "cpu"))
    return cnn_scores(classifier, context.image, context.corners, context.size)


def _hu_yang(context: Context) -> np.ndarray:
    from .baselines import LogisticRegression, hu_yang_scores

    def load() -> LogisticRegression:
        fitted = json.loads((pathlib.Path(context.model_dir) / "hu_yang.json").read_text())
        return LogisticRegression.from_dict(fitted["model"])

    return hu_yang_scores(context.image, context.corners, context.size, context.load("hu-yang", load))


def _random(context: Context) -> np.ndarray:
    """Seeded scores whose best window is :func:`random_window`'s pick; the rest in a seeded random order."""
    n = len(context.corners)
    pick = random_window(context.corners, context.seed, context.key)
    digest = hashlib.blake2b(f"order:{context.key}".encode(), digest_size=8).digest()
    scores = np.random.default_rng([int(context.seed), int.from_bytes(digest, "little")]).random(n)
    scores[pick] = 2.0  # above every other draw in [0, 1)
    return scores


def _oracle(context: Context) -> np.ndarray:
    """Similarity of each window's estimate to the true kernel (the stored labels when they cover the grid)."""
    from kernels_gpu.similarity import similarity

    if context.labels is not None and len(context.labels) == len(context.corners):
        return np.asarray(context.labels, dtype=np.float64)
    kernels = context.estimate(context.windows(np.arange(len(context.corners))), context.kernel_size)
    return np.asarray(similarity(kernels, context.truth), dtype=np.float64)


register(Selector("cnn", "model", _cnn, model_file="model.pt", summary="the trained classifier's best window"))
register(Selector("fergus", "nothing", _fergus,
                  summary="largest gradient variance, clipped windows rejected (Fergus et al. 2006)"))  # fmt: skip
register(Selector("xu-jia", "nothing", _xu_jia,
                  summary="most gradient on useful edges (Xu & Jia 2010)"))  # fmt: skip
register(Selector("hu-yang", "model", _hu_yang, model_file="hu_yang.json",
                  summary="Gabor features + logistic regression on the same labels (Hu & Yang 2012)"))  # fmt: skip
register(Selector("whole", "nothing", None, summary="the whole image"))
register(Selector("random", "nothing", _random, summary="a seeded random window"))
register(Selector("oracle", "truth", _oracle, summary="the window whose estimate is closest to the true kernel"))

#: what ``evaluate`` compares unless told otherwise
DEFAULT = ("cnn", "fergus", "xu-jia", "hu-yang", "whole", "random", "oracle")
