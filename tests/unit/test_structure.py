"""The shape of rawchat/: small modules, small classes, imports that only go down.

A module over 400 lines or a class over 250 is one a reader cannot hold in
their head; an import cycle (TYPE_CHECKING imports included) means two modules
that cannot be understood one without the other.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "rawchat"
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 250

#: Modules known to be over a limit, with the size they may not grow past. Each
#: entry is a debt to pay by splitting the module; the test fails if it grows.
KNOWN_LARGE: dict[str, int] = {
}
KNOWN_LARGE_CLASSES: dict[str, int] = {
}
#: Classes held below the limit: the asyncio adapter stays thin (what it does
#: beyond asyncio's callbacks belongs to the phases, their driver, or Shared).
THIN_CLASSES: dict[str, int] = {
    "connection.py:Connection": 200,
}


def modules() -> dict[str, ast.Module]:
    return {p.name: ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.glob("*.py"))}


def test_no_module_is_over_400_lines() -> None:
    over = {}
    for path in sorted(PACKAGE.glob("*.py")):
        lines = len(path.read_text().splitlines())
        if lines > KNOWN_LARGE.get(path.name, MAX_MODULE_LINES):
            over[path.name] = lines
    assert not over, f"modules over their limit: {over}"


def test_no_class_is_over_250_lines() -> None:
    over = {}
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                assert node.end_lineno is not None
                size = node.end_lineno - node.lineno + 1
                key = f"{name}:{node.name}"
                limit = THIN_CLASSES.get(key) or KNOWN_LARGE_CLASSES.get(key, MAX_CLASS_LINES)
                if size > limit:
                    over[key] = size
    assert not over, f"classes over their limit: {over}"


def imports(tree: ast.Module) -> set[str]:
    """The rawchat modules ``tree`` imports anywhere, inside ``if TYPE_CHECKING:`` too."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.module == "rawchat":
                found.update(alias.name for alias in node.names)
            elif node.module.startswith("rawchat."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("rawchat."):
                    found.add(alias.name.split(".")[1])
    return found


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle in ``graph``, or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        if name in path:
            return [*path[path.index(name) :], name]
        if name in done:
            return None
        path.append(name)
        for other in sorted(graph.get(name, ())):
            found = visit(other)
            if found:
                return found
        path.pop()
        done.add(name)
        return None

    for name in sorted(graph):
        found = visit(name)
        if found:
            return found
    return None


def test_the_import_graph_has_no_cycle() -> None:
    graph = {name.removesuffix(".py"): imports(tree) for name, tree in modules().items()}
    assert cycle(graph) is None, " -> ".join(cycle(graph) or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None
