"""Human gates under attack: a process killed (SIGKILL) in the middle of an answered or
retried turn, a gate that keeps timing out, and answers that are not plain choices."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest

from engine.graph import Node
from engine.registry import HandlerRegistry
from sessions import Limits, SessionManager
from sessions.errors import SessionPaused, UnknownChoice

from . import SECRET

ROOT = Path(__file__).resolve().parents[2]
GUARD = 60.0  # seconds before a stuck wait gives up (a hang guard, not a speed limit)

GATE = """digraph gated {
  start [shape=Mdiamond]; done [shape=Msquare]
  plan [handler=plan]
  approve [shape=hexagon, question="Ship it?"]
  ship [handler=ship]; hold [handler=plan]; note [handler=note]
  start -> plan -> approve
  approve -> ship [label=yes]
  approve -> hold [label=no]
  ship -> note -> done; hold -> done
}
"""

# The worker: ``note`` marks MARK then waits forever (the parent kills it there), so the
# process dies in the middle of the answered (or retried) turn, after the nodes before
# it (``ship`` among them: a retry starts there) ran and could have been checkpointed.
WORKER = """
import sys, time, anyio
from pathlib import Path
from engine.registry import HandlerRegistry
from sessions import Limits, SessionManager

url, dot, mark, action = sys.argv[1:5]

def plan(node, ctx):
    return {"plan": "plan for " + ctx["session.input"], "reply": "held"}

def ship(node, ctx):
    return {"reply": "shipped"}

def note(node, ctx):
    Path(mark).write_text("in note")
    time.sleep(3600)

async def main():
    registry = HandlerRegistry({"plan": plan, "ship": ship, "note": note})
    async with SessionManager(
        url, registry=registry, turn_graph=dot, store_secret=%r,
        limits=Limits(checkpoint=True), lease_ttl=1.0,
    ) as m:
        session = await m.get("k1")
        await (session.answer("yes") if action == "answer" else session.retry_turn())

anyio.run(main)
"""


def _registry(fail: list[str]) -> HandlerRegistry:
    def plan(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
        return {"plan": f"plan for {ctx['session.input']}", "reply": "held"}

    def ship(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
        if fail:
            raise RuntimeError(fail.pop())
        return {"reply": f"shipped {ctx['plan']}"}

    return HandlerRegistry({"plan": plan, "ship": ship, "note": lambda node, ctx: {}})


def _killed_in_note(tmp_path: Path, url: str, dot: Path, action: str) -> None:
    """Run ``action`` (answer or retry) in a worker process and SIGKILL it in ``note``."""
    script, mark = tmp_path / "worker.py", tmp_path / "in_note"
    script.write_text(WORKER % SECRET)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TURNGRAPH_HOME": str(tmp_path / "home")}
    argv = [sys.executable, str(script), url, str(dot), str(mark), action]
    proc = subprocess.Popen(argv, env=env)
    try:
        for _ in range(int(GUARD / 0.02)):
            if mark.exists() or proc.poll() is not None:
                break
            time.sleep(0.02)
        assert mark.exists(), "the worker never reached note"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(GUARD)
    mark.unlink()


async def _get_when_free(m: SessionManager, sid: str) -> Any:
    """The session, once the killed worker's lease (1 s) has run out."""
    from sessions.errors import SessionBusy

    with anyio.fail_after(GUARD):
        while True:
            try:
                return await m.get(sid)
            except SessionBusy:
                await anyio.sleep(0.2)


async def test_a_killed_answer_leaves_the_question_answerable(
    durable_url: str, tmp_path: Path
) -> None:
    """SIGKILL in the middle of the answered turn (checkpoints on, as ``sessions answer``
    runs): nothing of the turn is committed and the same question still waits, so the
    next process answers it and the turn commits once."""
    dot = tmp_path / "g.dot"
    dot.write_text(GATE)
    kw: dict[str, Any] = {"turn_graph": dot, "store_secret": SECRET}
    limits = Limits(checkpoint=True)
    async with SessionManager(durable_url, registry=_registry([]), limits=limits, **kw) as m:
        assert (await (await m.create("k1")).send("v1")).status == "paused"
    _killed_in_note(tmp_path, durable_url, dot, "answer")
    async with SessionManager(durable_url, registry=_registry([]), limits=limits, **kw) as m:
        session = await _get_when_free(m, "k1")
        assert session.question is not None and session.question.node == "approve"
        assert session.turn_count == 0
        with pytest.raises(SessionPaused):
            await session.send("another")
        done = await session.answer("yes")
        assert (done.status, done.turn, done.reply) == ("success", 1, "shipped plan for v1")
        assert [x.content for x in session.history] == ["v1", "shipped plan for v1"]
        assert len(await session.traces()) == 1


async def test_a_killed_retry_leaves_the_turn_retriable(durable_url: str, tmp_path: Path) -> None:
    """SIGKILL in the middle of a retried turn: the failed turn can still be retried."""
    dot = tmp_path / "g.dot"
    dot.write_text(GATE)
    kw: dict[str, Any] = {"turn_graph": dot, "store_secret": SECRET}
    limits = Limits(checkpoint=True)
    async with SessionManager(durable_url, registry=_registry(["down"]), limits=limits, **kw) as m:
        session = await m.create("k1")
        assert (await session.send("v1")).status == "paused"
        assert (await session.answer("yes")).status == "fail"
    _killed_in_note(tmp_path, durable_url, dot, "retry")
    async with SessionManager(durable_url, registry=_registry([]), limits=limits, **kw) as m:
        session = await _get_when_free(m, "k1")
        retried = await session.retry_turn()
        assert (retried.status, retried.turn) == ("success", 2)
        assert retried.reply == "shipped plan for v1"


