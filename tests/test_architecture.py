"""The import graph and the size of poolkit's modules, read from the source with :mod:`ast`.

What counts as an import:

* **module level**: an ``import`` executed when the module is imported, i.e. one that is not inside a
  function (class bodies and ``try`` blocks count) and not under ``if TYPE_CHECKING:``.
* **function level**: an ``import`` inside a function body, run only when the function is called. The
  harness uses them to defer heavy or optional packages (torch, YAML, the trainer behind a command), never
  to hide a loop: they are edges of the graph like module-level imports, and every rule holds at both
  levels.
* **not counted**: imports under ``if TYPE_CHECKING:``. They never run, so they cannot load a module, order
  the imports or form a loop at run time; they only name a type for an annotation (the registry's
  ``PoolSpec.cls: type[Pool2d]`` names the layers' base class, which registers itself in the registry).

Both levels together form a DAG, module by module (``poolkit.rundir`` -> ``poolkit.train.lock`` ->
``poolkit.rundir`` through a function would be a loop) and package by package: a subpackage of poolkit is
one node (``poolkit.train``), a top-level module another (``poolkit.registry``), so ``poolkit.registry``
importing anything of ``poolkit.layers``, whose modules import the registry, is a loop too.
Command-line modules (``cli``, ``__main__``) sit on top of everything: what they import is left out of the
package graph (``poolkit.train.cli`` may start a sweep's runner).

The rules (``docs/architecture.md``): the library core never imports the harness; the trainer never
imports what launches or analyses it; the launchers depend on the runner, never on the sweep that drives
them; a run directory's file names are spelled in :mod:`poolkit.rundir` only; no module over 600 lines.
An import of ``a.b.c`` is an edge to the deepest poolkit module it names (``from a.b import c`` where
``c`` is a module is an edge to ``a.b.c``); package ``__init__`` files run on the way are not edges.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "poolkit"

#: The library core: ``pip install poolkit`` with torch and numpy alone.
CORE = (
    "poolkit",
    "poolkit.layers",
    "poolkit.models",
    "poolkit.registry",
    "poolkit.functional",
    "poolkit.surgery",
)
#: The harness packages, which need ``poolkit[harness]``.
HARNESS = ("data", "train", "experiments", "analysis", "report", "bench", "tracking")
#: The file names of a run directory, owned by poolkit.rundir.
RUN_FILES = (
    "config.yaml", "env.json", "metrics.csv", "checkpoint.pt", "checkpoint.prev.pt", "result.json",
    "error.json", "shift.json", "lock.json",
)  # fmt: skip
MAX_LINES = 600
#: Modules still over MAX_LINES, each with why it has not been split yet.
TOO_LONG: dict[str, str] = {}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str) -> str | None:
    """The deepest poolkit module that ``name`` names (``poolkit.train.lock.RunLock`` -> the lock module)."""
    modules = _modules()
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _is_type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def _walk(node: ast.AST, level: str) -> Iterator[tuple[ast.AST, str]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            yield from _walk(child, "function")
        elif isinstance(child, ast.If) and _is_type_checking(child):
            for other in child.orelse:
                yield other, level
                yield from _walk(other, level)
        else:
            yield child, level
            yield from _walk(child, level)


@cache
def _imports(module: str) -> tuple[tuple[str, str], ...]:
    """``(imported poolkit module, "module" | "function")`` for every import in ``module``."""
    path = _modules()[module]
    is_package = path.name == "__init__.py"
    found: list[tuple[str, str]] = []
    for node, level in _walk(ast.parse(path.read_text(encoding="utf-8")), "module"):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module if is_package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            names = [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            target = _resolve(name) if name.split(".")[0] == "poolkit" else None
            if target is not None and target != module:
                found.append((target, level))
    return tuple(found)


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _is_entry_point(module: str) -> bool:
    """Command-line modules sit on top of everything: they may import any package."""
    return module.rsplit(".", 1)[-1] in ("cli", "__main__")


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_parser_sees_the_harness_imports() -> None:
    """A check of the checker: edges it must find, at the level they are at."""
    assert ("poolkit.rundir", "module") in _imports("poolkit.train.engine")
    assert ("poolkit.train.lock", "function") in _imports("poolkit.experiments.sweep")
    assert ("poolkit.layers.base", "module") in _imports("poolkit.layers.global_pool")
    assert not any(t.startswith("poolkit.layers") for t, _ in _imports("poolkit.registry"))  # TYPE_CHECKING
    assert _unit("poolkit.train.lock") == "poolkit.train" and _unit("poolkit.rundir") == "poolkit.rundir"
    assert ("poolkit.experiments.runner", "module") in _imports("poolkit.experiments.launchers.local")
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _unit(module: str) -> str:
    """The node of ``module`` in the package graph: its subpackage of poolkit, or the module itself."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and (PACKAGE / parts[1]).is_dir() else module


