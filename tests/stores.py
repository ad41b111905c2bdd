"""Helpers for the store tests: the CLI, byte snapshots of a store, one-line errors, small settings."""

from __future__ import annotations

import pathlib

from click.testing import CliRunner, Result

from goodregions.cli import main

#: small images so a test store takes a fraction of a second: 160 px, 96 px windows at stride 32
SIZE, WINDOW, STRIDE, MARGIN = 160, 96, 32, 32
SMALL = ["--size", SIZE, "--window", WINDOW, "--stride", STRIDE, "--kernel-sizes", "11:25"]
WINDOWS_PER_SMALL_IMAGE = 4  # (160 - 96) // 32 = 2 per axis


def cli(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def ok(*args: object) -> Result:
    """Run a command that must succeed."""
    result = cli(*args)
    assert result.exit_code == 0, result.output
    assert result.exception is None, result.exception
    return result


def one_line_error(result: Result, *needles: str) -> str:
    """Assert exit != 0, no traceback, and exactly one output line ``Error: ...`` containing ``needles``."""
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error:"), result.output
    for needle in needles:
        assert needle in lines[0], result.output
    return lines[0]


def snapshot(root: str | pathlib.Path) -> dict[str, bytes]:
    """Every file under ``root`` (a local directory), by relative path -> bytes."""
    root = pathlib.Path(root)
    if not root.exists():
        return {}
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def chunk_files(snap: dict[str, bytes], array: str, rows: range) -> dict[str, bytes]:
    """The chunk files of ``rows`` of a zarr v3 array (one chunk per row) in a snapshot."""
    return {f"{array}/c/{r}/0/0": snap[f"{array}/c/{r}/0/0"] for r in rows}
