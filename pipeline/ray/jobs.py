"""Independent jobs as Ray tasks: ``evaluate``'s :func:`map_jobs`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import cluster
from .cluster import RayOptions

__all__ = ["map_jobs"]


def map_jobs(
    fn: Callable[[Any, str], dict],
    jobs: list[Any],
    options: RayOptions,
    progress: Callable[[int], None] | None = None,
) -> list[dict]:
    """Run ``fn(job, device)`` for every job as Ray tasks; results in job order.

    ``device`` is the pool's, ``"cpu"`` or ``"gpu"`` (``options.device``, ``"auto"`` resolved
    by the GPUs of the cluster).  ``fn`` must be importable (a module-level function).  A job
    whose task raises gives ``{"error": "..."}`` instead of stopping the others; a task lost
    with its worker is retried by Ray.  At most two tasks per worker are in flight, so the
    driver never holds more than that many results it has not consumed.
    """
    import ray

    if not jobs:
        return []
    cluster.init_ray(options.address, options.object_store_mb)
    n_workers, device, request = cluster._pool_size(options)
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
