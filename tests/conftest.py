"""Shared fixtures: test data paths, the gpu marker's skip, and per-dtype tolerances."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

DATA = pathlib.Path(__file__).resolve().parent / "data"


def _cuda() -> bool:
    from kernels_gpu.backend import gpu_available

    return gpu_available()


def pytest_collection_modifyitems(config, items):
    if _cuda():
        return
    skip = pytest.mark.skip(reason="needs CuPy and a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
    return DATA


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
