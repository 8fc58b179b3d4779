"""Layout of the sessions package: its modules import one way, its classes stay small."""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path

import sessions

SESSIONS = Path(sessions.__file__).parent
MODULES = {f"sessions.{p.stem}": p for p in sorted(SESSIONS.glob("*.py")) if p.stem != "__init__"}
MAX_LINES = 400
MAX_METHODS = 30


def _imports(path: Path, known: Mapping[str, Path] = MODULES) -> set[str]:
    """The ``known`` modules ``path`` imports anywhere, ``TYPE_CHECKING`` blocks and
    function bodies included (a cycle only type checkers see is still a cycle)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out.update(n for n in names if n in known)
    return out


def _cycle(modules: Mapping[str, Path] = MODULES) -> list[str] | None:
    """One import cycle among ``modules`` (name -> file), or None."""
    graph = {name: _imports(path, modules) for name, path in modules.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[name] = 2
        return None

    for name in graph:
        if name not in state and (found := visit(name)):
            return found
    return None


def test_the_package_modules_import_one_way() -> None:
    """No import cycle among sessions/*.py; compaction in particular never reaches the
    session (it works on the ``Compactable`` protocol)."""
    assert _cycle() is None
    assert "sessions.session" not in _imports(MODULES["sessions.compaction"])


def test_a_cycle_would_be_found(tmp_path: Path) -> None:
    """The checker itself: two modules importing each other under TYPE_CHECKING."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from sessions.b import X\n"
    )
    b.write_text("import sessions.a\n")
    assert _cycle({"sessions.a": a, "sessions.b": b}) == ["sessions.a", "sessions.b", "sessions.a"]
    assert _cycle({"sessions.a": a}) is None


def test_no_class_is_over_400_lines_or_30_methods() -> None:
    """Every class of the package (stores aside: they have their own package) is small."""
    too_big = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ClassDef):
                continue
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            methods = sum(isinstance(b, ast.FunctionDef | ast.AsyncFunctionDef) for b in node.body)
            if lines > MAX_LINES or methods > MAX_METHODS:
                too_big.append(f"{name}.{node.name}: {lines} lines, {methods} methods")
    assert too_big == []
