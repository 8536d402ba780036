"""The ``zoo`` package's import graph has no cycle.

Every ``import`` and ``from ... import`` of a zoo module counts, wherever it is written: at the top of a
file, inside a function or under ``if TYPE_CHECKING:``. An import hidden in a function is still a
dependency; it only moves the failure from import time to the first call.

Edges:

* ``import zoo.a.b`` and ``from zoo.a.b import x`` depend on ``zoo.a.b``; ``from zoo.a import b``
  depends on ``zoo.a.b`` when ``b`` is a module, else on ``zoo.a`` (its ``__init__``).
* Importing ``zoo.a.b`` runs ``zoo/a/__init__.py`` first, so it also depends on ``zoo.a`` unless the
  importer lives inside ``zoo.a`` (then that package is already being imported: the normal pattern
  of a package's ``__init__`` importing its own modules).
* Relative imports are resolved against the importing module's package.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    where: str
    """``path:line`` of the import statement (for an implied parent package: of the import implying it)."""


def _module_names(package_dir: Path) -> dict[str, Path]:
    base = package_dir.parent
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(base).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """``name`` or its longest prefix that is a module of the package (None: not one of ours)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def _resolve_from(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    if node.level > 1:
        package = package[: len(package) - (node.level - 1)]
    return ".".join([*package, *([node.module] if node.module else [])])


def _direct_targets(module: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):  # every nesting level: functions, classes, if-blocks
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _known(alias.name, modules)
                if target is not None:
                    found.append((target, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(module, _is_package(path), node)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                target = submodule if submodule in modules else _known(base, modules)
                if target is not None:
                    found.append((target, node.lineno))
    return found


def import_edges(package_dir: Path) -> list[Edge]:
    """Every import edge between modules of the package at ``package_dir`` (see the module docstring)."""
    modules = _module_names(package_dir)
    edges = set()
    for module, path in modules.items():
        where_base = path.relative_to(package_dir.parent)
        for target, line in _direct_targets(module, path, modules):
            parts = target.split(".")
            implied = [".".join(parts[:i]) for i in range(1, len(parts))]
            for dep in [*implied, target]:
                inside = module == dep or module.startswith(dep + ".")
                if not inside:
                    edges.add(Edge(module, dep, f"{where_base}:{line}"))
    return sorted(edges, key=lambda e: (e.source, e.target, e.where))


def find_cycles(edges: list[Edge]) -> list[list[Edge]]:
    """The import cycles, as their edges: the strongly connected components (Tarjan), and in each a
    shortest cycle through every edge that stays inside it."""
    graph: dict[str, list[Edge]] = {}
    for e in edges:
        graph.setdefault(e.source, []).append(e)
        graph.setdefault(e.target, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:  # the package has a few dozen modules: recursion depth is no concern
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for e in graph[v]:
            if e.target not in index:
                visit(e.target)
                low[v] = min(low[v], low[e.target])
            elif e.target in on_stack:
                low[v] = min(low[v], index[e.target])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [cycle for component in components for cycle in _cycles_in(component, graph)]


def _cycles_in(component: set[str], graph: dict[str, list[Edge]]) -> list[list[Edge]]:
    """For every import edge inside the component, a shortest cycle through it; each cycle once."""
    found: dict[tuple[tuple[str, str], ...], list[Edge]] = {}
    for source in sorted(component):
        for edge in graph[source]:
            if edge.target in component:
                cycle = [edge, *_shortest_path(edge.target, source, component, graph)]
                first = min(range(len(cycle)), key=lambda i: cycle[i].source)
                cycle = cycle[first:] + cycle[:first]  # from its smallest module: one key per cycle
                found.setdefault(tuple((e.source, e.target) for e in cycle), cycle)
    return sorted(found.values(), key=lambda c: (len(c), _describe(c)))


def _shortest_path(start: str, goal: str, component: set[str], graph: dict[str, list[Edge]]) -> list[Edge]:
    """The edges of a shortest path from ``start`` to ``goal`` inside the component (breadth first)."""
    previous: dict[str, Edge] = {}
    frontier = [start]
    while frontier and goal not in previous and start != goal:
        following = []
        for v in frontier:
            for e in graph[v]:
                if e.target in component and e.target not in previous and e.target != start:
                    previous[e.target] = e
                    following.append(e.target)
        frontier = following
    path: list[Edge] = []
    node = goal
    while node != start:
        path.insert(0, previous[node])  # a component is strongly connected: the goal is reached
        node = path[0].source
    return path


def _describe(cycle: list[Edge]) -> str:
    return " -> ".join([cycle[0].source, *(f"{e.target} ({e.where})" for e in cycle)])


def test_the_zoo_package_has_no_import_cycle() -> None:
    cycles = find_cycles(import_edges(ROOT / "zoo"))
    assert not cycles, "import cycles in zoo (module (file:line of the import)):\n" + "\n".join(
        _describe(c) for c in cycles
    )


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_factory_sits_above_registry_and_weights() -> None:
    edges = {(e.source, e.target) for e in import_edges(ROOT / "zoo")}
    assert ("zoo.factory", "zoo.registry") in edges
    assert any(s == "zoo.factory" and _within(t, "zoo.weights") for s, t in edges)
    for source, target in edges:
        for low, other in (("zoo.registry", "zoo.weights"), ("zoo.weights", "zoo.registry")):
            if _within(source, low):
                assert not _within(target, other), f"{source} imports {target}"
                assert target != "zoo.factory", f"{source} imports the factory above it"


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_imports_inside_functions_and_relative_ones_are_edges(tmp_path: Path) -> None:
    package = _write(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.a import f\n",
            "pkg/a.py": "def f():\n    from .sub import b\n    return b\n",
            "pkg/sub/__init__.py": "",
            "pkg/sub/b.py": "import os\n\nclass C:\n    def g(self):\n        import pkg.a\n",
        },
    )
    edges = {(e.source, e.target): e.where for e in import_edges(package)}
    assert set(edges) == {
        ("pkg", "pkg.a"),
        ("pkg.a", "pkg.sub"),  # importing pkg.sub.b runs pkg/sub/__init__.py first
        ("pkg.a", "pkg.sub.b"),
        ("pkg.sub.b", "pkg.a"),
    }
    assert edges[("pkg.sub.b", "pkg.a")] == str(Path("pkg/sub/b.py")) + ":5"
    (cycle,) = find_cycles(import_edges(package))
    assert _describe(cycle).startswith("pkg.a -> pkg.sub.b (pkg/a.py:2) -> pkg.a (pkg/sub/b.py:5)")


@pytest.mark.parametrize(
    ("init", "cycle"),
    [
        # a package's __init__ importing its own module is no cycle ...
        ("from pkg.w import files\n", False),
        # ... but one that imports a module which imports one of the package's modules is
        ("from pkg.factory import build\n", True),
    ],
)
def test_a_package_init_importing_what_imports_the_package_is_a_cycle(
    tmp_path: Path, init: str, cycle: bool
) -> None:
    package = _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/w/__init__.py": init,
            "pkg/w/files.py": "X = 1\n",
            "pkg/factory.py": "from pkg.w.files import X\n\ndef build():\n    return X\n",
        },
    )
    assert bool(find_cycles(import_edges(package))) is cycle
