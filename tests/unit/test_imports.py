"""The import graph of the ``llmaas`` package: no cycles, and the layers stay in order.

Every module of ``platform/llmaas`` and of ``deployments/`` (installed as ``llmaas.deployments``,
see pyproject.toml) is parsed with ``ast``, not imported, and every import counts, those inside
functions too: a lazy import that closes a loop is still a cycle, only hidden until some call
order trips it. ``from a.b import c`` is an edge to module ``a.b.c`` when there is one, else to
``a.b``; an import of a package is an edge to its ``__init__``. Imports under
``if TYPE_CHECKING:`` never run, so they make no cycle (the layer rules count them all the same).

The layers: nothing imports the CLI (``llmaas.cli``) but the CLI itself, and the library
(``platform/llmaas``) never imports the Serve layer (``llmaas.deployments``) sitting above it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Package name -> the folder that holds it (pyproject.toml's package-dir mapping).
SOURCES = {"llmaas": ROOT / "platform" / "llmaas", "llmaas.deployments": ROOT / "deployments"}
CLI = "llmaas.cli"
SERVE_LAYER = "llmaas.deployments"


@dataclass(frozen=True)
class Edge:
    """One import statement of an llmaas module that reaches another llmaas module."""

    source: str
    target: str
    where: str  # path:line
    lazy: bool  # inside a function: runs at call time
    type_only: bool  # under ``if TYPE_CHECKING:``: never runs

    def describe(self) -> str:
        return f"{self.source} -> {self.target} ({self.where}{', lazy' if self.lazy else ''})"


def discover(sources: Mapping[str, Path] = SOURCES) -> dict[str, Path]:
    """Module name -> file, for every ``.py`` file under the package folders."""
    modules: dict[str, Path] = {}
    for package, folder in sources.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _known(name: str, modules: Iterable[str]) -> str | None:
    """``name`` or its longest prefix that is a known module (``a.b.Class`` -> ``a.b``)."""
    known = set(modules)
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return None


def imports_of(
    module: str, source: str, modules: Iterable[str], *, is_package: bool, where: str = ""
) -> list[Edge]:
    """The edges from ``module`` (its ``source`` text) to other modules of ``modules``."""
    known = set(modules)
    edges: list[Edge] = []
    package = module if is_package else module.rpartition(".")[0]

    def add(target: str | None, node: ast.stmt, lazy: bool, type_only: bool) -> None:
        if target is not None and target != module:
            edges.append(Edge(module, target, f"{where}:{node.lineno}", lazy, type_only))

    def visit(node: ast.AST, lazy: bool, type_only: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(_known(alias.name, known), node, lazy, type_only)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            for alias in node.names:
                add(_known(f"{base}.{alias.name}", known) or _known(base, known), node, lazy, type_only)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for statement in node.body:
                visit(statement, lazy, True)
            for statement in node.orelse:
                visit(statement, lazy, type_only)
            return
        inner = lazy or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, inner, type_only)

    visit(ast.parse(source), False, False)
    return edges


def all_edges(modules: Mapping[str, Path]) -> list[Edge]:
    edges: list[Edge] = []
    for name, path in modules.items():
        edges += imports_of(
            name,
            path.read_text(encoding="utf-8"),
            modules,
            is_package=path.name == "__init__.py",
            where=str(path.relative_to(ROOT)),
        )
    return edges


def strongly_connected(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one node, each sorted, in sorted order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    nodes = sorted(set(graph) | {t for targets in graph.values() for t in targets})

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(set(graph.get(node, ()))):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in nodes:
        if node not in index:
            connect(node)
    return sorted(found)


def a_cycle(component: list[str], graph: Mapping[str, Iterable[str]]) -> list[str]:
    """A shortest import loop through the component's first module: [a, b, ..., a]."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(set(graph.get(node, ()))):
                if target == start:
                    return [*paths[node], start]
                if target in members and target not in paths:
                    paths[target] = [*paths[node], target]
                    following.append(target)
        frontier = following
    raise AssertionError(f"{component} is not strongly connected")


def cycle_report(edges: list[Edge]) -> list[str]:
    """One paragraph per import cycle: its modules, then one loop with the lines that make it."""
    runtime = [e for e in edges if not e.type_only]
    graph: dict[str, set[str]] = {}
    for edge in runtime:
        graph.setdefault(edge.source, set()).add(edge.target)
    by_pair = {(e.source, e.target): e for e in reversed(runtime)}  # the first statement of each pair
    report = []
    for component in strongly_connected(graph):
        loop = a_cycle(component, graph)
        steps = "\n    ".join(by_pair[pair].describe() for pair in pairwise(loop))
        report.append(f"cycle among {', '.join(component)}:\n    {steps}")
    return report


