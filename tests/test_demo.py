"""The README's first command: ``demo`` runs every stage end to end (here at a small size)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

from tests.raytools import ROOT

SMALL = "DemoConfig(out=OUT, num_kernels=2, kernel_sizes=(7, 13), size=128, window=64, stride=32, epochs=1)"


def test_demo_runs_every_stage(tmp_path):
    out = tmp_path / "demo"
    code = (
        "from goodregions.demo import DemoConfig, run_demo; import json; "
        f"OUT = {str(out)!r}; print(json.dumps(run_demo({SMALL})))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for stage in ("synth:", "label:", "train:", "select:", "evaluate:"):
        assert stage in run.stdout
    outputs = json.loads(run.stdout.strip().splitlines()[-1])
    for path in outputs.values():
        assert pathlib.Path(path).stat().st_size > 0, path
    table = (out / "evaluate" / "results.md").read_text()
    for selector in ("cnn", "fergus", "xu-jia", "hu-yang", "whole", "random", "oracle"):
        assert f"| {selector} |" in table
    chosen = json.loads((out / "select" / "windows.json").read_text())
    assert 0 < chosen["similarity_to_true_kernel"] <= 1
    assert not (out / "model" / "ray_results").exists()
