"""Heartbeats: run beside turns, never block them, applied between turns, back off on failure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio
import pytest
import structlog
from structlog.testing import capture_logs

from engine.graph import Node
from sessions import Limits
from sessions.errors import SessionBusy, SessionClosed
from sessions.heartbeat import HEARTBEAT_RUNS_KEPT, Heartbeat
from sessions.session import HEARTBEAT_HISTORY
from sessions.store.base import Store
from sessions.store.memory import MemoryStore

from .session_kit import SECRET, reply_registry, running, wait_until


class SlowBeat:
    """A heartbeat handler that blocks until released, then sets working memory."""

    def __init__(self) -> None:
        self.entered = anyio.Event()
        self.release = anyio.Event()
        self.calls = 0

    async def __call__(self, node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
        self.calls += 1
        self.entered.set()
        await self.release.wait()
        return {"memory.working": {"beat": self.calls}, "heartbeat.mode": "reflect"}


async def test_a_slow_heartbeat_does_not_delay_a_turn(store: Store) -> None:
    """While a heartbeat is stuck in flight, turns run and complete."""
    beat = SlowBeat()
    async with running(store, reply_registry(beat=beat)) as m:
        session = await m.create("hb")
        session.start_heartbeat(0.001)
        await beat.entered.wait()
        assert session.heartbeat.in_flight
        for i in range(3):
            assert (await session.send(f"while beating {i}")).ok
        assert session.heartbeat.in_flight and session.working_memory == {}
        beat.release.set()
        await wait_until(lambda: session.working_memory.get("beat") == 1)
        assert session.cognitive_mode == "reflect"
        session.stop_heartbeat()


async def test_heartbeat_result_waits_for_the_running_turn(store: Store) -> None:
    """A heartbeat finishing mid-turn is applied when the turn ends, then persisted."""
    entered, release = anyio.Event(), anyio.Event()
    seen: list[Any] = []

    async def llm(node: Node, ctx: Mapping[str, Any]) -> None:
        entered.set()
        await release.wait()
        seen.append(dict(ctx["session.working_memory"]))

    def beat(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
        return {"memory.working": {"mood": "calm"}}

    async with running(store, reply_registry(llm_call=llm, beat=beat)) as m:
        session = await m.create("between")
        async with anyio.create_task_group() as tg:
            tg.start_soon(session.send, "hello")
            await entered.wait()
            assert await session.heartbeat.beat() is True
            assert session.working_memory == {}  # not applied while the turn runs
            release.set()
        assert seen == [{}]
        assert session.working_memory == {"mood": "calm"}
        await session.send("persist it")
        await m.close("between")
        assert (await m.get("between")).working_memory == {"mood": "calm"}


async def test_the_latest_heartbeat_runs_are_kept_with_their_traces(store: Store) -> None:
    """Each run, failed or not, leaves its node trace in ``heartbeat.recent`` (the
    newest last, at most HEARTBEAT_RUNS_KEPT), for the viewer."""
    calls = 0

    def beat(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("the beat broke")
        return {"memory.working": {"beat": calls}}

    async with running(store, reply_registry(beat=beat)) as m:
        session = await m.create("kept")
        for _ in range(HEARTBEAT_RUNS_KEPT + 2):
            await session.heartbeat.beat()
        recent = list(session.heartbeat.recent)
        assert len(recent) == HEARTBEAT_RUNS_KEPT
        assert [r.run for r in recent] == list(range(3, HEARTBEAT_RUNS_KEPT + 3))
        assert all(r.status == "success" for r in recent)
        assert "beat" in [v["id"] for v in recent[0].trace]
        assert recent[0].graph_hash == session.heartbeat_graph.source_hash  # type: ignore[union-attr]
        await m.close("kept")
        session = await m.get("kept")
        for _ in range(2):
            await session.heartbeat.beat()
        assert session.heartbeat.recent[0].status == "success"
        calls = 1
        await session.heartbeat.beat()
        failed = session.heartbeat.recent[-1]
        assert failed.status == "fail" and "the beat broke" in (failed.error or "")


async def test_never_two_heartbeats_at_once(store: Store) -> None:
    """A beat requested while one is in flight is skipped."""
    beat = SlowBeat()
    async with running(store, reply_registry(beat=beat)) as m:
        session = await m.create("single")
        async with anyio.create_task_group() as tg:
            tg.start_soon(session.heartbeat.beat)
            await beat.entered.wait()
            assert await session.heartbeat.beat() is False
            beat.release.set()
        assert beat.calls == 1 and session.heartbeat.runs == 1


async def test_failures_back_off_and_are_reported(store: Store) -> None:
    """A failing heartbeat is counted, logged, backs off, and never breaks the session."""

    def beat(node: Node, ctx: Mapping[str, Any]) -> None:
        raise RuntimeError("no pulse")

    limits = Limits(heartbeat_max_backoff=0.02)
    async with running(store, reply_registry(beat=beat), limits=limits) as m:
        session = await m.create("sick")
        with capture_logs() as logs:
            session.start_heartbeat(0.001)
            await wait_until(lambda: session.heartbeat.failures >= 4)
            session.stop_heartbeat()
        hb = session.heartbeat
        assert hb.error_count >= 4 and "no pulse" in str(hb.last_error)
        failed = [e for e in logs if e["event"] == "heartbeat.failed"]
        assert len(failed) >= 4 and failed[0]["session_id"] == "sick"
        assert [e["failures"] for e in failed[:4]] == [1, 2, 3, 4]
        assert (await session.send("still alive")).ok


def test_backoff_doubles_per_failure_up_to_the_cap() -> None:
    """next_delay is interval * 2**failures, capped at max_backoff (never below interval)."""

    async def run(hb: Heartbeat) -> Mapping[str, Any]:
        return {}

    async def apply(ctx: Mapping[str, Any]) -> None:
        return None

    hb = Heartbeat("x", run, apply, max_backoff=10.0)
    hb.interval = 1.0
    delays = []
    for failures in range(6):
        hb.failures = failures
        delays.append(hb.next_delay())
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


async def test_stop_and_close_end_the_heartbeat(store: Store) -> None:
    """stop_heartbeat and closing the session stop the timer; a closed session refuses one."""
    calls = 0

    def beat(node: Node, ctx: Mapping[str, Any]) -> None:
        nonlocal calls
        calls += 1

    async with running(store, reply_registry(beat=beat)) as m:
        session = await m.create("stopper")
        session.start_heartbeat(0.001)
        await wait_until(lambda: calls >= 2)
        assert session.heartbeat.interval == 0.001
        session.stop_heartbeat()
        assert session.heartbeat.interval is None and not session.heartbeat.running
        session.start_heartbeat(0.001)
        await m.close("stopper")
        assert not session.heartbeat.running
        stopped_at = calls
        for _ in range(20):
            await anyio.sleep(0.001)
        assert calls == stopped_at
        with pytest.raises(SessionClosed):
            session.start_heartbeat(1.0)
        with pytest.raises(ValueError, match="interval"):
            session.heartbeat.start(0, lambda fn: None)


async def test_a_failing_heartbeat_prints_nothing_on_stdout(
    store: Store, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """With structlog unconfigured, a heartbeat failure is a stdlib warning, not stdout."""
    structlog.reset_defaults()

    def beat(node: Node, ctx: Mapping[str, Any]) -> None:
        raise RuntimeError("flatline")

    async with running(store, reply_registry(beat=beat)) as m:
        session = await m.create("quiet")
        assert await session.heartbeat.beat() is False
    assert capsys.readouterr().out == ""
    (record,) = [r for r in caplog.records if r.getMessage().startswith("heartbeat.failed")]
    assert record.levelname == "WARNING" and "flatline" in record.getMessage()


class GatedStateStore(MemoryStore):
    """A memory store whose ``update_state`` waits for ``gate`` (a slow disk)."""

    def __init__(self) -> None:
        super().__init__(secret=SECRET)
        self.writing, self.gate = anyio.Event(), anyio.Event()

    async def update_state(self, session_id: str, **kw: Any) -> None:
        self.writing.set()
        await self.gate.wait()
        await super().update_state(session_id, **kw)


async def test_an_idle_heartbeat_result_is_stored_under_the_lock() -> None:
    """A heartbeat result applied while idle is written by the heartbeat holding the
    session lock; a turn arriving meanwhile waits for it (never SessionBusy, even with
    no queue) and then commits on top of it."""

    def beat(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
        return {"memory.working": {"mood": "calm"}}

    store = GatedStateStore()
    limits = Limits(queue_size=0)
    async with running(store, reply_registry(beat=beat), limits=limits) as m:
        session = await m.create("gated")
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(session.heartbeat.beat)
                with anyio.fail_after(5):
                    await store.writing.wait()
                assert session.busy and session.working_memory == {"mood": "calm"}
                tg.start_soon(session.send, "after the beat")
                await wait_until(lambda: session.queued == 1)
                store.gate.set()
        finally:
            store.gate.set()  # on failure too: the manager's exit waits for the write
        meta = (await store.load("gated")).meta
        assert (meta.turn_count, dict(meta.working_memory)) == (1, {"mood": "calm"})


class CountingStateStore(MemoryStore):
    """A memory store counting ``update_state`` calls."""

    def __init__(self) -> None:
        super().__init__(secret=SECRET)
        self.writes = 0

    async def update_state(self, session_id: str, **kw: Any) -> None:
        self.writes += 1
        await super().update_state(session_id, **kw)


async def test_a_heartbeat_that_changes_nothing_writes_nothing() -> None:
    """Only a heartbeat result that changes the session state is written."""

    def beat(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
        return {"heartbeat.mode": "reflect"}

    store = CountingStateStore()
    async with running(store, reply_registry(beat=beat)) as m:
        session = await m.create("steady")
        for _ in range(3):
            assert await session.heartbeat.beat()
        await m.close("steady")
    assert store.writes == 1
    assert (await store.load("steady")).meta.cognitive_mode == "reflect"


async def test_a_heartbeat_sees_a_bounded_snapshot_of_the_history(store: Store) -> None:
    """The newest HEARTBEAT_HISTORY entries, frozen at the start of the beat: its cost
    does not grow with the conversation, and turns appending meanwhile do not show."""
    seen: list[tuple[int, int, int]] = []
    release = anyio.Event()

    async def beat(node: Node, ctx: Mapping[str, Any]) -> None:
        history = ctx["session.history"]
        before = len(history)
        await release.wait()
        seen.append((before, len(history), history[-1].seq))

    async with running(store, reply_registry(beat=beat)) as m:
        session = await m.create("hb-bounded")
        for i in range(HEARTBEAT_HISTORY // 2 + 5):  # two messages a turn
            await session.send(f"t{i}")
        last_seq = session.message_count - 1
        session.start_heartbeat(0.001)
        await wait_until(lambda: session.heartbeat.in_flight)
        await session.send("during the beat")
        release.set()
        await wait_until(lambda: bool(seen))
        session.stop_heartbeat()
    assert seen[0] == (HEARTBEAT_HISTORY, HEARTBEAT_HISTORY, last_seq)


async def test_a_heartbeat_result_arriving_during_the_turns_last_write_is_applied() -> None:
    """A turn ends by storing a waiting heartbeat result (beat 1); beat 2 finishes during
    that write and waits for the lock holder, who must apply and store it too before
    releasing the lock (else the idle session never shows it)."""
    entered, release = anyio.Event(), anyio.Event()
    n = 0

    async def llm(node: Node, ctx: Mapping[str, Any]) -> None:
        entered.set()
        await release.wait()

    def beat(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
        nonlocal n
        n += 1
        return {"memory.working": {"beat": n}}

    store = GatedStateStore()
    async with running(store, reply_registry(llm_call=llm, beat=beat)) as m:
        session = await m.create("late-beat")
        async with anyio.create_task_group() as tg:
            try:  # the gate opens on failure too: a shielded write would never end
                tg.start_soon(session.send, "hello")
                await entered.wait()
                assert await session.heartbeat.beat()  # beat 1 waits: a turn runs
                release.set()
                with anyio.fail_after(5):
                    await store.writing.wait()  # the turn's unlock is storing beat 1
                assert await session.heartbeat.beat()  # beat 2 arrives during that write
            finally:
                store.gate.set()
        await wait_until(lambda: not session.busy)
        assert session.working_memory == {"beat": 2}
        assert dict((await store.load("late-beat")).meta.working_memory) == {"beat": 2}


async def test_the_queue_bound_holds_while_a_turn_stores_its_last_state() -> None:
    """queue_size=1: while the running turn stores state before releasing the lock, a
    third sender gets SessionBusy (the write is part of the turn)."""
    entered, release = anyio.Event(), anyio.Event()
    calls = 0

    async def llm(node: Node, ctx: Mapping[str, Any]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            entered.set()
            await release.wait()

    def beat(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
        return {"memory.working": {"mood": "calm"}}

    store = GatedStateStore()
    busy: list[SessionBusy] = []

    async def send(text: str) -> None:
        try:
            await session.send(text)
        except SessionBusy as exc:
            busy.append(exc)

    registry = reply_registry(llm_call=llm, beat=beat)
    async with running(store, registry, limits=Limits(queue_size=1)) as m:
        session = await m.create("bound")
        async with anyio.create_task_group() as tg:
            try:  # the gate opens on failure too: a shielded write would never end
                tg.start_soon(send, "t1")
                await entered.wait()
                assert await session.heartbeat.beat()  # waits until t1 ends
                tg.start_soon(send, "t2")
                await wait_until(lambda: session.queued == 1)
                release.set()
                with anyio.fail_after(5):
                    await store.writing.wait()  # t1 is storing that state
                tg.start_soon(send, "t3")
                await wait_until(lambda: bool(busy))
                assert session.queued == 1
            finally:
                store.gate.set()
    assert len(busy) == 1
