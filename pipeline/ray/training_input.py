"""``train``'s input on Ray Data: labelled windows (:func:`window_dataset`) or whole images (:func:`image_dataset`).

Actors open the store once per worker and crop or standardise its pixels; the driver's Ray Data
settings are :func:`configure_window_input`.
"""

from __future__ import annotations

from typing import Any

from ..store import Store

__all__ = ["ImageLoader", "WindowCropper", "configure_window_input", "image_dataset", "window_dataset"]


class _PixelReader:
    """Opens the store once per Ray Data worker, and each blurred array once."""

    def __init__(self, store_url: str) -> None:
        self.store = Store(store_url)
        self.arrays: dict[str, Any] = {}

    def pixels(self, name: str, index: int) -> Any:
        import numpy as np

        if name not in self.arrays:
            self.arrays[name] = self.store.array(name)
        return np.asarray(self.arrays[name][int(index)], dtype=np.float32)


class WindowCropper(_PixelReader):
    """Ray Data callable: image rows in, one row per window out (cropped from Zarr, normalised).

    Each input row is one image with the list columns ``y``, ``x``, ``window_id``,
    ``label`` and ``similarity`` of its windows, so a worker decodes each image chunk
    once for all of its windows; the store's arrays are opened once per worker.
    Windows are standardised one by one (zero mean, unit standard deviation): the
    classifier then sees structure, not exposure.
    """

    def __init__(self, store_url: str, window: int) -> None:
        super().__init__(store_url)
        self.window = window

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        from ..windows import standardize

        s = self.window
        out: dict[str, list] = {"window": [], "label": [], "similarity": [], "image_id": [], "window_id": []}
        for i, name in enumerate(batch["blurred_array"]):
            pixels = self.pixels(name, batch["blurred_index"][i])
            ys, xs = np.asarray(batch["y"][i]), np.asarray(batch["x"][i])
            views = np.lib.stride_tricks.sliding_window_view(pixels, (s, s))
            out["window"].append(standardize(views[ys, xs]))
            out["label"].append(np.asarray(batch["label"][i], np.float32))
            out["similarity"].append(np.asarray(batch["similarity"][i], np.float32))
            out["image_id"].append(np.full(len(ys), batch["image_id"][i], np.int64))
            out["window_id"].append(np.asarray(batch["window_id"][i], np.int32))
        return {k: np.concatenate(v) for k, v in out.items()}


class ImageLoader(_PixelReader):
    """Ray Data callable for one-pass scorers: one image row in, the same row out with its pixels.

    ``image`` is the whole blurred image standardised as a whole (``(H, W)`` float32);
    the row keeps its windows' list columns (``y``, ``x``, ``window_id``, ``label``,
    ``similarity``) so the scorer pools every window's box from one pass.
    """

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        from ..windows import standardize

        out: dict[str, list] = {"image": [], "y": [], "x": [], "label": [], "similarity": [], "window_id": []}
        for i, name in enumerate(batch["blurred_array"]):
            out["image"].append(standardize(self.pixels(name, batch["blurred_index"][i])[None])[0])
            for column, dtype in (("y", np.int32), ("x", np.int32), ("window_id", np.int32)):
                out[column].append(np.asarray(batch[column][i], dtype))
            for column in ("label", "similarity"):
                out[column].append(np.asarray(batch[column][i], np.float32))
        rows = {k: _column(v) for k, v in out.items()}
        rows["image_id"] = np.asarray(batch["image_id"], np.int64)
        return rows


def _column(values: list) -> Any:
    """One batch column of arrays: stacked when they share a shape, else an object array (ragged)."""
    import numpy as np

    if len({v.shape for v in values}) == 1:
        return np.stack(values)
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


def configure_window_input(preserve_order: bool = True) -> None:
    """The driver's Ray Data settings for the training input: no progress bars; blocks in order.

    Set on the driver's current ``DataContext``, which datasets copy when they are made and
    Ray Train reads for its ingest options.  Kept order makes the batches, and so a seeded run,
    the same from run to run (without it a run diverged from the second epoch on).
    """
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.execution_options.preserve_order = preserve_order


def window_dataset(index: Any, store_url: str, window: int, workers: int = 1, num_cpus: float = 0.25) -> Any:
    """A Ray Dataset of labelled windows from an image-level index table (see ``WindowCropper``)."""
    return _labelled_dataset(index, WindowCropper, {"store_url": store_url, "window": window}, workers, num_cpus)


def image_dataset(index: Any, store_url: str, workers: int = 1, num_cpus: float = 0.25) -> Any:
    """A Ray Dataset of whole labelled images with their windows' lists (see ``ImageLoader``)."""
    return _labelled_dataset(index, ImageLoader, {"store_url": store_url}, workers, num_cpus)


def _labelled_dataset(index: Any, loader: type, kwargs: dict, workers: int, num_cpus: float) -> Any:
    """The index handed over as several blocks (no repartition task), mapped by ``workers`` loader actors.

    The actors ask for a fraction of a CPU: on a small machine Ray Data deadlocks when
    its tasks, its actors and the trainers together need every CPU.
    """
    import ray

    blocks = max(1, min(index.num_rows, 4 * workers))
    step = -(-index.num_rows // blocks)
    parts = [index.slice(i, step) for i in range(0, index.num_rows, step)] or [index]
    return ray.data.from_arrow(parts).map_batches(
        loader,
        fn_constructor_kwargs=kwargs,
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=num_cpus,
    )