async def test_send_runs_a_gate_that_keeps_timing_out_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gate whose default loops back to it, timing out every time it asks (here a
    clock that jumps an hour per reading): ``send`` runs the timed-out turn on once and
    then refuses, instead of looping for ever."""
    import sessions.gates

    class Clock:
        now = 1_800_000_000.0

        def time(self) -> float:
            self.now += 3600.0
            # Without a bound, each round re-pauses and runs on again, for ever.
            assert self.now < 1_800_000_000.0 + 3600.0 * 100, "send() loops on the gate"
            return self.now

    dot = tmp_path / "loop.dot"
    dot.write_text("""digraph g {
  start [shape=Mdiamond]; done [shape=Msquare]
  ask [shape=hexagon, timeout="1s", default=again]
  work [handler=plan]
  start -> ask
  ask -> work [label=again]
  ask -> done [label=stop]
  work -> ask
}""")
    async with SessionManager("memory:", registry=_registry([]), turn_graph=dot) as m:
        session = await m.create("t1")
        assert (await session.send("v1")).status == "paused"
        monkeypatch.setattr(sessions.gates, "time", Clock())
        with pytest.raises(SessionPaused):
            await session.send("v2")
        assert session.question is not None and session.turn_count == 0


@pytest.mark.parametrize(
    ("choice", "shown"),
    [
        (7, "no choice of type int (a choice is a str)"),
        (None, "no choice of type NoneType"),
        (b"yes", "no choice of type bytes"),
        ("y" * 10_000, "'" + "y" * 60 + "…"),
    ],
)
async def test_odd_choices_are_refused_in_one_short_line(
    tmp_path: Path, choice: Any, shown: str
) -> None:
    """A choice that is not a str, or is huge, is :class:`UnknownChoice` (the question
    still waits) with a message of bounded length."""
    dot = tmp_path / "g.dot"
    dot.write_text(GATE)
    async with SessionManager("memory:", registry=_registry([]), turn_graph=dot) as m:
        session = await m.create("c1")
        await session.send("v1")
        with pytest.raises(UnknownChoice) as info:
            await session.answer(choice)
        message = str(info.value)
        assert shown in message and len(message) < 300 and "\n" not in message
        assert session.question is not None


async def test_a_str_subclass_cannot_answer_every_choice(tmp_path: Path) -> None:
    """A ``str`` subclass equal to everything matches no choice: it is taken as its
    plain value, and the value stored is a plain ``str``."""

    class Sly(str):
        __hash__ = str.__hash__

        def __eq__(self, other: object) -> bool:
            return True

    dot = tmp_path / "g.dot"
    dot.write_text(GATE)
    async with SessionManager("memory:", registry=_registry([]), turn_graph=dot) as m:
        session = await m.create("c2")
        await session.send("v1")
        with pytest.raises(UnknownChoice):
            await session.answer(Sly("anything"))
        done = await session.answer(Sly("no"))
        assert done.reply == "held"


async def test_retry_is_refused_when_a_sub_graph_changed(tmp_path: Path) -> None:
    """The fingerprint a retry checks covers the sub-graphs the turn graph includes:
    editing ``child.dot`` refuses the retry as editing the parent does; a graph with no
    sub-graph keeps its plain source hash (checkpoints already stored still match)."""
    from engine import load_graph
    from sessions.checkpoints import graph_fingerprint
    from sessions.errors import RetryRefused

    child, parent = tmp_path / "child.dot", tmp_path / "parent.dot"
    child.write_text("""digraph c {
  start [shape=Mdiamond]; done [shape=Msquare]
  ship [handler=ship]; start -> ship -> done
}""")
    parent.write_text("""digraph p {
  start [shape=Mdiamond]; done [shape=Msquare]
  plan [handler=plan]; sub [graph="child.dot"]
  start -> plan -> sub -> done
}""")
    url = f"sqlite:///{tmp_path / 's.db'}"
    kw: dict[str, Any] = {"turn_graph": parent, "limits": Limits(checkpoint=True)}
    async with SessionManager(url, registry=_registry(["down", "down"]), **kw) as m:
        session = await m.create("r1")
        assert (await session.send("v1")).status == "fail"
        assert session.checkpoints.failed is not None
        assert session.checkpoints.failed.next_node == "sub"
        again = await session.retry_turn()  # unchanged: retried (and failing again)
        assert (again.status, again.turn) == ("fail", 2)
    child.write_text(child.read_text().replace("[handler=ship]", "[handler=plan]"))
    async with SessionManager(url, registry=_registry([]), **kw) as m:
        session = await m.get("r1")
        with pytest.raises(RetryRefused, match="the turn graph changed since turn 2 failed"):
            await session.retry_turn()
    lone = load_graph(tmp_path / "child.dot", registry=_registry([]))
    assert graph_fingerprint(lone) == lone.source_hash