def layer_violations(edges: list[Edge]) -> list[str]:
    problems = []
    for edge in edges:
        if edge.target == CLI and edge.source != CLI:
            problems.append(f"{edge.describe()}: nothing imports the CLI; use the library (llmaas.api)")
        in_serve_layer = edge.source == SERVE_LAYER or edge.source.startswith(f"{SERVE_LAYER}.")
        if not in_serve_layer and (edge.target == SERVE_LAYER or edge.target.startswith(f"{SERVE_LAYER}.")):
            problems.append(
                f"{edge.describe()}: the library (platform/llmaas) sits below the Serve layer; "
                "name a deployment by its import path string, or move the code into deployments/"
            )
    return problems


@pytest.fixture(scope="module")
def edges() -> list[Edge]:
    modules = discover()
    assert {"llmaas", "llmaas.cli", "llmaas.engine.protocol", "llmaas.deployments.builder"} <= set(modules)
    return all_edges(modules)


def test_no_import_cycles_among_llmaas_modules(edges: list[Edge]):
    report = cycle_report(edges)
    assert not report, "import cycles (lazy imports count):\n" + "\n".join(report)


def test_layers_nothing_imports_the_cli_and_the_library_never_imports_deployments(edges: list[Edge]):
    problems = layer_violations(edges)
    assert not problems, "\n".join(problems)


# ---- the checker itself, on made-up modules -----------------------------------------------
FAKE_MODULES = {"pkg", "pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c", "pkg.sub.d"}


def test_imports_are_resolved_to_modules_lazy_relative_and_type_only():
    source = """
from typing import TYPE_CHECKING
import os
import pkg.sub.c
from pkg import b
from pkg.sub import Thing
from . import d
from .. import a as alias

if TYPE_CHECKING:
    from pkg.a import Hint

def later():
    from pkg.sub.d import helper
    import pkg.b.nothing
"""
    edges = imports_of("pkg.sub.c", source, FAKE_MODULES, is_package=False, where="c.py")
    assert [(e.target, e.lazy, e.type_only) for e in edges] == [
        ("pkg.b", False, False),
        ("pkg.sub", False, False),
        ("pkg.sub.d", False, False),
        ("pkg.a", False, False),
        ("pkg.a", False, True),
        ("pkg.sub.d", True, False),
        ("pkg.b", True, False),
    ]
    package = imports_of("pkg.sub", "from . import c\nfrom .d import x\n", FAKE_MODULES, is_package=True)
    assert [e.target for e in package] == ["pkg.sub.c", "pkg.sub.d"]


def test_cycle_finder_finds_loops_and_only_loops():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": set(), "x": {"y"}, "y": {"x"}}
    assert strongly_connected(graph) == [["a", "b", "c"], ["x", "y"]]
    assert a_cycle(["a", "b", "c"], graph) == ["a", "b", "c", "a"]
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_a_lazy_import_that_closes_a_loop_fails_and_a_type_only_one_does_not():
    sources = {
        "pkg.a": ("from pkg import b\n", False),
        "pkg.b": ("def f():\n    import pkg.a\n", False),
        "pkg.sub": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.sub import c\n", True),
        "pkg.sub.c": ("import pkg.sub\n", False),
    }
    edges = [e for m, (src, pkg) in sources.items() for e in imports_of(m, src, FAKE_MODULES, is_package=pkg)]
    report = cycle_report(edges)
    assert len(report) == 1
    assert report[0].startswith("cycle among pkg.a, pkg.b:")
    assert "pkg.b -> pkg.a (:2, lazy)" in report[0]


def test_layer_rules_flag_the_cli_and_the_serve_layer():
    edges = [
        Edge("llmaas.gateway.admin_cli", CLI, "x.py:1", True, False),
        Edge("llmaas.deploy", "llmaas.deployments.builder", "y.py:2", True, False),
        Edge("llmaas.deployments.builder", "llmaas.engine", "z.py:3", False, False),
        Edge(CLI, "llmaas.api", "cli.py:4", False, False),
    ]
    problems = layer_violations(edges)
    assert len(problems) == 2
    assert "llmaas.gateway.admin_cli -> llmaas.cli" in problems[0]
    assert "llmaas.deploy -> llmaas.deployments.builder" in problems[1]


def test_every_package_is_in_the_distribution():
    """A non-editable install (a Docker image, KubeRay) gets only the packages pyproject lists."""
    import tomllib

    root = Path(__file__).resolve().parents[2]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(("llmaas", *init.parent.relative_to(root / "platform" / "llmaas").parts))
        for init in (root / "platform" / "llmaas").rglob("__init__.py")
    }
    found.add("llmaas.deployments")
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
