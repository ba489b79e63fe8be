"""The import graph: no circles, and no arrow from a lower layer of the app to a higher one.

Every import counts, those inside functions too (a lazy import is still a dependency); only
``if TYPE_CHECKING:`` blocks are left out, since they never run.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Lowest first: a module may import from its own layer or any below it, never from above.
LAYERS = [
    ("app.errors", "app.config"),
    ("app.audio",),
    ("app.observe.metrics", "app.observe.logs", "app.serving"),
    ("app.engines",),
    ("app.store",),
    ("app.gate",),
    ("app.protocols",),
    ("app.web", "app.observe.health"),
    ("app.cli", "app.observe"),
]


def modules(*packages: str) -> dict[str, Path]:
    """Map every module of ``packages`` (dotted name) to its file."""
    found = {}
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Return the known modules that module ``name`` imports, outside TYPE_CHECKING blocks."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()

    def add(dotted: str) -> None:
        while dotted and dotted not in known:
            dotted = dotted.rpartition(".")[0]
        if dotted and dotted != name:
            targets.add(dotted)

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            for alias in node.names:
                add(alias.name)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source)

    Visitor().visit(ast.parse(path.read_text(), str(path)))
    return targets


def graph(*packages: str) -> dict[str, set[str]]:
    """Return the import graph of ``packages``: module -> modules it imports."""
    known = modules(*packages)
    return {name: imports(name, path, known) for name, path in known.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Return the strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in edges.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def layer(name: str) -> int | None:
    """Return the layer of an app module: the most specific prefix listed wins."""
    best, rank = -1, None
    for number, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), number
    return rank


def test_the_app_and_the_benchmarks_have_no_import_circles():
    found = circles(graph("app", "bench", "clients"))
    assert found == [], "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_app_module_imports_from_a_layer_above_its_own():
    edges = graph("app")
    unplaced = sorted(name for name in edges if name != "app" and layer(name) is None)
    assert unplaced == [], f"modules in no layer (add them to LAYERS): {unplaced}"
    upward = sorted(
        f"{name} -> {target}"
        for name, targets in edges.items() if name != "app"
        for target in targets if target != "app" and layer(target) > layer(name)
    )
    assert upward == [], "imports from a lower layer to a higher one: " + ", ".join(upward)


def test_the_checker_sees_a_circle_and_an_upward_import():
    """The walk itself works: a made-up loop and a made-up upward arrow are both found."""
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer("app.store.models") > layer("app.engines.runtime")
    assert layer("app.observe.health") > layer("app.observe.metrics")
