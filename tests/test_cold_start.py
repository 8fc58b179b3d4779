"""No cold-start tax: a process imports only what its work needs (issue 13).

Each check runs in a fresh interpreter, since this one has imported everything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARSERS = ("pydot", "pyparsing", "networkx", "engine.dot", "engine.dot_lexer")
RUNNING = ("engine.runner", "engine.events", "anyio", "msgspec", "rich", "handlers")


def _loaded_after(code: str, env: dict[str, str] | None = None) -> list[str]:
    """Run ``code`` in a fresh interpreter; the modules it left in ``sys.modules``."""
    probe = code + "\nimport sys, json\nprint(json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
    run = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    loaded: list[str] = json.loads(run.stderr.strip().splitlines()[-1])
    return loaded


def _under(loaded: list[str], packages: tuple[str, ...]) -> list[str]:
    """The modules of ``loaded`` that are one of ``packages`` or inside one."""
    return [m for m in loaded if m in packages or m.startswith(tuple(p + "." for p in packages))]


def test_import_engine_imports_no_submodule() -> None:
    """``import engine`` is lazy (PEP 562): nothing under it is imported yet."""
    loaded = _loaded_after("import engine")
    assert [m for m in loaded if m.startswith("engine.")] == []


def test_every_public_name_resolves_on_first_use() -> None:
    """Lazy names are the submodules' very objects, listed by dir(), cached once resolved."""
    code = (
        "import importlib, engine\n"
        "for name in engine.__all__:\n"
        "    value = getattr(engine, name)\n"
        "    assert value is getattr(importlib.import_module(engine._SOURCES[name]), name), name\n"
        "    assert name in vars(engine), name\n"
        "assert set(engine.__all__) <= set(dir(engine))\n"
        "try:\n    engine.no_such_name\nexcept AttributeError as exc:\n"
        "    assert 'no_such_name' in str(exc)\nelse:\n    raise AssertionError\n"
        "from engine import *\n"
        "assert load_graph is engine.loader.load_graph\n"
    )
    _loaded_after(code)


def test_reading_a_graph_imports_only_the_reader() -> None:
    """Parsing DOT imports neither pydot nor the runner, events, anyio or msgspec."""
    loaded = _loaded_after("from engine.dot import parse_dot\nparse_dot('digraph { a -> b }')")
    assert "engine.dot" in loaded
    assert _under(loaded, (*RUNNING, "pydot", "pyparsing")) == []


def test_a_warm_cli_turn_imports_no_parser(tmp_path: Path) -> None:
    """With the graph cached, a CLI turn imports neither pydot, pyparsing nor the reader."""
    graph = str(ROOT / "graphs" / "turn.dot")
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['engine.run', {graph!r}, '-m', 'hi']\n"
        "try:\n    runpy.run_module('engine.run', run_name='__main__')\n"
        "except SystemExit as exc:\n    assert not exc.code, exc.code\n"
    )
    home = {"TURNGRAPH_HOME": str(tmp_path)}
    first, second = (_loaded_after(code, home) for _ in range(2))
    assert "engine.dot" in first  # the first run had to read it
    assert _under(second, PARSERS) == []
    assert list((tmp_path / "graph-cache").iterdir())
