"""cluster.yaml passes Ray's own offline validation, and states what the design requires."""

from __future__ import annotations

import copy
import pathlib

import pytest
import yaml

CLUSTER = pathlib.Path(__file__).resolve().parent.parent / "cluster.yaml"


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load(CLUSTER.read_text())


def test_validates_with_ray(raw):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(raw)))


def test_head_runs_no_work_and_workers_have_one_gpu(raw):
    types = raw["available_node_types"]
    assert types[raw["head_node_type"]]["resources"] == {"CPU": 0}
    workers = [t for name, t in types.items() if name != raw["head_node_type"]]
    assert workers and all(t["resources"]["GPU"] == 1 and t["max_workers"] >= 1 for t in workers)


def test_installs_the_project_with_the_matching_cupy_and_torch(raw):
    setup = " ".join(raw["setup_commands"])
    assert "torch==2.14.1" in setup and "[cuda13]" in setup
    assert raw["file_mounts"] == {"~/goodregions": "."}


def test_no_credentials_and_dashboard_not_exposed(raw):
    text = CLUSTER.read_text().lower()
    for secret in ("aws_access_key", "aws_secret", "secret_access_key", "token:", "password"):
        assert secret not in text
    head = " ".join(raw["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head


def test_validation_catches_a_broken_config(raw):
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = copy.deepcopy(raw)
    del broken["available_node_types"]["gpu_worker"]["resources"]
    with pytest.raises(Exception, match="resources"):
        validate_config(prepare_config(broken))
