"""Limits: retention of messages, reasoning steps and tool calls; the per-turn step bound."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from engine.errors import MaxStepsExceeded
from engine.graph import Node
from engine.testing import build_graph
from sessions import Limits
from sessions.sessionlog import ReasoningStep
from sessions.store.base import Store, TurnRecord
from sessions.store.memory import MemoryStore

from .session_kit import CHAIN, SECRET, chain_graph, reply_registry, running


class CountingStore(MemoryStore):
    """A memory store that counts the turn-record reads reaching it."""

    def __init__(self) -> None:
        super().__init__(secret=SECRET)
        self.turn_reads = 0

    async def turns(
        self, session_id: str, offset: int = 0, limit: int = 100
    ) -> tuple[TurnRecord, ...]:
        self.turn_reads += 1
        return await super().turns(session_id, offset, limit)


def tool_registry() -> Any:
    """``llm_call`` adds one tool request and two tool results to every turn."""

    def llm_call(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
        turn = ctx["session.turn"]
        request = {"name": "calc", "id": f"c{turn}"}
        return {
            "turn.messages": [
                {"role": "assistant", "content": "[calling]", "meta": {"tool_calls": [request]}},
                {"role": "tool", "content": f"r{turn}a", "meta": {"call_id": f"c{turn}"}},
                {"role": "tool", "content": f"r{turn}b"},
            ]
        }

    return reply_registry(llm_call=llm_call)


def test_defaults_are_the_seed_systems() -> None:
    """1,000 messages, 100 steps, 500 tool calls, 10 sessions; 1,000 steps a turn."""
    limits = Limits()
    assert (limits.max_messages, limits.max_reasoning_steps, limits.max_tool_calls) == (
        1000,
        100,
        500,
    )
    assert (limits.max_active_sessions, limits.max_steps_per_turn) == (10, 1000)


@pytest.mark.parametrize(
    "field", ["max_reasoning_steps", "max_tool_calls", "max_steps_per_turn", "max_messages"]
)
def test_limits_must_be_positive(field: str) -> None:
    """A limit below one is refused when the Limits is made."""
    changes: dict[str, Any] = {field: 0}
    with pytest.raises(ValueError, match=field):
        Limits(**changes)


async def test_oldest_steps_leave_memory_but_stay_in_the_store() -> None:
    """Only the newest ``max_reasoning_steps`` node visits stay; every turn's full trace
    is still read back, older records from the store."""
    store = CountingStore()
    async with running(store, limits=Limits(max_reasoning_steps=10)) as m:
        session = await m.create("steps")
        for i in range(3):
            await session.send(f"t{i}")
        steps = session.steps()
        newest = await session.traces(2, 1)
        assert store.turn_reads == 0  # turn 3's record is in memory
        everything = await session.traces(0, 10)
        assert store.turn_reads == 1
    assert len(steps) == 10
    assert steps[0] == ReasoningStep(2, steps[0].record)
    assert [(s.turn, s.record["id"]) for s in steps[-7:]] == [
        (2, "done"),
        *((3, node) for node in CHAIN),
    ]
    assert [t.turn for t in newest] == [3]
    assert [t.turn for t in everything] == [1, 2, 3]
    assert all([n["id"] for n in t.trace] == list(CHAIN) for t in everything)


async def test_a_turn_longer_than_the_step_limit_is_kept_in_the_store() -> None:
    """The step limit bounds memory, not turns: a six-node turn runs with a limit of 4."""
    store = CountingStore()
    async with running(store, limits=Limits(max_reasoning_steps=4)) as m:
        session = await m.create("long")
        result = await session.send("hi")
        traces = await session.traces(0, 5)
        assert store.turn_reads == 1
    assert result.ok and len(result.trace) == len(CHAIN)
    assert [s.record["id"] for s in session.steps()] == list(CHAIN[-4:])
    assert [n["id"] for n in traces[0].trace] == list(CHAIN)


async def test_oldest_tool_calls_leave_memory_but_stay_in_the_store(store: Store) -> None:
    """Only the newest ``max_tool_calls`` tool records stay; all remain messages in the
    store, and a reload picks the recent ones up again."""
    limits = Limits(max_tool_calls=4)
    async with running(store, tool_registry(), limits=limits) as m:
        session = await m.create("tools")
        for i in range(3):
            await session.send(f"t{i}")
        kept = session.tool_calls()
        stored = [x for x in await session.all() if x.role in ("tool", "assistant")]
    assert [x.content for x in kept] == ["r2b", "[calling]", "r3a", "r3b"]
    assert [x.role for x in kept] == ["tool", "assistant", "tool", "tool"]
    assert [x.content for x in stored if x.role == "tool"] == [
        f"r{t}{k}" for t in (1, 2, 3) for k in "ab"
    ]
    async with running(store, tool_registry(), limits=limits) as m:
        reloaded = await m.get("tools")
        assert reloaded.tool_calls() == kept


async def test_plain_replies_are_not_tool_calls(store: Store) -> None:
    """User and assistant messages without a tool request are not tool-call records."""
    async with running(store) as m:
        session = await m.create("plain")
        await session.send("hello")
        assert session.tool_calls() == ()
        assert len(session.history) == 2


async def test_steps_per_turn_bound_cycles_not_the_step_limit(store: Store) -> None:
    """``max_steps_per_turn`` stops a looping turn; ``max_reasoning_steps`` does not."""
    loop = build_graph(CHAIN, extra_edges=[("format", "classify", {"weight": 5})])
    limits = Limits(max_steps_per_turn=20, max_reasoning_steps=3)
    async with running(store, graph=loop, limits=limits) as m:
        session = await m.create("loop")
        result = await session.send("round and round")
        assert not result.ok and isinstance(result.error, MaxStepsExceeded)
        assert len(result.trace) == 20
        assert len(session.steps()) == 3
        [record] = await session.traces(0, 1)
        assert record.status == "fail" and len(record.trace) == 20
    async with running(store, graph=chain_graph(), limits=limits) as m:
        assert (await (await m.get("loop")).send("straight")).ok
