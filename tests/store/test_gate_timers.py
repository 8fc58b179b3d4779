"""Gate timers on every store: a gate's timeout fires on time in a manager that hosts
the session, without any further call; an answer cancels it; a race with an answer
has one winner; a restart applies or arms it; two managers on one durable store write
the timed-out turn once."""

from __future__ import annotations

import time
import types
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

import sessions.gates
from engine.events import Event, TurnCommitted
from engine.graph import Node
from engine.registry import HandlerRegistry
from sessions import SessionManager
from sessions.errors import NotPaused
from sessions.store import ManualClock, OpenStore, open_store

from ..sessions.session_kit import wait_until
from . import SECRET

GUARD = 30.0
"""Generous bound on any wait: a test waits on an event, never on a duration."""

GATE = """digraph gated {
  start [shape=Mdiamond]; done [shape=Msquare]
  approve [shape=hexagon, question="Ship it?", timeout="%s" %s]
  ship [handler=ship]; hold [handler=hold]
  start -> approve
  approve -> ship [label=yes]
  approve -> hold [label=no]
  ship -> done; hold -> done
}
"""


class Commits:
    """A manager observer: an event set at each :class:`TurnCommitted`."""

    def __init__(self) -> None:
        self.seen: list[TurnCommitted] = []
        self.event = anyio.Event()

    def __call__(self, event: Event) -> None:
        if isinstance(event, TurnCommitted):
            self.seen.append(event)
            self.event.set()

    async def wait(self) -> TurnCommitted:
        """The first commit (waits for it, bounded by :data:`GUARD`)."""
        with anyio.fail_after(GUARD):
            await self.event.wait()
        return self.seen[0]


