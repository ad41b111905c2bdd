"""Ray for the tests: one local instance per module that needs it (2 CPUs, small object store)."""

from __future__ import annotations

import logging
import os
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def local_ray(num_cpus: int = 2):
    """Start (or reuse) a local Ray; workers get the project on their path."""
    import ray

    if ray.is_initialized():
        return ray
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        object_store_memory=512 * 2**20,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    return ray
