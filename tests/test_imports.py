"""Imports run one way: the package's import graph (module level and inside functions) has no cycle.

The graph is read from the source with ``ast``, so a cycle hidden in a function-level import (one that only
bites when that function runs) counts too. Imports under ``if TYPE_CHECKING:`` are left out: they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "cnnctl"


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_modules(path: Path, known: set[str], root: Path = PACKAGE) -> set[str]:
    """The package modules ``path`` imports, anywhere in the file."""
    name = module_name(path, root)
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def add(target: str) -> None:
        # `from cnnctl.data import registry` imports cnnctl.data.registry; `import cnnctl.x.y` imports cnnctl.x.y
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "cnnctl":
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] == "cnnctl":
                for alias in node.names:
                    add(f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    files = sorted(root.rglob("*.py"))
    known = {module_name(f, root) for f in files}
    return {module_name(f, root): imported_modules(f, known, root) for f in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = walk(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = walk(start)
            if cycle:
                return cycle
    return None


def test_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "cnnctl"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from cnnctl.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import x\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import cnnctl.a\n")
    graph = import_graph(pkg)
    assert graph["cnnctl.a"] == {"cnnctl.sub.b"} and graph["cnnctl.sub.b"] == {"cnnctl.c"}
    assert find_cycle(graph) is None  # a TYPE_CHECKING import never runs
    (pkg / "c.py").write_text("import cnnctl.a\n")
    assert find_cycle(import_graph(pkg)) == ["cnnctl.a", "cnnctl.sub.b", "cnnctl.c", "cnnctl.a"]


def test_config_validation_names_are_torch_free():
    """The name tables config validation reads import neither torch nor config."""
    graph = import_graph()
    for table in ("cnnctl.data.registry", "cnnctl.models.registry", "cnnctl.registry", "cnnctl.errors"):
        assert "cnnctl.config" not in graph[table], table
        source = (PACKAGE.parent / (table.replace(".", "/") + ".py")).read_text(encoding="utf-8")
        module_level = [n for n in ast.parse(source).body if isinstance(n, ast.Import | ast.ImportFrom)]
        assert not any("torch" in ast.unparse(n) for n in module_level), table
