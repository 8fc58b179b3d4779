"""Imports run one way: engine (core) ← handlers ← sessions ← the command line
(``engine/cli/``, entered through ``engine/run.py``) and, beside it at the top, the
HTTP server (``engine/server/``).

Every module is parsed with :mod:`ast`, so imports inside functions, under
``TYPE_CHECKING`` and through ``importlib.import_module("...")`` count as much as the
ones at the top.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "handlers", "sessions")
CLI = "engine.cli"
CLI_ENTRY = "engine.run"  # the entry point the product brief fixes: part of the CLI layer
SERVER = "engine.server"  # the HTTP API: a top-layer client of sessions, like the CLI

FORBIDDEN: Mapping[str, tuple[str, ...]] = {
    # layer: what no module of it may import
    "engine": ("handlers", "sessions", CLI, SERVER),
    "handlers": ("sessions", CLI, SERVER),
    "sessions": (CLI, SERVER),
}


@dataclass(frozen=True)
class Import:
    """``module`` imports ``target`` at ``path:line`` (``path`` relative to the root)."""

    module: str
    target: str
    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.target}"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module an ``ImportFrom`` names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(path: Path, root: Path) -> Iterator[Import]:
    """Every module ``path`` imports, wherever in the file the import stands."""
    module = module_name(path, root)
    where = path.relative_to(root).as_posix()
    tree = ast.parse(path.read_text(encoding="utf-8"), where)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, where, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(node, module, path.name == "__init__.py")
            yield Import(module, target, where, node.lineno)
            for alias in node.names:  # `from engine import cli` imports engine.cli
                yield Import(module, f"{target}.{alias.name}", where, node.lineno)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
            == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield Import(module, node.args[0].value, where, node.lineno)


def all_imports(root: Path) -> list[Import]:
    return [
        imp
        for package in PACKAGES
        for path in sorted((root / package).rglob("*.py"))
        for imp in imports_of(path, root)
    ]


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def layer(name: str) -> str | None:
    """The layer a module belongs to: the CLI (and the server beside it), or its
    top-level package if one of ours."""
    if _within(name, CLI) or _within(name, CLI_ENTRY) or _within(name, SERVER):
        return "cli"
    top = name.split(".")[0]
    return top if top in PACKAGES else None


def violations(imports: list[Import]) -> list[str]:
    """Each import statement that breaks a rule of :data:`FORBIDDEN`, once, as
    ``path:line: target (why)``."""
    found: dict[tuple[str, int, str], str] = {}
    for imp in imports:
        src = layer(imp.module)
        if src is None or src == "cli":
            continue
        for banned in FORBIDDEN[src]:
            if _within(imp.target, banned):
                found.setdefault(
                    (imp.path, imp.line, banned), f"{imp} ({src} must not import {banned})"
                )
    return list(found.values())


def cycles(imports: list[Import]) -> list[list[str]]:
    """Cycles in the graph of layers (engine, handlers, sessions, cli) the imports draw."""
    edges: dict[str, set[str]] = {}
    for imp in imports:
        src, dst = layer(imp.module), layer(imp.target)
        if src is not None and dst is not None and src != dst:
            edges.setdefault(src, set()).add(dst)
    found: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            if nxt == path[0]:
                found.append([*path, nxt])
            elif nxt not in path and nxt > path[0]:  # each cycle once, from its least node
                visit(nxt, [*path, nxt])

    for start in sorted(edges):
        visit(start, [start])
    return found


def test_no_layer_imports_one_above_it() -> None:
    assert violations(all_imports(ROOT)) == []


def test_the_layers_import_each_other_in_no_cycle() -> None:
    assert cycles(all_imports(ROOT)) == []


def test_every_module_is_read() -> None:
    """The checks see function-local and TYPE_CHECKING imports (the CLI has both)."""
    imports = all_imports(ROOT)
    modules = {imp.module for imp in imports}
    assert {"engine.runner", "handlers.llm", "sessions.manager", "engine.cli.main"} <= modules
    cli_targets = {imp.target for imp in imports if imp.module == "engine.cli.main"}
    assert {"sessions", "handlers", "engine.graph"} <= cli_targets


# --------------------------------------------------------------------------- the checker


def _tree(tmp_path: Path, files: Mapping[str, str]) -> list[Import]:
    for package in PACKAGES:
        (tmp_path / package).mkdir(exist_ok=True)
        (tmp_path / package / "__init__.py").touch()
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return all_imports(tmp_path)


@pytest.mark.parametrize(
    ("name", "text", "banned"),
    [
        ("engine/core.py", "import handlers.llm\n", "handlers"),
        ("engine/core.py", "def f():\n    from sessions import manager\n", "sessions"),
        (
            "engine/core.py",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import sessions\n",
            "sessions",
        ),
        ("engine/sub/x.py", "from ...handlers import basic\n", "handlers"),
        ("engine/core.py", "import importlib\nimportlib.import_module('handlers')\n", "handlers"),
        ("handlers/basic.py", "from sessions.session import Session\n", "sessions"),
        ("handlers/basic.py", "from engine import cli\n", CLI),
        ("sessions/manager.py", "from engine.cli.common import err\n", CLI),
        ("sessions/manager.py", "from engine.server.app import create_app\n", SERVER),
        ("handlers/llm.py", "import engine.server\n", SERVER),
    ],
)
def test_the_checker_finds_an_upward_import(
    tmp_path: Path, name: str, text: str, banned: str
) -> None:
    (found,) = violations(_tree(tmp_path, {name: text}))
    assert found.startswith(name) and found.endswith(f"must not import {banned})")


def test_the_checker_allows_the_cli_everything_and_imports_downward(tmp_path: Path) -> None:
    imports = _tree(
        tmp_path,
        {
            "engine/cli/main.py": "import sessions, handlers\nfrom engine import runner\n",
            "engine/run.py": "from engine.cli.main import main\n",
            "sessions/manager.py": "import handlers\nfrom engine.runner import Engine\n",
            "handlers/llm.py": "from engine.errors import AdapterError\n",
        },
    )
    assert violations(imports) == [] and cycles(imports) == []


def test_the_checker_finds_a_cycle(tmp_path: Path) -> None:
    imports = _tree(
        tmp_path,
        {"handlers/a.py": "import engine.runner\n", "engine/runner.py": "import handlers.a\n"},
    )
    assert cycles(imports) == [["engine", "handlers", "engine"]]
