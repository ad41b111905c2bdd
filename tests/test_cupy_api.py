"""Every CuPy name the GPU code path calls exists in the installed CuPy (no GPU needed).

The NumPy path is what the CPU tests run; the CuPy path runs only on a GPU machine, where a
misspelt or missing ``xp.<name>`` would cost a GPU call to find.  This reads the source with
``ast`` and collects, so that new calls are covered without editing this file:

* attribute chains on the array module: ``xp.<name>`` (and ``cp``/``cupy``/``cupyx``, and any
  name bound to ``get_array_module(...)``), e.g. ``xp.take_along_axis``, ``xp.float32``;
* attribute chains on what the backend's dispatch functions return on the GPU
  (``backend.ndimage(xp)`` -> ``cupyx.scipy.ndimage``, ``backend._fft_module`` ->
  ``cupyx.scipy.fft``), found from their ``return cupyx...`` statements, whether called
  inline (``ndimage(xp).zoom``) or bound first (``nd = ndimage(xp)``; ``mod, kw = _fft_module(x)``);
* the keyword arguments of those calls (``zoom(..., grid_mode=True)``,
  ``irfft2(..., overwrite_x=...)``), checked against the CuPy function's signature where
  it has one (CuPy's ufuncs have none).

Each dotted path is then resolved in the installed ``cupy``/``cupyx`` with ``getattr``.
Importing CuPy needs no device, so this runs on any machine with ``cupy-cuda12x`` or
``cupy-cuda13x`` installed and is skipped where CuPy is not installed.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pathlib
import textwrap
from dataclasses import dataclass

import pytest

cupy = pytest.importorskip("cupy", reason="CuPy is not installed (pip install cupy-cuda13x or cupy-cuda12x)")

ROOT = pathlib.Path(__file__).resolve().parent.parent
#: the source read for calls: the numerics, the pipeline around them and the benchmarks that time them
SOURCES = ("kernels_gpu", "pipeline", "benchmarks")
BACKEND = ROOT / "kernels_gpu" / "backend.py"

#: names that stand for the array module wherever they appear (``xp`` is the project's convention)
MODULE_NAMES = {"xp": "cupy", "cp": "cupy", "cupy": "cupy", "cupyx": "cupyx"}


@dataclass(frozen=True)
class Use:
    path: str  # dotted CuPy path, e.g. "cupyx.scipy.ndimage.zoom"
    where: str  # "file:line"
    keywords: tuple[str, ...] = ()  # keyword arguments of a call of it


def _chain(node: ast.AST) -> tuple[ast.AST, list[str]]:
    """``a.b.c`` -> (node of ``a``, ["b", "c"])."""
    attrs: list[str] = []
    while isinstance(node, ast.Attribute):
        attrs.append(node.attr)
        node = node.value
    return node, attrs[::-1]


def _callee_name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def _base_module(node: ast.AST, aliases: dict[str, str], dispatch: dict[str, str]) -> str | None:
    """The CuPy module that ``node`` stands for on the GPU path, if any."""
    if isinstance(node, ast.Name):
        return aliases.get(node.id)
    if isinstance(node, ast.Call):
        return dispatch.get(_callee_name(node) or "")
    if isinstance(node, ast.Attribute):
        base, attrs = _chain(node)
        module = _base_module(base, aliases, dispatch)
        return ".".join([module, *attrs]) if module else None
    return None


def _scope_aliases(nodes: list[ast.AST], dispatch: dict[str, str]) -> dict[str, str]:
    """Names bound in a scope to a CuPy module: imports, ``xp = get_array_module(...)``, ``nd = ndimage(xp)``."""
    aliases = dict(MODULE_NAMES)
    for node in nodes:
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in ("cupy", "cupyx"):
                    if a.asname:
                        aliases[a.asname] = a.name
                    else:
                        aliases[a.name.split(".")[0]] = a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("cupy", "cupyx"):
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        elif isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
            module = _base_module(value, aliases, dispatch)
            if isinstance(value, ast.BoolOp):  # xp = xp or np
                module = next((m for m in (_base_module(v, aliases, dispatch) for v in value.values) if m), None)
            if module is None:
                continue
            if isinstance(target, ast.Name):
                aliases[target.id] = module
            elif isinstance(target, ast.Tuple) and target.elts and isinstance(target.elts[0], ast.Name):
                aliases[target.elts[0].id] = module  # mod, kw = _fft_module(x): the module comes first
    return aliases


def dispatch_functions(tree: ast.Module) -> dict[str, str]:
    """Functions of the backend that return a CuPy module on the GPU path, and which module.

    ``return cupyx.scipy.ndimage``, ``return cupyx.scipy.fft, {}`` and ``return cp`` (a name bound to
    CuPy) count; their NumPy-side returns do not.
    """
    dispatch: dict[str, str] = {}
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
    for _ in range(3):  # functions calling each other: to a fixed point
        for func in functions:
            aliases = _scope_aliases(list(ast.walk(func)), dispatch)
            for node in ast.walk(func):
                if isinstance(node, ast.Return) and node.value is not None:
                    value = node.value.elts[0] if isinstance(node.value, ast.Tuple) else node.value
                    module = _base_module(value, aliases, dispatch)
                    if module and func.name not in dispatch:
                        dispatch[func.name] = module
    return dispatch


def _local_nodes(scope: ast.AST) -> list[ast.AST]:
    """The nodes of a function (nested ones included), or of a module outside its functions and classes."""
    if not isinstance(scope, ast.Module):
        return list(ast.walk(scope))
    nodes: list[ast.AST] = []
    todo = [n for n in scope.body if not isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)]
    while todo:
        node = todo.pop()
        nodes.append(node)
        todo.extend(c for c in ast.iter_child_nodes(node) if not isinstance(c, ast.FunctionDef | ast.AsyncFunctionDef))
    return nodes


def collect(source: str, filename: str, dispatch: dict[str, str]) -> set[Use]:
    """Every CuPy attribute path used in ``source``: one :class:`Use` per chain (``xp.fft.rfft2``, not ``xp.fft``)."""
    tree = ast.parse(source, filename)
    uses: set[Use] = set()
    scopes = [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef))]
    for scope in scopes:
        nodes = _local_nodes(scope)
        aliases = _scope_aliases(nodes, dispatch)
        calls = {id(n.func): n for n in nodes if isinstance(n, ast.Call)}
        inner = {id(n.value) for n in nodes if isinstance(n, ast.Attribute)}  # links inside a longer chain
        for node in nodes:
            if not isinstance(node, ast.Attribute) or id(node) in inner:
                continue
            base, attrs = _chain(node)
            module = _base_module(base, aliases, dispatch)
            if module is None:
                continue
            call = calls.get(id(node))
            keywords = tuple(sorted(k.arg for k in call.keywords if k.arg)) if call else ()
            uses.add(Use(".".join([module, *attrs]), f"{filename}:{node.lineno}", keywords))
    return uses


def resolve(path: str) -> object:
    """The object at the dotted ``path`` in the installed CuPy (importing subpackages as needed)."""
    parts = path.split(".")
    obj = importlib.import_module(parts[0])
    for i, name in enumerate(parts[1:], start=1):
        try:
            obj = getattr(obj, name)
        except AttributeError:
            try:  # a subpackage not imported by its parent (cupyx.scipy.ndimage)
                obj = importlib.import_module(".".join(parts[: i + 1]))
            except ImportError:
                raise AttributeError(f"{'.'.join(parts[:i])} has no attribute {name!r}") from None
    return obj


def problems(uses: set[Use]) -> list[str]:
    """One line per use whose name CuPy lacks, or whose keyword its CuPy function does not accept."""
    found = []
    for use in sorted(uses, key=lambda u: (u.path, u.where)):
        try:
            obj = resolve(use.path)
        except AttributeError as e:
            found.append(f"{use.where}: {use.path}: {e}")
            continue
        accepted = keywords_of(obj) if use.keywords else None
        for kw in use.keywords if accepted is not None else ():
            if kw not in accepted:
                found.append(f"{use.where}: {use.path}() takes no keyword {kw!r}")
    return found


def keywords_of(obj: object) -> set[str] | None:
    """The keyword arguments ``obj`` accepts; None when any would do or it has no signature (ufuncs, Cython)."""
    try:
        params = inspect.signature(obj).parameters  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return {n for n, p in params.items() if p.kind is not inspect.Parameter.POSITIONAL_ONLY}


def _parse_files() -> tuple[dict[str, str], set[Use]]:
    dispatch = dispatch_functions(ast.parse(BACKEND.read_text(), str(BACKEND)))
    uses: set[Use] = set()
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            uses |= collect(path.read_text(), str(path.relative_to(ROOT)), dispatch)
    return dispatch, uses


@pytest.fixture(scope="module")
def gpu_path() -> tuple[dict[str, str], set[Use]]:
    return _parse_files()


def test_backend_dispatch_is_found(gpu_path):
    dispatch, _ = gpu_path
    assert dispatch["ndimage"] == "cupyx.scipy.ndimage"
    assert dispatch["_fft_module"] == "cupyx.scipy.fft"
    assert dispatch["get_array_module"] == "cupy"


def test_every_cupy_name_exists(gpu_path):
    _, uses = gpu_path
    paths = sorted({u.path for u in uses})
    # the collector must see the GPU path at all: the FFT and ndimage dispatch and the plain xp calls
    for expected in (
        "cupyx.scipy.fft.rfft2",
        "cupyx.scipy.fft.irfft2",
        "cupyx.scipy.ndimage.zoom",
        "cupyx.scipy.ndimage.label",
        "cupy.take_along_axis",
        "cupy.float32",
    ):
        assert expected in paths, f"{expected} not found by the source scan: the collector is broken"
    bad = problems(uses)
    with_keywords = [u for u in uses if u.keywords and not any(u.where in b for b in bad)]
    checked = sum(1 for u in with_keywords if keywords_of(resolve(u.path)) is not None)
    print(
        f"\nchecked {len(paths)} CuPy names in {len(uses)} uses against cupy {cupy.__version__}; the keywords of "
        f"{checked} of the {len(with_keywords)} calls with keywords against their signatures (ufuncs have none):"
    )
    print("  " + " ".join(paths))
    assert not bad, "names or keywords missing in CuPy " + cupy.__version__ + ":\n" + "\n".join(bad)


def test_a_missing_name_fails():
    """The check itself: a bogus name, a bogus dispatched name and a bogus keyword are all reported."""
    backend = ast.parse(BACKEND.read_text())
    dispatch = dispatch_functions(backend)
    source = textwrap.dedent(
        """
        from kernels_gpu.backend import get_array_module, ndimage, _fft_module

        def f(x):
            xp = get_array_module(x)
            nd = ndimage(xp)
            mod, kw = _fft_module(x)
            a = xp.no_such_function(x) + xp.linalg.no_such_solver(x) + xp.zeros(3)
            b = nd.no_such_filter(x) + ndimage(xp).gaussian_filter(x, 1.0, no_such_keyword=1)
            return mod.no_such_fft(x), mod.rfft2(x, s=(8, 8))
        """
    )
    uses = collect(source, "bogus.py", dispatch)
    bad = "\n".join(problems(uses))
    for name in ("no_such_function", "no_such_solver", "no_such_filter", "no_such_fft", "no_such_keyword"):
        assert name in bad, f"{name} was not reported:\n{bad}"
    assert "zeros" not in bad and "rfft2" not in bad, bad
