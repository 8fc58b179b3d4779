"""Every script in examples/ runs and gives the result it promises."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str) -> ModuleType:
    """Import examples/NAME.py as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_is_covered() -> None:
    """A new example must get a test here."""
    assert sorted(p.stem for p in EXAMPLES.glob("*.py")) == [
        "custom_adapter",
        "custom_handler",
        "tool_loop",
    ]


async def test_custom_handler(capsys: pytest.CaptureFixture[str]) -> None:
    """The registered ``shout`` handler upper-cases the echo and adds its suffix."""
    assert await load_example("custom_handler").main() == "ECHO: HELLO GRAPHS!"
    assert capsys.readouterr().out == "ECHO: HELLO GRAPHS!\n"


async def test_custom_adapter(capsys: pytest.CaptureFixture[str]) -> None:
    """The injected model answers the turn."""
    assert await load_example("custom_adapter").main() == ("turns are graphs", "reverse-1")
    capsys.readouterr()


async def test_tool_loop(capsys: pytest.CaptureFixture[str]) -> None:
    """The custom tool is called once and its result is the reply."""
    reply, visited = await load_example("tool_loop").main()
    assert reply == "echo: 5"
    assert visited.count("dispatch_tools") == 1
    capsys.readouterr()
