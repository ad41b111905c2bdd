"""Ray for the tests: one local instance per module that needs it (2 CPUs, small object store)."""

from __future__ import annotations

import os
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def local_ray(num_cpus: int = 2):
    """Start (or reuse) a local Ray; workers get the project on their path."""
    import ray

    from pipeline.ray.cluster import init_ray

    if ray.is_initialized():
        return ray
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    init_ray(object_store_mb=512, num_cpus=num_cpus)
    return ray