def _registry(started: anyio.Event | None = None, release: anyio.Event | None = None) -> Any:
    """``hold`` (the ``no`` branch) says whether the gate timed out; given ``started``
    and ``release`` it waits for ``release`` after setting ``started``."""

    def ship(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
        return {"reply": f"shipped {ctx['session.input']}"}

    async def hold(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
        if started is not None and release is not None:
            started.set()
            await release.wait()
        late = " (timed out)" if ctx.get("node.approve.timed_out") else ""
        return {"reply": f"held {ctx['session.input']}{late}"}

    return HandlerRegistry({"ship": ship, "hold": hold})


def _dot(tmp_path: Path, timeout: str, default: str | None = "no") -> Path:
    path = tmp_path / "gated.dot"
    path.write_text(GATE % (timeout, "" if default is None else f", default={default}"))
    return path


@asynccontextmanager
async def _manager(
    store: str | OpenStore, dot: Path, registry: Any = None, **kw: Any
) -> AsyncIterator[SessionManager]:
    async with SessionManager(
        store,
        registry=registry or _registry(),
        turn_graph=dot,
        store_secret=SECRET,
        **kw,
    ) as m:
        yield m


def _store(url: str, shared: OpenStore) -> str | OpenStore:
    """What a new manager opens: ``url``, except the one ``memory:`` store (shared)."""
    return shared if url == "memory:" else url


def _later(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Move the clock gate deadlines are read by ``seconds`` ahead (a restart that
    long after the pause), without sleeping."""
    real = time.time
    fake = types.SimpleNamespace(time=lambda: real() + seconds)
    monkeypatch.setattr(sessions.gates, "time", fake)


async def test_a_timeout_fires_with_no_further_call(
    store_url: str, shared: OpenStore, tmp_path: Path
) -> None:
    """The default is taken at the deadline and the turn committed like an answered
    one; nothing but the timer touched the session."""
    commits = Commits()
    async with _manager(
        _store(store_url, shared), _dot(tmp_path, "200ms"), observers=[commits]
    ) as m:
        session = await m.create("t1")
        assert (await session.send("v1")).status == "paused"
        assert "t1" in m.gate_timers
        with capture_logs() as logs:
            committed = await commits.wait()
        timed_out = [e for e in logs if e["event"] == "gate.timed_out"]
        assert timed_out and (timed_out[0]["node"], timed_out[0]["default"]) == ("approve", "no")
        assert (committed.session_id, committed.turn, committed.status) == ("t1", 1, "success")
        assert session.question is None and session.turn_count == 1
        assert [x.content for x in session.history] == ["v1", "held v1 (timed out)"]
        assert "t1" not in m.gate_timers
        (record,) = await m.store.turns("t1", 0, 10)
        assert [n["id"] for n in record.trace] == ["start", "approve", "hold", "done"]
        assert (await m.store.load("t1")).checkpoint is None
        assert (await session.send("v2")).status == "paused"  # the next turn asks again


async def test_a_timeout_without_default_fails_the_gate(
    store_url: str, shared: OpenStore, tmp_path: Path
) -> None:
    """No default: at the deadline the gate fails and the turn is stored as failed."""
    commits = Commits()
    dot = _dot(tmp_path, "200ms", default=None)
    async with _manager(_store(store_url, shared), dot, observers=[commits]) as m:
        session = await m.create("t2")
        assert (await session.send("v1")).status == "paused"
        assert (await commits.wait()).status == "fail"
        (record,) = await m.store.turns("t2", 0, 10)
        assert record.status == "fail" and "timed out with no default" in (record.error or "")
        assert session.question is None and session.turn_count == 1


async def test_an_answer_cancels_the_timer(
    store_url: str, shared: OpenStore, tmp_path: Path
) -> None:
    """Answered in time, the timer is disarmed: past the deadline nothing more runs."""
    dot = _dot(tmp_path, "200ms")
    async with _manager(_store(store_url, shared), dot) as m:
        session = await m.create("t3")
        await session.send("v1")
        assert "t3" in m.gate_timers
        assert (await session.answer("yes")).reply == "shipped v1"
        assert "t3" not in m.gate_timers and len(m.gate_timers) == 0
        await anyio.sleep(0.4)  # past the deadline: a timer left armed would act now
        assert session.turn_count == 1 and len(await m.store.turns("t3", 0, 10)) == 1


async def test_an_answer_racing_the_timer_gets_not_paused(
    store_url: str, shared: OpenStore, tmp_path: Path
) -> None:
    """The timer's turn holds the session lock; an answer queued behind it finds the
    question gone (NotPaused) and writes nothing."""
    started, release = anyio.Event(), anyio.Event()
    dot = _dot(tmp_path, "200ms")
    async with _manager(_store(store_url, shared), dot, _registry(started, release)) as m:
        session = await m.create("t4")
        await session.send("v1")
        refused: list[BaseException] = []

        async def late_answer() -> None:
            try:
                await session.answer("yes")
            except NotPaused as exc:
                refused.append(exc)

        with anyio.fail_after(GUARD):
            await started.wait()  # the timer's turn is in ``hold``
            async with anyio.create_task_group() as tg:
                tg.start_soon(late_answer)
                await wait_until(lambda: session.queued == 1, limit=GUARD)  # behind the lock
                release.set()
        assert len(refused) == 1 and "no question is waiting" in str(refused[0])
        assert session.turn_count == 1
        assert [x.content for x in session.history] == ["v1", "held v1 (timed out)"]
        assert len(await m.store.turns("t4", 0, 10)) == 1


async def test_a_manager_opened_after_the_deadline_applies_it(
    store_url: str, shared: OpenStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closing the manager disarms its timer; a manager opened past the deadline
    applies the timeout on load, with no call but the load."""
    dot = _dot(tmp_path, "60s")
    async with _manager(_store(store_url, shared), dot) as m:
        assert (await (await m.create("t5")).send("v1")).status == "paused"
        assert "t5" in m.gate_timers
    assert len(m.gate_timers) == 0
    _later(monkeypatch, 120)
    commits = Commits()
    async with _manager(_store(store_url, shared), dot, observers=[commits]) as m:
        session = await m.get("t5")
        assert (await commits.wait()).turn == 1
        assert session.history[-1].content == "held v1 (timed out)"


async def test_a_manager_opened_before_the_deadline_arms_the_timer(
    store_url: str, shared: OpenStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session loaded paused with a deadline still ahead gets a timer, which fires
    at the deadline."""
    dot = _dot(tmp_path, "60s")
    async with _manager(_store(store_url, shared), dot) as m:
        await (await m.create("t7")).send("v1")
    _later(monkeypatch, 59.8)  # 0.2 s left
    commits = Commits()
    async with _manager(_store(store_url, shared), dot, observers=[commits]) as m:
        session = await m.get("t7")
        assert "t7" in m.gate_timers and session.question is not None
        assert (await commits.wait()).turn == 1
        assert session.history[-1].content == "held v1 (timed out)"


async def test_two_managers_on_one_store_write_the_timeout_once(
    durable_url: str, tmp_path: Path
) -> None:
    """Manager A hosts the paused session; B takes it over once A's lease has expired
    by B's clock (A stalled).  Both hold a timer; at the deadline only the lease holder
    writes: A is fenced and drops the session, the store has one turn."""
    dot = _dot(tmp_path, "300ms")
    commits = Commits()
    async with _manager(durable_url, dot) as a:
        session_a = await a.create("t8")
        assert (await session_a.send("v1")).status == "paused"
        clock = ManualClock()
        clock.advance(a.lease_ttl * 2)
        async with (
            open_store(durable_url, secret=SECRET, clock=clock) as store_b,
            _manager(store_b, dot, observers=[commits]) as b,
        ):
            session_b = await b.get("t8")
            assert "t8" in a.gate_timers and "t8" in b.gate_timers
            assert (await commits.wait()).turn == 1
            # A's timer fires too: its write is fenced and A stops hosting the session.
            await wait_until(lambda: not a.live, limit=GUARD)
            assert session_a.closed and session_b.turn_count == 1
            (record,) = await store_b.turns("t8", 0, 10)
            assert record.status == "success"
            assert [x.content for x in await session_b.all()] == ["v1", "held v1 (timed out)"]


async def test_a_fenced_session_never_touches_the_timer_of_its_successor(
    durable_url: str, tmp_path: Path
) -> None:
    """A manager fenced out of a session while an answer runs, which hosts the session
    again later, arms a timer for the new copy; the old copy's answer, cancelled
    afterwards, puts its own question back but must leave the new copy's timer armed."""
    started, release = anyio.Event(), anyio.Event()

    async def ship(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
        started.set()
        await release.wait()
        return {"reply": "shipped"}

    registry = HandlerRegistry({"ship": ship, "hold": lambda node, ctx: {"reply": "held"}})
    async with _manager(durable_url, _dot(tmp_path, "60s"), registry, lease_ttl=0.3) as m:
        old = await m.create("t9")
        assert (await old.send("v1")).status == "paused"
        async with anyio.create_task_group() as tg:
            tg.start_soon(old.answer, "yes")
            with anyio.fail_after(GUARD):
                await started.wait()
            clock = ManualClock()
            clock.advance(m.lease_ttl * 2)  # another process finds the lease expired
            async with open_store(durable_url, secret=SECRET, clock=clock) as other:
                token = await other.acquire("t9", "other", m.lease_ttl)
                await wait_until(lambda: not m.live, limit=GUARD)  # renewal: fenced
                await other.release("t9", "other", token)
            new = await m.get("t9")  # the lease taken afresh; the question still stored
            assert new is not old and new.question is not None and "t9" in m.gate_timers
            tg.cancel_scope.cancel()  # the old copy's answer: cancelled, its question back
        assert old.closed and old.question is not None
        assert "t9" in m.gate_timers, "the new copy's timer was disarmed by the old copy"
