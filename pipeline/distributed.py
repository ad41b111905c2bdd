"""Ray execution: the one module that touches Ray's actor and ``map_batches`` APIs.

A pool of ``LabelWorker`` actors, each owning a GPU (CuPy) or a share of CPUs
(NumPy), builds its estimator once and labels one image per call: all of the
image's windows go through the estimator as one batch, the estimated kernels go
into the store's Zarr array, and the per-window similarities come back to the
driver.  The driver keeps every worker busy, assembles finished shards and
publishes them (``labels.write_shard``).  A worker whose node dies is restarted
by Ray and its image resubmitted; an image that raises is reported, not retried
within the run.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .files import InputError
from .labels import (
    ImageJob,
    LabelPlan,
    label_lock,
    prepare_arrays,
    without_done,
    write_estimator_description,
    write_shard,
)
from .store import Store

__all__ = ["LabelRun", "RayOptions", "init_ray", "label_image", "run_labels"]

log = logging.getLogger(__name__)

#: attempts per image when workers die under it (node loss), before it is reported as failed
MAX_ATTEMPTS = 4
#: threads publishing finished shards (Parquet + done marker) while the driver keeps the workers busy
PUBLISH_THREADS = 4


@dataclass(frozen=True, kw_only=True)
class RayOptions:
    address: str | None = None  # None: start a local Ray sized to this machine
    workers: int = 0  # 0: as many as the resources allow
    device: str = "auto"  # "auto", "cpu" or "gpu"
    gpus_per_worker: float = 1.0
    cpus_per_worker: float = 1.0
    object_store_mb: int = 1024


@dataclass(frozen=True)
class LabelRun:
    planned_images: int
    planned_windows: int
    done_windows: int
    failed: dict[int, str]
    seconds: float
    workers: int
    device: str


def label_image(
    job: ImageJob, estimator: Any, device: str, worker: str, node: str, fft_workers: int | None = None
) -> dict[str, Any]:
    """Estimate every window of one image and score it against the true kernel (no Ray here).

    ``fft_workers``: threads of the CPU FFTs (default every core this process may use).
    """
    import numpy as np

    from kernels_gpu.backend import to_device, to_numpy
    from kernels_gpu.similarity import similarity

    from .windows import grid

    store = Store(job.store_url)
    pixels = np.asarray(store.array(job.blurred_array)[job.blurred_index], dtype=np.float32)
    if not np.isfinite(pixels).all():
        raise ValueError(f"blurred pixels of image {job.image_id} are missing or not finite")
    corners = grid(job.height, job.width, job.window, job.stride)
    s = job.window
    windows = np.stack([pixels[y : y + s, x : x + s] for y, x in corners])
    truth = store.kernel(job.kernel_index, job.kernel_size)
    start = time.perf_counter()
    batch = to_device(windows, device)
    kernels = estimator(batch, job.estimate_size, fft_workers=fft_workers)
    scores = to_numpy(similarity(kernels, to_device(truth, device)))
    kernels = to_numpy(kernels)
    seconds = time.perf_counter() - start
    store.array(job.estimates_array, "r+")[job.blurred_index] = kernels
    return {
        "image_id": job.image_id,
        "similarity": scores.astype(np.float32),
        "seconds": seconds,
        "worker": worker,
        "node": node,
        "device": device,
    }


class LabelWorker:
    """A Ray actor: builds its estimator once, then labels one image per call."""

    def __init__(self, estimator: str, params: dict, device: str, threads: int) -> None:
        from kernels_gpu import estimators

        self.threads = max(1, threads)  # one actor per share of CPUs: keep scipy.fft inside that share
        self.estimator = estimators.get(estimator, **params)
        self.device = device
        import ray

        context = ray.get_runtime_context()
        self.node = f"{socket.gethostname()}:{context.get_node_id()[:8]}"
        self.worker = f"{self.node}/pid{os.getpid()}"

    def label(self, job: ImageJob) -> dict[str, Any]:
        try:
            return label_image(job, self.estimator, self.device, self.worker, self.node, self.threads)
        except Exception as exc:  # one bad image must not take the job down
            return {"image_id": job.image_id, "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}

    def where(self) -> str:
        return self.worker


def init_ray(
    address: str | None = None,
    object_store_mb: int = 1024,
    *,
    log_to_driver: bool = False,
    dashboard: bool = False,
    num_cpus: int | None = None,
) -> None:
    """Join the Ray cluster at ``address``, or start a local Ray sized to this machine; nothing if Ray is up.

    Without an address a new local instance starts whatever else runs on the machine
    (``address="local"``): ``ray.init()`` alone would join a cluster it finds through
    ``RAY_ADDRESS`` or ``/tmp/ray`` and then refuse ``num_cpus``.
    ``dashboard=True`` leaves ``ray.init``'s default (the dashboard starts): Ray Train V2 needs
    its State API, or it logs "Failed to query Ray Train Controller actor state" every second of a
    ``fit()``.  ``num_cpus``: the local instance's logical CPUs (default: the cores this process may use).
    """
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=log_to_driver)
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        address="local",
        num_cpus=num_cpus or len(os.sched_getaffinity(0)),
        include_dashboard=None if dashboard else False,
        logging_level=logging.WARNING,
        object_store_memory=object_store_mb * 2**20,
        log_to_driver=log_to_driver,
    )


def _pool_size(options: RayOptions) -> tuple[int, str, dict]:
    """Number of workers, their device, and their Ray resource request."""
    import ray

    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0)
    device = options.device
    if device == "auto":
        device = "gpu" if gpus >= options.gpus_per_worker > 0 else "cpu"
    if device == "gpu":
        if gpus < options.gpus_per_worker:
            raise InputError(f"device: gpu requested, but the cluster has {gpus:g} GPUs")
        request = {"num_gpus": options.gpus_per_worker, "num_cpus": min(options.cpus_per_worker, 1.0)}
        fit = int(gpus // options.gpus_per_worker)
    else:
        request = {"num_cpus": options.cpus_per_worker}
        fit = int(resources.get("CPU", 1) // options.cpus_per_worker)
    return max(1, options.workers or fit), device, request


def run_labels(
    store: Store,
    estimator: Any,
    plan: LabelPlan,
    options: RayOptions,
    progress: Callable[[int], None] | None = None,
    *,
    wait: bool = False,
) -> LabelRun:
    """Compute every shard of ``plan`` on a Ray actor pool and publish each shard as it completes.

    Holds the estimator's label lock (:func:`~pipeline.labels.label_lock`; a caller may hold it
    already, from before it planned): another run for the same estimator raises
    :class:`~pipeline.store.StoreBusy`, or with ``wait`` runs after it, and images that it
    finished in the meantime are dropped from ``plan``.
    Workers are used only once they have started (a replacement for a worker lost
    with its node may wait for resources without holding up the others); an image
    whose worker dies is resubmitted, up to ``MAX_ATTEMPTS`` times.
    """
    with label_lock(store, plan.estimator_id, wait):
        return _run_labels_locked(store, estimator, without_done(store, plan), options, progress)


def _run_labels_locked(
    store: Store, estimator: Any, plan: LabelPlan, options: RayOptions, progress: Callable[[int], None] | None
) -> LabelRun:
    import ray

    start = time.perf_counter()
    jobs = [j for _, shard in plan.shards for j in shard]
    if not jobs:
        return LabelRun(0, 0, 0, {}, 0.0, 0, "none")
    init_ray(options.address, options.object_store_mb)
    n_workers, device, request = _pool_size(options)  # a cluster without the GPUs asked for: before any write
    write_estimator_description(store, estimator)
    prepare_arrays(store, plan)
    n_workers = min(n_workers, len(jobs))
    threads = max(1, int(request.get("num_cpus", 1))) if device == "cpu" else 1
    actor_cls = ray.remote(max_restarts=0, max_task_retries=0, **request)(LabelWorker)
    params = estimator.describe()["params"]
    lost = ray.exceptions.RayActorError, ray.exceptions.ObjectLostError, ray.exceptions.WorkerCrashedError

    starting: dict[Any, Any] = {}  # where() ref -> actor not yet known to be up
    idle: list[Any] = []
    in_flight: dict[Any, tuple[Any, ImageJob]] = {}
    spare_starts = 2 * n_workers  # replacements allowed before giving up on workers that cannot start

    def start_worker() -> None:
        actor = actor_cls.remote(estimator.name, params, device, threads)
        starting[actor.where.remote()] = actor

    for _ in range(n_workers):
        start_worker()

    run_id = uuid.uuid4().hex[:12]
    publisher = concurrent.futures.ThreadPoolExecutor(max_workers=PUBLISH_THREADS)
    publishing: list[concurrent.futures.Future] = []
    shard_of = {j.image_id: name for name, shard in plan.shards for j in shard}
    waiting = {name: {j.image_id for j in shard} for name, shard in plan.shards}
    results: dict[str, list[dict]] = {name: [] for name, _ in plan.shards}
    started: dict[str, float] = {}
    attempts: dict[int, int] = {}
    queue = list(reversed(jobs))
    failed: dict[int, str] = {}
    done_windows = 0

    def finish(job: ImageJob, result: dict) -> None:
        nonlocal done_windows
        shard = shard_of[job.image_id]
        results[shard].append(result)
        waiting[shard].discard(job.image_id)
        if "error" in result:
            failed[job.image_id] = result["error"]
            log.warning("image %d failed: %s", job.image_id, result["error"])
        else:
            done_windows += len(result["similarity"])
            if progress:
                progress(len(result["similarity"]))
        if not waiting[shard]:
            meta = {"run": run_id, "started": started[shard], "finished": time.time(), "device": device}
            # published by a small thread pool: on object storage a shard's two PUTs cost tens of ms,
            # which the driver would otherwise pay between handing out images
            publishing.append(publisher.submit(write_shard, store, plan.estimator_id, shard, results.pop(shard), meta))

    while queue or in_flight:
        while queue and idle:
            job, actor = queue.pop(), idle.pop()
            started.setdefault(shard_of[job.image_id], time.time())
            in_flight[actor.label.remote(job)] = (actor, job)
        if not in_flight and not starting:
            raise RuntimeError("no labelling worker could start; see the Ray logs")
        ready, _ = ray.wait([*in_flight, *starting], num_returns=1)
        ref = ready[0]
        if ref in starting:
            actor = starting.pop(ref)
            try:
                ray.get(ref)
                idle.append(actor)
            except lost as exc:
                log.warning("a labelling worker failed to start: %s", type(exc).__name__)
                if spare_starts > 0:
                    spare_starts -= 1
                    start_worker()
            continue
        actor, job = in_flight.pop(ref)
        try:
            result = ray.get(ref)
        except lost as exc:
            attempts[job.image_id] = attempts.get(job.image_id, 0) + 1
            log.warning(
                "worker lost under image %d (attempt %d): %s", job.image_id, attempts[job.image_id], type(exc).__name__
            )
            ray.kill(actor, no_restart=True)
            start_worker()  # placed when resources allow; the others carry on meanwhile
            if attempts[job.image_id] < MAX_ATTEMPTS:
                queue.append(job)
                continue
            result = {"image_id": job.image_id, "error": f"worker lost {MAX_ATTEMPTS} times ({type(exc).__name__})"}
        else:
            idle.append(actor)
        finish(job, result)

    for actor in [*idle, *starting.values()]:
        ray.kill(actor)
    publisher.shutdown(wait=True)
    for future in publishing:
        future.result()  # a failed publish is an error of the run: its shard will be recomputed on the rerun
    return LabelRun(len(jobs), plan.todo_windows, done_windows, failed, time.perf_counter() - start, n_workers, device)


# ----------------------------------------------------------------------------- windows for training


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

        from .windows import standardize

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

        from .windows import standardize

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


# ----------------------------------------------------------------------------- independent jobs


def map_jobs(
    fn: Callable[[Any], dict], jobs: list[Any], options: RayOptions, progress: Callable[[int], None] | None = None
) -> list[dict]:
    """Run ``fn(job)`` for every job as Ray tasks; results in job order.

    ``fn`` must be importable (a module-level function).  A job whose task raises
    gives ``{"error": "..."}`` instead of stopping the others; a task lost with its
    worker is retried by Ray.  At most two tasks per worker are in flight, so the
    driver never holds more than that many results it has not consumed.
    """
    import ray

    if not jobs:
        return []
    init_ray(options.address, options.object_store_mb)
    n_workers, device, request = _pool_size(options)
    task = ray.remote(max_retries=3, **request)(_call_reporting_errors)
    results: list[dict | None] = [None] * len(jobs)
    pending = list(range(len(jobs)))[::-1]
    in_flight: dict[Any, int] = {}
    while pending or in_flight:
        while pending and len(in_flight) < 2 * n_workers:
            i = pending.pop()
            in_flight[task.remote(fn, jobs[i], device)] = i
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        i = in_flight.pop(ready[0])
        results[i] = ray.get(ready[0])
        if progress:
            progress(1)
    return results  # type: ignore[return-value]


def _call_reporting_errors(fn: Callable[..., dict], job: Any, device: str) -> dict:
    try:
        return fn(job, device)
    except Exception as exc:  # reported per job; the run goes on
        return {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