def _package_edges() -> dict[str, set[str]]:
    """Imports at every level between the package graph's nodes (command-line modules' left out)."""
    edges: dict[str, set[str]] = {}
    for module in _modules():
        edges.setdefault(_unit(module), set())
        if _is_entry_point(module):
            continue
        edges[_unit(module)] |= {_unit(t) for t, _ in _imports(module)} - {_unit(module)}
    return edges


def test_module_level_imports_form_a_dag() -> None:
    edges = {m: {t for t, level in _imports(m) if level == "module"} for m in _modules()}
    assert _cycles(edges) == []


def test_imports_at_every_level_form_a_dag() -> None:
    """Function-level imports included: no module reaches itself, not even through a deferred import."""
    edges = {m: {t for t, _ in _imports(m)} for m in _modules()}
    assert _cycles(edges) == []


def test_packages_form_a_dag_at_every_level() -> None:
    """The registry never imports the layers (they import it), the run directory never the trainer."""
    edges = _package_edges()
    assert {"poolkit.layers", "poolkit.registry", "poolkit.rundir", "poolkit.train"} <= set(edges)
    assert "poolkit.registry" in edges["poolkit.layers"] and "poolkit.rundir" in edges["poolkit.train"]
    assert _cycles(edges) == []


@pytest.mark.parametrize("core", CORE)
def test_the_core_never_imports_the_harness(core: str) -> None:
    harness = tuple(f"poolkit.{name}" for name in HARNESS)
    members = [m for m in _modules() if (_in(m, core) if core != "poolkit" else m == "poolkit")]
    assert members, core
    bad = [
        f"{m} imports {t} ({level} level)"
        for m in members
        for t, level in _imports(m)
        if any(_in(t, h) for h in harness)
    ]
    assert bad == []


def test_the_trainer_never_imports_what_launches_or_analyses_it() -> None:
    above = ("poolkit.analysis", "poolkit.experiments", "poolkit.report", "poolkit.bench")
    bad = [
        f"{m} imports {t} ({level} level)"
        for m in _modules()
        if _in(m, "poolkit.train") and not _is_entry_point(m)
        for t, level in _imports(m)
        if any(_in(t, a) for a in above)
    ]
    assert bad == []


def test_the_launchers_depend_on_the_runner_not_on_the_sweep() -> None:
    launchers = [m for m in _modules() if _in(m, "poolkit.experiments.launchers")]
    assert len(launchers) >= 3
    for module in launchers:
        targets = {t for t, _ in _imports(module)}
        assert "poolkit.experiments.sweep" not in targets, module
    assert "poolkit.experiments.runner" in {t for m in launchers for t, _ in _imports(m)}


def test_only_rundir_spells_a_run_directory_file_name() -> None:
    bad = []
    for module, path in _modules().items():
        if module == "poolkit.rundir":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in RUN_FILES:
                bad.append(f"{module}:{node.lineno}: {node.value!r}")
    assert bad == [], "use poolkit.rundir.RunDir's paths (or its *_FILE names)"


def test_no_module_is_over_600_lines() -> None:
    lengths = {m: len(p.read_text(encoding="utf-8").splitlines()) for m, p in _modules().items()}
    too_long = {m for m, n in lengths.items() if n > MAX_LINES}
    assert too_long - set(TOO_LONG) == set(), {m: lengths[m] for m in too_long - set(TOO_LONG)}
    # An exception that no longer needs to be one is removed from the list.
    assert set(TOO_LONG) - too_long == set(), set(TOO_LONG) - too_long


def test_no_module_shadows_the_standard_library() -> None:
    """``poolkit.io`` shadowed :mod:`io` (it is ``poolkit.atomic`` now) and ``report/html.py`` shadowed
    :mod:`html` (it is ``report/htmlpage.py``); a script run from inside a package folder would import the
    wrong one."""
    names = {m.rsplit(".", 1)[-1] for m in _modules()} - {"__main__"}
    assert names & set(sys.stdlib_module_names) == set()
