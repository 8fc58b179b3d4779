"""Session turns: results, FIFO order, failures, cancellation, phase, queue and traces."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import structlog
from structlog.testing import LogCapture, capture_logs

from engine.errors import HandlerError, HandlerTimeout
from engine.graph import Node
from engine.outcome import Outcome
from engine.testing import build_graph
from sessions import HistoryView, Limits, Session
from sessions.errors import SessionBusy, SessionClosed
from sessions.store.base import Store

from .session_kit import chain_graph, reply_registry, running, wait_until


class Gate:
    """A handler that blocks until released; ``entered`` is set once it runs."""

    def __init__(self, result: Any = None) -> None:
        self.entered = anyio.Event()
        self.release = anyio.Event()
        self.result = result
        self.calls = 0

    async def __call__(self, node: Node, ctx: Mapping[str, Any]) -> Any:
        self.calls += 1
        self.entered.set()
        await self.release.wait()
        return self.result


async def test_send_returns_reply_and_appends_both_messages(store: Store) -> None:
    """A turn appends the user message and the reply, and counts the turn."""
    async with running(store) as manager:
        session = await manager.get_or_create("s1")
        result = await session.send("hello")
    assert (result.reply, result.status, result.turn, result.ok) == (
        "re: hello",
        "success",
        1,
        True,
    )
    assert [n.node_id for n in result.trace] == list(
        ("start", "classify", "recall", "llm_call", "format", "done")
    )
    assert [(m.seq, m.role, m.content, m.turn) for m in session.history] == [
        (0, "user", "hello", 1),
        (1, "assistant", "re: hello", 1),
    ]
    assert session.turn_count == 1
    assert session.phase == "idle"
    assert result.trace_id == session.trace_id == "s1:1"


async def test_handlers_see_session_keys_and_a_live_read_only_history(store: Store) -> None:
    """The context carries session.* keys; the history is one live view, not a copy."""
    seen: list[dict[str, Any]] = []

    def recall(node: Node, ctx: Mapping[str, Any]) -> None:
        seen.append(dict(ctx))

    async with running(store, reply_registry(recall=recall)) as m:
        session = await m.create("keys", agent_id="bot", type="background")
        await session.send("one")
        await session.send("two")
    first, second = seen
    assert first["session.id"] == "keys"
    assert first["session.agent_id"] == "bot"
    assert first["session.type"] == "background"
    assert (first["session.input"], second["session.input"]) == ("one", "two")
    assert (first["session.turn_count"], second["session.turn_count"]) == (0, 1)
    assert first["session.trace_id"] == "keys:1"
    assert first["session.phase"] == "processing"
    history = second["session.history"]
    assert history is first["session.history"] is session.history
    assert isinstance(history, HistoryView)
    assert [m.content for m in history] == ["one", "re: one", "two", "re: two"]
    assert not hasattr(history, "append")
    with pytest.raises(TypeError):
        second["session.working_memory"]["x"] = 1


async def test_turn_messages_and_working_memory_are_applied_and_stored(store: Store) -> None:
    """``turn.messages`` go before the reply; ``memory.working`` merges and persists."""

    def llm(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "turn.messages": [{"role": "tool", "content": "42", "meta": {"tool": "calc"}}],
            "memory.working": {"topic": ctx["session.input"], "gone": None},
        }

    async with running(store, reply_registry(llm_call=llm)) as m:
        session = await m.create("wm")
        await session.send("math")
        assert [(x.role, x.content) for x in session.history] == [
            ("user", "math"),
            ("tool", "42"),
            ("assistant", "re: math"),
        ]
        assert session.working_memory == {"topic": "math"}
        assert session.history[1].meta == {"tool": "calc"}
        await m.close("wm")
        again = await m.get("wm")
    assert again.working_memory == {"topic": "math"}
    assert [x.seq for x in again.history] == [0, 1, 2]


async def test_fifty_concurrent_sends_run_in_arrival_order(store: Store) -> None:
    """Turns on one session run one at a time, in the order they were sent."""
    running_now = 0
    overlap = False

    async def llm(node: Node, ctx: Mapping[str, Any]) -> None:
        nonlocal running_now, overlap
        running_now += 1
        overlap |= running_now > 1
        await anyio.lowlevel.checkpoint()
        running_now -= 1

    async with running(store, reply_registry(llm_call=llm)) as m:
        session = await m.get_or_create("fifo")
        results: list[Any] = []

        async def send(i: int) -> None:
            results.append(await session.send(f"m{i}"))

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(send, i)
        page = await session.messages(0, 200)
    assert not overlap
    assert len(results) == 50 and all(r.ok for r in results)
    assert sorted(r.turn for r in results) == list(range(1, 51))
    users = [x.content for x in page.items if x.role == "user"]
    assert users == [f"m{i}" for i in range(50)]
    replies = [x.content for x in page.items if x.role == "assistant"]
    assert replies == [f"re: m{i}" for i in range(50)]
    assert page.total == 100 and session.turn_count == 50


async def test_failing_handler_leaves_history_intact_and_session_usable(store: Store) -> None:
    """A failing node returns a failed TurnResult; no message is appended."""
    calls = 0

    def llm(node: Node, ctx: Mapping[str, Any]) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("model exploded")

    async with running(store, reply_registry(llm_call=llm)) as m:
        session = await m.create("fail")
        await session.send("ok")
        result = await session.send("boom")
        assert result.status == "fail" and not result.ok and result.reply == ""
        assert isinstance(result.error, HandlerError)
        assert result.error.node_id == "llm_call"
        assert session.phase == "idle"
        assert [x.content for x in session.history] == ["ok", "re: ok"]
        after = await session.send("again")
        traces = await session.traces()
    assert after.ok and after.turn == 3
    assert [t.status for t in traces] == ["success", "fail", "success"]
    assert "model exploded" in (traces[1].error or "")
    assert (await session.messages()).total == 4


async def test_timeout_fails_the_turn_without_touching_history(store: Store) -> None:
    """A node that outlives its timeout fails the turn; the session stays idle."""

    async def slow(node: Node, ctx: Mapping[str, Any]) -> None:
        await anyio.sleep_forever()

    graph = chain_graph(llm_call={"timeout": 0.01})
    async with running(store, reply_registry(llm_call=slow), graph=graph) as m:
        session = await m.create("timeout")
        result = await session.send("wait")
        assert isinstance(result.error, HandlerTimeout)
        assert session.phase == "idle"
        assert list(session.history) == []
        assert session.busy is False


async def test_cancelled_send_reraises_and_restores_idle(store: Store) -> None:
    """Cancelling a running turn re-raises, leaves the session idle and history unchanged."""
    gate = Gate()
    async with running(store, reply_registry(llm_call=gate)) as m:
        session = await m.create("cancel")
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(session.send, "never")
                await gate.entered.wait()
                assert session.phase == "awaiting_llm"
                scope.cancel()
        assert scope.cancelled_caught
        assert session.phase == "idle" and not session.busy
        assert list(session.history) == []
        assert session.turn_count == 0
        gate.release.set()
        assert (await session.send("next")).ok
        assert [x.content for x in session.history] == ["next", "re: next"]


async def test_phase_follows_the_running_node(store: Store) -> None:
    """``awaiting_llm`` during an llm_call node, ``awaiting_tools`` during dispatch_tools."""
    llm, tools = Gate(), Gate()
    graph = build_graph(
        ("start", "classify", "llm_call", "dispatch_tools", "format", "done"),
        nodes={
            "llm_call": {"handler": "llm_call"},
            "dispatch_tools": {"handler": "dispatch_tools"},
        },
    )
    registry = reply_registry(llm_call=llm, dispatch_tools=tools)
    async with running(store, registry, graph=graph) as m:
        session = await m.create("phase")
        assert session.phase == "idle"
        async with anyio.create_task_group() as tg:
            tg.start_soon(session.send, "hi")
            await llm.entered.wait()
            assert _phase(session) == "awaiting_llm"
            llm.release.set()
            await tools.entered.wait()
            assert _phase(session) == "awaiting_tools"
            tools.release.set()
        assert _phase(session) == "idle"


async def test_queue_is_bounded(store: Store) -> None:
    """Past ``queue_size`` waiting turns, send raises SessionBusy at once."""
    gate = Gate()
    async with running(store, reply_registry(llm_call=gate), limits=Limits(queue_size=2)) as m:
        session = await m.create("queue")
        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(session.send, f"q{i}")
            await gate.entered.wait()
            await wait_until(lambda: session.queued == 2)
            with pytest.raises(SessionBusy):
                await session.send("overflow")
            gate.release.set()
        assert session.turn_count == 3


async def test_closed_session_refuses_turns(store: Store) -> None:
    """After close, send raises SessionClosed."""
    async with running(store) as manager:
        session = await manager.create("closed")
        await manager.close("closed")
        with pytest.raises(SessionClosed):
            await session.send("hello")


async def test_traces_come_from_memory_then_store(store: Store) -> None:
    """Recent traces are served from memory, older ones from the store, same records."""
    async with running(store, limits=Limits(trace_window=3)) as m:
        session = await m.create("traces")
        for i in range(6):
            await session.send(f"t{i}")
        old = await session.traces(0, 2)
        recent = await session.traces(3, 10)
        middle = await session.traces(2, 2)
    assert [t.turn for t in old] == [1, 2]
    assert [t.turn for t in recent] == [4, 5, 6]
    assert [t.turn for t in middle] == [3, 4]
    assert [n["id"] for n in recent[0].trace][3] == "llm_call"
    assert recent[-1].trace_id == "traces:6"


async def test_nodes_are_logged_with_session_trace_and_turn(store: Store) -> None:
    """With ``log_nodes=True`` every node is logged with session, trace id, turn, node."""
    async with running(store, log_nodes=True) as manager:
        session = await manager.create("logged")
        await session.send("first")
        with capture_logs() as logs:
            await session.send("second")
    nodes = [e for e in logs if e["event"] == "node"]
    assert [e["node"] for e in nodes] == list(
        ("start", "classify", "recall", "llm_call", "format", "done")
    )
    assert {(e["session_id"], e["trace_id"], e["turn"]) for e in nodes} == {
        ("logged", "logged:2", 2)
    }


@pytest.mark.parametrize(("level", "logged"), [(logging.INFO, True), (logging.WARNING, False)])
async def test_auto_logging_follows_the_configured_level(
    store: Store, level: int, logged: bool
) -> None:
    """By default nodes are logged only when structlog is set up to emit ``info``."""
    capture = LogCapture()
    async with running(store) as manager:
        session = await manager.create("auto")
        with capture_logs() as leftover:
            await session.send("unconfigured level: not a request for node logs")
        structlog.configure(
            processors=[capture], wrapper_class=structlog.make_filtering_bound_logger(level)
        )
        await session.send("configured")
    assert [e for e in leftover if e["event"] == "node"] == []
    assert bool([e for e in capture.entries if e["event"] == "node"]) is logged


async def test_log_nodes_false_logs_nothing(store: Store) -> None:
    """``log_nodes=False`` turns per-node logging off even when structlog captures."""
    async with running(store, log_nodes=False) as m:
        session = await m.create("silent")
        with capture_logs() as logs:
            await session.send("hush")
    assert [e for e in logs if e["event"] == "node"] == []


def _phase(session: Session) -> str:
    """The phase, read fresh (defeats mypy's narrowing across awaits)."""
    return session.phase


def _contents(items: Sequence[Any]) -> list[str]:
    return [x.content for x in items]


async def test_goals_and_mode_from_a_turn_are_kept(store: Store) -> None:
    """A turn may set ``goals`` and ``cognitive_mode``; they persist."""

    def llm(node: Node, ctx: Mapping[str, Any]) -> Outcome:
        return Outcome("success", {"goals": ["ship"], "cognitive_mode": "plan"})

    async with running(store, reply_registry(llm_call=llm)) as m:
        session = await m.create("goals")
        await session.send("go")
        assert (session.goals, session.cognitive_mode) == (("ship",), "plan")
        await m.close("goals")
        again = await m.get("goals")
        assert (again.goals, again.cognitive_mode) == (("ship",), "plan")
        assert _contents(again.history) == ["go", "re: go"]
