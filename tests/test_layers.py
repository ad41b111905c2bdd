"""The layers import one way: kernels_gpu <- pipeline <- training <- goodregions (the command line).

Every ``import`` statement of every module counts, at any depth: a lazy import inside a
function is still a dependency.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

#: what each package must never import (its own layer and those below are fine)
FORBIDDEN = {
    "kernels_gpu": {"pipeline", "training", "goodregions", "ray", "torch", "torchvision", "zarr", "pyarrow", "click"},
    "pipeline": {"training", "goodregions", "torch", "torchvision", "click"},
    "training": {"goodregions", "click"},
}


def _imports(path: pathlib.Path) -> set[str]:
    """Top-level names of every module that ``path`` imports, anywhere in the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_one_way(package):
    modules = sorted((ROOT / package).rglob("*.py"))
    assert modules, f"no modules found in {package}"
    wrong = {
        str(path.relative_to(ROOT)): sorted(_imports(path) & FORBIDDEN[package])
        for path in modules
        if _imports(path) & FORBIDDEN[package]
    }
    assert not wrong, f"{package} imports what it must not: {wrong}"


def test_the_checker_sees_lazy_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from training.train import run_training\n    import torch.nn\n")
    assert _imports(module) == {"training", "torch"}


def test_only_the_command_line_uses_click():
    users = sorted(
        str(p.relative_to(ROOT))
        for package in ("kernels_gpu", "pipeline", "training", "goodregions")
        for p in (ROOT / package).rglob("*.py")
        if "click" in _imports(p)
    )
    assert users and all(u.startswith("goodregions/") for u in users), users
