"""The library's shape: short functions, no import cycles between its modules.

Both are rules the code review of issue 17 set: every function of ``inatcomp/`` at most 100 lines (each phase
a named function), and modules that depend on each other one way only (the prediction-file layer below
``predict``, ``ensemble``, ``submission``, ``geoprior`` and ``scoring``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import inatcomp

PACKAGE = Path(inatcomp.__file__).parent
MAX_FUNCTION_LINES = 100


def _modules() -> dict[str, ast.Module]:
    trees = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        trees[name] = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return trees


def test_no_function_is_longer_than_100_lines():
    long = [
        f"{name}.{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for name, tree in _modules().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []


def _imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """The inatcomp modules ``name`` imports anywhere (top level or inside functions)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # "from inatcomp.x import y" imports the module inatcomp.x.y when there is one, else inatcomp.x
            targets = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module for a in node.names
            ]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph``, or None."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_modules_import_each_other_one_way():
    trees = _modules()
    known = set(trees)
    # A package's __init__ re-exporting its own modules is not a dependency between stages.
    graph = {
        name: {t for t in _imports(name, tree, known) if not t.startswith(f"{name}.")} for name, tree in trees.items()
    }
    assert _cycle(graph) is None


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def _declared_all(tree: ast.Module) -> set[str] | None:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return None


def test_public_names_used_elsewhere_are_in_all():
    """A public name another module, a kernel or a benchmark imports is part of its module's ``__all__``."""
    trees = _modules()
    declared = {name: names for name, tree in trees.items() if (names := _declared_all(tree)) is not None}
    users = dict(trees)
    for folder in ("kernels", "benchmarks"):
        for path in sorted((PACKAGE.parent / folder).glob("*.py")):
            users[f"{folder}.{path.stem}"] = ast.parse(path.read_text(encoding="utf-8"))
    missing = set()
    for user, tree in users.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in declared and node.module != user:
                missing |= {
                    f"{node.module}.{a.name} (used by {user})"
                    for a in node.names
                    if not a.name.startswith("_")
                    and a.name not in declared[node.module]
                    and f"{node.module}.{a.name}" not in trees
                }
    assert sorted(missing) == []
