"""The labelling pool: Ray actors that label images for ``label`` (:func:`run_labels`).

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

from ..labels import (
    ImageJob,
    LabelPlan,
    label_lock,
    prepare_arrays,
    without_done,
    write_estimator_description,
    write_shard,
)
from ..store import Store
from . import cluster
from .cluster import RayOptions

__all__ = ["LabelRun", "label_image", "run_labels"]

log = logging.getLogger(__name__)

#: attempts per image when workers die under it (node loss), before it is reported as failed
MAX_ATTEMPTS = 4
#: threads publishing finished shards (Parquet + done marker) while the driver keeps the workers busy
PUBLISH_THREADS = 4


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

    from ..windows import grid

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
    cluster.init_ray(options.address, options.object_store_mb)
    n_workers, device, request = cluster._pool_size(options)  # a cluster without the GPUs asked for: before any write
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
