"""The command line prints a model's reply as it streams, in a single turn (plain and on
a stored session): read from the process's stdout while the loopback server still holds
the stream open.  ``sessions show`` adds up the usage of every stored turn."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.llm_servers import Held, LLMServer, Reply

ROOT = Path(__file__).resolve().parent.parent
TURN = str(ROOT / "graphs" / "turn.dot")
GUARD = 60.0
"""Seconds before a stuck read gives up (a hang guard, not a speed limit)."""


@pytest.fixture(params=("openai", "anthropic"))
def server(request: pytest.FixtureRequest) -> Iterator[LLMServer]:
    pytest.importorskip(request.param)
    with LLMServer(request.param) as s:
        yield s


def _env() -> dict[str, str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "ANTHROPIC_", "TURNGRAPH_LLM"))
    }
    return {**clean, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}


def _read_until(proc: subprocess.Popen[bytes], wanted: bytes) -> bytes:
    """Bytes from ``proc``'s stdout as they come, until ``wanted`` is among them."""
    assert proc.stdout is not None
    seen = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while wanted not in seen:
            if not sel.select(GUARD):
                raise AssertionError(f"no output for {GUARD}s; so far {seen!r}")
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                raise AssertionError(f"stdout closed before {wanted!r}; got {seen!r}")
            seen += chunk
    return seen


@pytest.mark.parametrize("stored", [False, True], ids=["plain", "session"])
def test_the_first_text_is_printed_before_the_server_finishes(
    server: LLMServer, stored: bool, tmp_path: Path
) -> None:
    held = Held(Reply(tokens=("Early", " bird", " gets"), usage=(12, 3)), after=1)
    server.script(held)
    args = [TURN, "-m", "hi", "--llm", f"{server.provider}:m", "--llm-base-url", server.url]
    if stored:
        args += ["--session", "s1", "--store", f"sqlite:///{tmp_path / 's.db'}"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.run", *args],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        first = _read_until(proc, b"Early")
        assert not held.release.is_set()  # the server is still holding the rest back
        assert b"bird" not in first
        held.release.set()
        out, err = proc.communicate(timeout=GUARD)
    finally:
        held.release.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()
    stdout = (first + out).decode()
    assert stdout.splitlines()[0] == "Early bird gets"
    assert stdout.count("Early bird gets") == 1


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine.run", *args],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_sessions_show_adds_up_every_turn(server: LLMServer, tmp_path: Path) -> None:
    """Per model and in total, over every stored turn (not only the ``-n`` shown)."""
    server.script(
        Reply(tokens=("one",), usage=(30, 2), model="alpha"),
        Reply(tokens=("two",), usage=(40, 5), model="beta"),
    )
    store = f"sqlite:///{tmp_path / 's.db'}"
    llm = ("--llm", f"{server.provider}:m", "--llm-base-url", server.url)
    for text in ("a", "b"):
        run = _run(TURN, "-m", text, "--session", "s", "--store", store, *llm)
        assert run.returncode == 0, run.stderr
    show = ("sessions", "--store", store, "show", "s", "-n", "1")
    table = _run(*show)
    assert table.returncode == 0, table.stderr
    rows = {
        cells[0]: cells[1:]
        for line in table.stdout.splitlines()
        if len(cells := [c.strip() for c in line.strip("│ ").split("│")]) == 4
    }
    assert rows["alpha"] == ["1", "30", "2"] and rows["beta"] == ["1", "40", "5"]
    assert rows["total"] == ["2", "70", "7"]
    usage = json.loads(_run(*show, "--json").stdout)["usage"]
    assert (usage["turns"], usage["input_tokens"], usage["output_tokens"]) == (2, 70, 7)
    assert usage["by_model"]["beta"] == {"calls": 1, "input_tokens": 40, "output_tokens": 5}
