"""Human gates and retry-from-a-node, on every store: a pause that outlives its manager,
answers (good, unknown, late), timeouts, and failed turns re-run from their node."""

from __future__ import annotations

import time
import types
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

import sessions.gates
from engine.errors import GatePaused, HandlerError
from engine.events import RunPaused
from engine.graph import Node
from engine.registry import HandlerRegistry
from sessions import Limits, SessionManager, TurnResult
from sessions.errors import (
    GateTimedOut,
    NotPaused,
    RetryRefused,
    SessionPaused,
    UnknownChoice,
)
from sessions.store import OpenStore

from . import SECRET

GATE = """digraph gated {
  start [shape=Mdiamond]; done [shape=Msquare]
  plan [handler=plan]
  approve [shape=hexagon, question="Ship it?" %s]
  ship [handler=ship]; hold [handler=hold]
  start -> plan -> approve
  approve -> ship [label=yes]
  approve -> hold [label=no]
  ship -> done; hold -> done
}
"""


def _registry(fails: list[str] | None = None) -> HandlerRegistry:
    """``plan`` writes a context value the later nodes need; ``ship`` fails while
    ``fails`` holds entries (one per call)."""

    def plan(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
        return {"plan": f"plan for {ctx['session.input']}"}

    def ship(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
        if fails:
            raise RuntimeError(fails.pop())
        return {"reply": f"shipped {ctx['plan']}"}

    def hold(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
        late = ctx.get("node.approve.timed_out")
        return {"reply": f"held {ctx['plan']}" + (" (timed out)" if late else "")}

    return HandlerRegistry({"plan": plan, "ship": ship, "hold": hold})


def _dot(tmp_path: Path, attrs: str = "") -> Path:
    path = tmp_path / "gated.dot"
    path.write_text(GATE % attrs)
    return path


@asynccontextmanager
async def _manager(
    url: str, shared: OpenStore, dot: Path, registry: HandlerRegistry, **kw: Any
) -> AsyncIterator[SessionManager]:
    """A manager like a new process would open: its own store connection on ``url``
    (the one ``memory:`` store is shared: it lives in this process only)."""
    store: Any = shared if url == "memory:" else url
    async with SessionManager(
        store, registry=registry, turn_graph=dot, store_secret=SECRET, **kw
    ) as m:
        yield m


async def test_a_gate_pauses_durably_and_a_new_manager_answers(
    store_url: str, shared: OpenStore, tmp_path: Path
) -> None:
    """The pause commits nothing, refuses new turns, and a later manager's answer runs
    the turn on from the gate with the context as it was."""
    dot = _dot(tmp_path)
    async with _manager(store_url, shared, dot, _registry()) as m:
        session = await m.create("g1")
        paused = await session.send("the release")
        assert (paused.status, paused.turn, paused.reply) == ("paused", 1, "")
        assert (paused.question, paused.choices) == ("Ship it?", ("yes", "no"))
        assert isinstance(paused.error, GatePaused) and paused.error.node_id == "approve"
        assert [r.node_id for r in paused.trace] == ["start", "plan"]
        assert session.turn_count == 0 and list(session.history) == []
        assert await session.traces() == ()
        q = session.question
        assert q is not None and (q.node, q.text, q.choices, q.deadline) == (
            "approve",
            "Ship it?",
            ("yes", "no"),
            None,
        )
        with pytest.raises(SessionPaused, match=r"'g1'.*Ship it\? \[yes, no\]") as refused:
            await session.send("another")
        assert refused.value.choices == ("yes", "no")
        with pytest.raises(UnknownChoice, match="choose one of: yes, no") as bad:
            await session.answer("maybe")
        assert (bad.value.choice, bad.value.node) == ("maybe", "approve")
        assert session.question is not None  # still waiting
    async with _manager(store_url, shared, dot, _registry()) as m:
        session = await m.get("g1")
        assert session.question is not None and session.question.turn == 1
        done = await session.answer("yes")
        assert (done.status, done.turn) == ("success", 1)
        assert done.reply == "shipped plan for the release"
        assert [r.node_id for r in done.trace] == ["approve", "ship", "done"]
        assert [x.content for x in session.history] == ["the release", done.reply]
        (record,) = await session.traces()
        assert [n["id"] for n in record.trace] == ["start", "plan", "approve", "ship", "done"]
        assert session.question is None
        assert (await m.store.load("g1")).checkpoint is None
        with pytest.raises(NotPaused, match="no question is waiting"):
            await session.answer("yes")
        again = await session.send("v2")  # the gate asks every turn that reaches it
        assert again.status == "paused" and again.turn == 2
        assert (await session.answer("no")).reply == "held plan for v2"


async def test_a_timed_out_gate_takes_its_default(
    store_url: str, shared: OpenStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the deadline, a late answer finds the default taken (and says so).  The
    pausing manager closes before the deadline (a manager hosting the session would
    apply it itself: tests/store/test_gate_timers.py); the clock then moves past it."""
    dot = _dot(tmp_path, ', timeout="60s", default=no')
    async with _manager(store_url, shared, dot, _registry()) as m:
        session = await m.create("g2")
        assert (await session.send("x")).status == "paused"
        q = session.question
        assert q is not None and q.default == "no" and q.deadline is not None
    real = time.time
    monkeypatch.setattr(sessions.gates, "time", types.SimpleNamespace(time=lambda: real() + 120))
    async with _manager(store_url, shared, dot, _registry()) as m:
        session = await m.get("g2")
        with pytest.raises(GateTimedOut, match="'approve' timed out: its default 'no' was taken"):
            await session.answer("yes")
        assert session.turn_count == 1 and session.question is None
        assert session.history[-1].content == "held plan for x (timed out)"


async def test_a_timed_out_gate_without_default_fails_then_the_new_turn_runs(
    store_url: str, shared: OpenStore, tmp_path: Path
) -> None:
    """No default: the waiting turn fails at the gate; the new input is not lost."""
    dot = _dot(tmp_path, ', timeout="1ms"')
    async with _manager(store_url, shared, dot, _registry()) as m:
        session = await m.create("g3")
        assert (await session.send("first")).status == "paused"
        await anyio.sleep(0.01)
        second = await session.send("second")
        assert (second.status, second.turn) == ("paused", 2)
        (failed,) = await session.traces()
        assert failed.status == "fail" and "timed out with no default" in (failed.error or "")
        assert session.question is not None and session.question.turn == 2


async def test_stream_shows_the_pause(store_url: str, shared: OpenStore, tmp_path: Path) -> None:
    """A streamed turn ends with RunPaused and a paused result (no TurnCommitted)."""
    async with _manager(store_url, shared, _dot(tmp_path), _registry()) as m:
        session = await m.create("g4")
        seen: list[Any] = [e async for e in session.stream("s")]
        paused = [e for e in seen if isinstance(e, RunPaused)]
        assert len(paused) == 1 and paused[0].choices == ("yes", "no")
        assert isinstance(seen[-1], TurnResult) and seen[-1].status == "paused"
        assert "TurnCommitted" not in {type(e).__name__ for e in seen}


async def test_a_pause_is_answered_only_with_the_graph_that_asked(
    store_url: str, shared: OpenStore, tmp_path: Path
) -> None:
    """Loaded with another graph, a pause is reported, not answered, yet kept for its
    own graph; a new turn under the other graph supersedes it."""
    dot = _dot(tmp_path)
    async with _manager(store_url, shared, dot, _registry()) as m:
        assert (await (await m.create("g5")).send("old")).status == "paused"
    other = tmp_path / "other.dot"
    other.write_text(GATE.replace("Ship it?", "Ship it now?") % "")
    async with _manager(store_url, shared, other, _registry()) as m:
        session = await m.get("g5")
        assert session.question is None and session.interrupted_turn is not None
        with pytest.raises(NotPaused, match="another version of the turn graph"):
            await session.answer("yes")
    async with _manager(store_url, shared, dot, _registry()) as m:
        session = await m.get("g5")
        assert (await session.answer("no")).reply == "held plan for old"
    async with _manager(store_url, shared, dot, _registry()) as m:
        assert (await (await m.get("g5")).send("v2")).status == "paused"
    async with _manager(store_url, shared, other, _registry()) as m:
        session = await m.get("g5")
        assert (await session.send("new")).status == "paused"
        assert session.question is not None and session.question.text == "Ship it now?"


# --------------------------------------------------------------------------- retry

CHAIN = """digraph chain {
  start [shape=Mdiamond]; done [shape=Msquare]
  plan [handler=plan]; ship [handler=ship]
  start -> plan -> ship -> done
}
"""


async def test_retry_runs_a_failed_turn_from_its_node_in_a_new_manager(
    store_url: str, shared: OpenStore, tmp_path: Path
) -> None:
    """The failed node runs again with the context just before it; the failed turn's
    record stays, the retry is the next turn."""
    dot = tmp_path / "chain.dot"
    dot.write_text(CHAIN)
    fails = ["disk full"]
    limits = Limits(checkpoint=True)
    async with _manager(store_url, shared, dot, _registry(fails), limits=limits) as m:
        failed = await (await m.create("r1")).send("build")
        assert failed.status == "fail" and isinstance(failed.error, HandlerError)
    async with _manager(store_url, shared, dot, _registry(), limits=limits) as m:
        session = await m.get("r1")
        result = await session.retry_turn()
        assert (result.status, result.turn) == ("success", 2)
        assert result.reply == "shipped plan for build"
        assert [r.node_id for r in result.trace] == ["ship", "done"]
        first, second = await session.traces()
        assert (first.status, second.status) == ("fail", "success")
        assert [n["id"] for n in second.trace] == ["start", "plan", "ship", "done"]
        assert [x.content for x in session.history] == ["build", result.reply]
        with pytest.raises(RetryRefused, match="no failed turn to retry"):
            await session.retry_turn()


async def test_retry_is_refused_when_the_graph_changed(
    store_url: str, shared: OpenStore, tmp_path: Path
) -> None:
    """Editing the .dot file after the failure changes its fingerprint: refused."""
    dot = tmp_path / "chain.dot"
    dot.write_text(CHAIN)
    limits = Limits(checkpoint=True)
    async with _manager(store_url, shared, dot, _registry(["boom"]), limits=limits) as m:
        assert (await (await m.create("r2")).send("x")).status == "fail"
    dot.write_text(CHAIN.replace("plan [handler=plan]", "plan [handler=plan, note=edited]"))
    async with _manager(store_url, shared, dot, _registry(), limits=limits) as m:
        session = await m.get("r2")
        with pytest.raises(RetryRefused, match="turn graph changed since turn 1 failed"):
            await session.retry_turn()
        assert session.turn_count == 1


async def test_retry_needs_checkpoints_and_a_failed_latest_turn(
    store_url: str, shared: OpenStore, tmp_path: Path
) -> None:
    """Checkpoints off: nothing was kept; a later turn supersedes a failed one."""
    dot = tmp_path / "chain.dot"
    dot.write_text(CHAIN)
    async with _manager(store_url, shared, dot, _registry(["boom"])) as m:
        session = await m.create("r3")
        assert (await session.send("x")).status == "fail"
        with pytest.raises(RetryRefused, match=r"checkpoints are off \(Limits.checkpoint\)"):
            await session.retry_turn()
    limits = Limits(checkpoint=True)
    async with _manager(store_url, shared, dot, _registry(["boom"]), limits=limits) as m:
        session = await m.create("r4")
        assert (await session.send("x")).status == "fail"
        assert (await session.send("y")).ok
        with pytest.raises(RetryRefused, match="no failed turn"):
            await session.retry_turn()


@pytest.mark.parametrize("checkpoint", [False, True])
async def test_a_cancelled_answer_leaves_the_question_waiting(
    store_url: str, shared: OpenStore, tmp_path: Path, checkpoint: bool
) -> None:
    """Cancelling the answered turn stores nothing of it: the question waits again, in
    this process and in the next."""
    started, dot = anyio.Event(), _dot(tmp_path)

    async def ship(node: Node, ctx: Mapping[str, Any]) -> None:
        started.set()
        await anyio.sleep_forever()

    registry = _registry()
    registry.register("ship", ship, replace=True)
    limits = Limits(checkpoint=checkpoint)
    async with _manager(store_url, shared, dot, registry, limits=limits) as m:
        session = await m.create("g6")
        assert (await session.send("x")).status == "paused"
        async with anyio.create_task_group() as tg:
            tg.start_soon(session.answer, "yes")
            await started.wait()
            tg.cancel_scope.cancel()
        assert session.question is not None and not session.busy
    async with _manager(store_url, shared, dot, _registry(), limits=limits) as m:
        session = await m.get("g6")
        assert session.question is not None and session.turn_count == 0
        assert (await session.answer("yes")).reply == "shipped plan for x"


def test_checkpoint_kinds_round_trip_and_old_bodies_read_as_running() -> None:
    """Paused and failed checkpoints keep their fields through the codec; a body
    written before they existed (no ``kind``) reads as a running checkpoint, so stores
    need no migration; a bad kind is refused."""
    from sessions.store.base import Checkpoint
    from sessions.store.codec import ShapeError, checkpoint_from_dict, checkpoint_to_dict

    base = Checkpoint(2, "h", "s:2", "hi", "plan", "approve", {"plan": "p"}, ({"id": "plan"},), 1.0)
    old = checkpoint_to_dict(base)
    assert "kind" not in old and checkpoint_from_dict(old) == base
    paused = Checkpoint(
        *(2, "h", "s:2", "hi", "plan", "approve", {"plan": "p"}, ({"id": "plan"},), 1.0),
        kind="paused",
        question="Ship it?",
        choices=("yes", "no"),
        default="no",
        deadline=61.0,
    )
    assert checkpoint_from_dict(checkpoint_to_dict(paused)) == paused
    with pytest.raises(ShapeError, match="kind 'odd'"):
        checkpoint_from_dict({**checkpoint_to_dict(paused), "kind": "odd"})


async def test_a_paused_session_is_exported_and_answered_elsewhere(
    store_url: str, shared: OpenStore, tmp_path: Path
) -> None:
    """The signed export carries the pause; the store it is imported into answers it."""
    from sessions.store.memory import MemoryStore

    dot = _dot(tmp_path)
    async with _manager(store_url, shared, dot, _registry()) as m:
        assert (await (await m.create("g7")).send("moved")).status == "paused"
    doc = await shared.export("g7")
    async with MemoryStore(secret=SECRET) as other:
        await other.import_(doc)
        async with _manager("memory:", other, dot, _registry()) as m:
            session = await m.get("g7")
            assert (await session.answer("yes")).reply == "shipped plan for moved"
