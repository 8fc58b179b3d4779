"""The attractor dialect against hostile input: the ``shell`` handler (``tool_command``)
and what a command leaves behind, floods and reads of ours (real ``/bin/sh``
subprocesses), edge weights no number holds, and replies that nest too deep."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import anyio
import pytest

from engine import Engine, load_graph
from engine.errors import GraphValidationError
from engine.outcome import Outcome
from handlers import build_registry
from handlers.adapters import ScriptedModel
from handlers.attractor import MAX_OUTPUT, Shell


def _shell(command: str, timeout: str = "30s") -> Outcome:
    text = f"""digraph g {{
      start [shape=Mdiamond]; exit [shape=Msquare]
      t [shape=parallelogram, tool_command="{command}", timeout="{timeout}"]
      start -> t -> exit
    }}"""
    node = load_graph(text, dialect="attractor").nodes["t"]

    async def call() -> Outcome:
        return await Shell(allowed=True)(node, {})

    return anyio.run(call)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_background_child_neither_holds_the_node_nor_outlives_it(tmp_path: Path) -> None:
    """The command ended: its node succeeds at once (not at its timeout, as a failure)
    and the child it left running with the pipes open is killed."""
    pid_file = tmp_path / "pid"
    outcome = _shell(f"sleep 60 & echo $! > {pid_file}; echo done")
    pid = int(pid_file.read_text())
    try:
        assert outcome.status == "success", outcome.reason
        assert outcome.updates["tool.output"] == "done\n"
        for _ in range(200):  # killed, then reaped by init: allow it a moment
            if not _alive(pid):
                break
            anyio.run(anyio.sleep, 0.01)
        assert not _alive(pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_a_child_that_leaves_the_group_does_not_hold_the_node(tmp_path: Path) -> None:
    """``setsid`` escapes the group kill (documented); its open pipes are read only for a
    moment after the command ends, so the node still ends without waiting its timeout."""
    pid_file = tmp_path / "pid"
    outcome = _shell(f"setsid sleep 60 & echo $! > {pid_file}; echo done")
    pid = int(pid_file.read_text())
    try:
        assert outcome.status == "success", outcome.reason
        assert outcome.updates["tool.output"] == "done\n"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_output_floods_are_capped_on_both_streams() -> None:
    flood = "head -c 3000000 /dev/zero | tr '\\\\0' a"
    outcome = _shell(f"{flood}; {flood} >&2")
    assert outcome.status == "success", outcome.reason
    assert outcome.updates["tool.output"] == "a" * MAX_OUTPUT
    assert outcome.updates["tool.stderr"] == "a" * MAX_OUTPUT


def test_the_command_does_not_see_turngraph_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The API token, the store's URL (and its password) and secret stay in the process."""
    monkeypatch.setenv("TURNGRAPH_API_TOKEN", "tok-secret")
    monkeypatch.setenv("TURNGRAPH_STORE", "postgresql://u:pw-secret@127.0.0.1/test")
    monkeypatch.setenv("TURNGRAPH_SECRET", "hmac-secret")
    monkeypatch.setenv("R15_PASSED_ON", "yes")
    outcome = _shell("env")
    output = outcome.updates["tool.output"]
    assert "R15_PASSED_ON=yes" in output
    assert "TURNGRAPH_" not in output and "secret" not in output


@pytest.mark.parametrize("weight", ["1e400", "-1e999", "nan", "inf"])
def test_an_infinite_weight_is_refused_naming_the_edge(weight: str) -> None:
    """``1e400`` read as ``inf`` (sorting edges by it, and a cache entry JSON cannot hold)."""
    text = f'digraph {{ start -> a [weight="{weight}"]; a -> exit }}'
    with pytest.raises(GraphValidationError) as info:
        load_graph(text, dialect="attractor")
    assert f"edge start -> a: weight must be a number, not '{weight}'" in str(info.value)


def test_a_reply_nesting_past_the_recursion_limit_is_no_status() -> None:
    """The model's reply is not ours: JSON nested 1,000 deep at its end (json.loads
    raises RecursionError there) is plain text, not a crash of the node."""
    graph = load_graph(
        "digraph { start [shape=Mdiamond]; exit [shape=Msquare]; a [prompt=go]; "
        "start -> a -> exit }",
        dialect="attractor",
    )
    reply = "done " + '{"a": [' * 500 + "}"
    model = ScriptedModel([reply])
    result = anyio.run(Engine(build_registry(llm=model)).run, graph)
    assert result.ok, result.error
    assert result.context["reply"] == reply
