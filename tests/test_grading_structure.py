"""The grading package's shape, read from its source with the standard library's ``ast``: no
import cycle anywhere in course_lib, the code that runs inside the box imports nothing of the
grader but its wire protocol and process hygiene, and no private name crosses a module."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "course_lib"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> list[tuple[str, str | None]]:
    """(module, imported name or None) for every import in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.module, a.name) for a in node.names]
    return found


def _edges(name: str) -> set[str]:
    """The course_lib modules ``name`` imports (``from pkg import mod`` counts as ``pkg.mod``)."""
    deps = set()
    for module, imported in _imports(MODULES[name]):
        target = f"{module}.{imported}" if f"{module}.{imported}" in MODULES else module
        if target in MODULES and target != name:
            deps.add(target)
    return deps


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state, cycles = {}, []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return cycles


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_course_lib():
    graph = {name: _edges(name) for name in MODULES}
    assert _cycles(graph) == []


def test_inside_the_box_imports_only_wire_and_hygiene_from_the_grader():
    inside = "course_lib.grading.inside"
    for name in (n for n in MODULES if n.startswith(inside)):
        grader = {d for d in _edges(name)
                  if d.startswith("course_lib.grading") and not d.startswith(inside)}
        assert not grader, f"{name} imports {grader}: the box must not depend on the grader"


def test_no_private_name_crosses_a_grading_module():
    crossing = []
    for name, path in MODULES.items():
        if not name.startswith("course_lib.grading"):
            continue
        crossing += [f"{name}: from {module} import {imported}"
                     for module, imported in _imports(path)
                     if module.startswith("course_lib") and imported
                     and imported.startswith("_") and not imported.startswith("__")]
        tree = ast.parse(path.read_text())
        aliases = {a.asname or a.name for node in ast.walk(tree)
                   if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("course_lib")
                   for a in node.names if f"{node.module}.{a.name}" in MODULES}
        crossing += [f"{name}: {node.value.id}.{node.attr}" for node in ast.walk(tree)
                     if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                     and node.value.id in aliases and node.attr.startswith("_")
                     and not node.attr.startswith("__")]
    assert crossing == []
