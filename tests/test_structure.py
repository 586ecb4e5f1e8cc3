"""The library's shape: short functions, no import cycles between its modules.

Both are rules the code review of issue 17 set: every function of ``inatcomp/`` at most 100 lines (each phase
a named function), and modules that depend on each other one way only (the prediction-file layer below
``predict``, ``ensemble``, ``submission``, ``geoprior`` and ``scoring``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

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


# --- The house by stage (issue 29) ---------------------------------------------------------------------------------

#: The top-level modules: the command and what every stage shares. Everything else lives in a subpackage.
MAX_LOOSE_MODULES = 8
MAX_MODULE_LINES = 600
MAX_FUNCTION_IMPORTS = 20

#: What each subpackage may import of inatcomp (besides itself); the top-level cli, pipeline and demo may
#: import anything, and no subpackage imports them. Each ``__init__`` docstring says the same in words.
SHARED = {"inatcomp", "inatcomp.fileio", "inatcomp.options"}
NEIGHBOURS = {
    "formats": set(),
    "world": {"formats"},
    "build": {"formats"},
    "data": {"formats"},
    "score": {"formats"},
    "models": {"formats", "data"},
    "predict": {"formats", "data", "models", "score"},
    "train": {"formats", "data", "models", "build", "world"},
}


def _unit(module: str) -> str:
    """The stage a module belongs to: its subpackage (``inatcomp.build``), or the top-level module itself."""
    parts = module.split(".")
    if len(parts) >= 2 and (PACKAGE / parts[1]).is_dir():
        return parts[1]
    return module


def test_at_most_eight_loose_modules():
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert len(loose) <= MAX_LOOSE_MODULES, loose


def test_no_module_is_longer_than_600_lines():
    long = {
        str(path.relative_to(PACKAGE.parent)): n
        for path in sorted(PACKAGE.rglob("*.py"))
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def _function_imports(tree: ast.AST) -> list[ast.stmt]:
    inner: list[ast.stmt] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            inner += [n for n in ast.walk(node) if isinstance(n, ast.Import | ast.ImportFrom)]
    return inner


def test_imports_sit_at_the_top_but_for_a_few_with_a_reason():
    """At most 20 imports inside functions outside ``cli.py``, each with a ``# lazy:`` comment saying why."""
    found, unexplained = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "cli.py":
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in _function_imports(ast.parse("\n".join(lines))):
            where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
            found.append(where)
            around = lines[node.lineno - 2 : node.end_lineno]
            if not any("# lazy:" in line for line in around):
                unexplained.append(where)
    assert unexplained == []
    assert len(set(found)) <= MAX_FUNCTION_IMPORTS, found


def test_the_import_count_sees_an_import_in_a_function():
    tree = ast.parse("import os\ndef f():\n    import json  # lazy: why\n    return json\n")
    assert [n.lineno for n in _function_imports(tree)] == [3]


def _stage_graph() -> dict[str, set[str]]:
    trees = _modules()
    known = set(trees)
    graph: dict[str, set[str]] = {}
    for name, tree in trees.items():
        unit = _unit(name)
        targets = {_unit(t) for t in _imports(name, tree, known)}
        graph.setdefault(unit, set()).update(t for t in targets if t != unit)
    return graph


def test_no_cycle_between_stages():
    graph = _stage_graph()
    assert _cycle({unit: {t for t in targets if t in graph} for unit, targets in graph.items()}) is None


def test_each_stage_imports_only_its_declared_neighbours():
    graph = _stage_graph()
    assert set(NEIGHBOURS) == {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    shared = {_unit(s) for s in SHARED}
    wrong = {
        unit: sorted(targets - NEIGHBOURS[unit] - shared)
        for unit, targets in graph.items()
        if unit in NEIGHBOURS and targets - NEIGHBOURS[unit] - shared
    }
    assert wrong == {}
    # The shared modules import no stage.
    assert {u: graph.get(u, set()) for u in shared if graph.get(u)} == {}


@pytest.mark.parametrize("stage", sorted(NEIGHBOURS))
def test_each_stage_says_what_it_holds_and_may_import(stage: str):
    doc = ast.get_docstring(ast.parse((PACKAGE / stage / "__init__.py").read_text(encoding="utf-8"))) or ""
    assert len(doc) > 100 and "may import" in doc, stage
