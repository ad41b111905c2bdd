"""Run the ``goodregions`` command line from a benchmark script, in a fresh process."""

from __future__ import annotations

import subprocess
import sys


def goodregions(*args: str) -> str:
    """Its stdout; the script stops with the command's output if it fails."""
    cmd = [sys.executable, "-c", "from goodregions.cli import main; main()", *args]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode:
        raise SystemExit(run.stdout + run.stderr)
    return run.stdout
