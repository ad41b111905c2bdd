"""Joining or starting Ray, and the size, device and resource request of a pool of workers.

The consumers (:mod:`.labelling`, :mod:`.jobs`) call these through this module
(``cluster.init_ray``), so there is one place to replace them, as a test does.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from ..files import InputError

__all__ = ["RayOptions", "init_ray"]


@dataclass(frozen=True, kw_only=True)
class RayOptions:
    address: str | None = None  # None: start a local Ray sized to this machine
    workers: int = 0  # 0: as many as the resources allow
    device: str = "auto"  # "auto", "cpu" or "gpu"
    gpus_per_worker: float = 1.0
    cpus_per_worker: float = 1.0
    object_store_mb: int = 1024


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
