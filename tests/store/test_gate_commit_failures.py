"""A resumed gate's turn whose commit fails keeps its question: the answer's and the
timer's turn alike leave the pause in memory as the store still holds it, so no turn
number is reused and the question's input is never lost."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from engine.graph import Node
from engine.registry import HandlerRegistry
from sessions import SessionManager
from sessions.errors import CommitUnknown, NotPaused, SessionClosed, SessionPaused, StoreError
from sessions.store.base import TurnCommit
from sessions.store.sqlite import SQLiteStore

from ..sessions.session_kit import wait_until
from . import SECRET

GATE = """digraph gated {
  start [shape=Mdiamond]; done [shape=Msquare]
  approve [shape=hexagon, question="Ship it?" %s]
  ship [handler=ship]; hold [handler=hold]
  start -> approve
  approve -> ship [label=yes]
  approve -> hold [label=no]
  ship -> done; hold -> done
}
"""


class FlakyStore(SQLiteStore):
    """Refuses turn commits while ``failing``; ``unsure``: commits, then reports the
    outcome unknown."""

    failing = False
    unsure = False

    async def append_turn(self, session_id: str, commit: TurnCommit, *, token: int) -> None:
        if self.failing:
            raise StoreError(self.url, "disk unplugged")
        await super().append_turn(session_id, commit, token=token)
        if self.unsure:
            self.unsure = False
            raise CommitUnknown(self.url, "connection lost after COMMIT")


def _registry() -> HandlerRegistry:
    def ship(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
        return {"reply": f"shipped {ctx['session.input']}"}

    def hold(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
        late = " (timed out)" if ctx.get("node.approve.timed_out") else ""
        return {"reply": f"held {ctx['session.input']}{late}"}

    return HandlerRegistry({"ship": ship, "hold": hold})


@asynccontextmanager
async def _manager(tmp_path: Path, attrs: str = "") -> AsyncIterator[tuple[SessionManager, Any]]:
    dot = tmp_path / "gated.dot"
    dot.write_text(GATE % attrs)
    db = tmp_path / "flaky.db"
    store = FlakyStore(f"sqlite:///{db}", db, secret=SECRET, synchronous="NORMAL")
    async with store, SessionManager(store, registry=_registry(), turn_graph=dot) as m:
        yield m, store


async def test_a_failed_answer_commit_keeps_the_question(tmp_path: Path) -> None:
    async with _manager(tmp_path) as (m, store):
        session = await m.create("f1")
        assert (await session.send("v1")).status == "paused"
        store.failing = True
        with pytest.raises(StoreError, match="disk unplugged"):
            await session.answer("yes")
        assert session.question is not None and session.question.turn == 1
        assert session.turn_count == 0
        store.failing = False
        with pytest.raises(SessionPaused):
            await session.send("v2")  # the question still waits: v1 is not lost
        done = await session.answer("yes")
        assert (done.status, done.turn, done.reply) == ("success", 1, "shipped v1")
        assert [x.content for x in session.history] == ["v1", "shipped v1"]


async def test_a_failed_timer_commit_keeps_the_question(tmp_path: Path) -> None:
    async with _manager(tmp_path, ', timeout="50ms", default=no') as (m, store):
        session = await m.create("f2")
        store.failing = True
        with capture_logs() as logs:
            assert (await session.send("v1")).status == "paused"
            await wait_until(lambda: any(e["event"] == "gate.timeout_failed" for e in logs))
        # The question is back, its timer not re-armed to fail again at once.
        assert session.question is not None and session.question.turn == 1
        assert "f2" not in m.gate_timers and session.turn_count == 0
        store.failing = False
        nxt = await session.send("v2")  # the timed-out turn 1 first, then v2's turn
        assert (nxt.status, nxt.turn) == ("paused", 2)
        assert [x.content for x in session.history] == ["v1", "held v1 (timed out)"]


async def test_an_unknown_answer_commit_that_landed_drops_the_question(tmp_path: Path) -> None:
    async with _manager(tmp_path) as (m, store):
        session = await m.create("f3")
        assert (await session.send("v1")).status == "paused"
        store.unsure = True
        with anyio.fail_after(30), pytest.raises(CommitUnknown):
            await session.answer("yes")
        with pytest.raises(NotPaused):  # the store caught up: turn 1 is committed
            await session.answer("yes")
        nxt = await session.send("v2")
        assert (nxt.status, nxt.turn) == ("paused", 2)
        assert [x.content for x in session.history] == ["v1", "shipped v1"]


async def test_a_timer_armed_after_the_manager_exits_meets_session_closed(
    tmp_path: Path,
) -> None:
    """A pause that changes after its manager's exit (interrupted here by an error in
    the block) arms no timer: starting one is the typed SessionClosed the timers
    expect, not the exited task group's RuntimeError."""
    managers: list[SessionManager] = []

    async def failing_block() -> None:
        async with _manager(tmp_path, ', timeout="1h", default=no') as (m, _store):
            managers.append(m)
            assert (await (await m.create("f4")).send("v1")).status == "paused"
            raise LookupError("the block fails")

    with pytest.raises(LookupError):
        await failing_block()
    timers = managers[0].gate_timers
    with pytest.raises(SessionClosed):
        timers._spawn(anyio.sleep_forever)  # what arming a timer calls
