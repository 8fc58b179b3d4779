"""``session.stream(text)``: the turn's events in order, ``TurnCommitted`` after the
commit, the ``TurnResult`` last; leaving early cancels the turn cleanly; the buffer
merges text when the consumer is slow and never blocks the turn; usage per turn and per
session (read from the store, so it survives a restart); the manager's ``llm`` spec and
``observers``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from engine.errors import LLMSpecError
from engine.events import (
    Event,
    NodeCompleted,
    NodeStarted,
    RunCompleted,
    RunStarted,
    TextDelta,
    TurnCommitted,
    current_emitter,
)
from engine.graph import Node
from engine.messages import LLMResponse, Usage
from engine.outcome import Outcome
from handlers.adapters import ScriptedModel
from sessions import Limits, SessionManager, TurnResult, UsageTotals
from sessions.errors import SessionClosed
from sessions.store import open_store
from sessions.store.base import Store

from .session_kit import SECRET, chain_graph, reply_registry, running, wait_until


def streaming_llm(pieces: tuple[str, ...], gate: anyio.Event | None = None) -> Any:
    """An ``llm_call`` handler that streams ``pieces`` (waiting for ``gate`` after the
    first one, when given) and reports usage."""

    async def handler(node: Node, ctx: Mapping[str, Any]) -> Outcome:
        emitter = current_emitter()  # None in a send() nobody observes
        for i, piece in enumerate(pieces):
            if emitter is not None:
                emitter.text(piece)
            if i == 0 and gate is not None:
                await gate.wait()
        return Outcome("success", {"llm.text": "".join(pieces)}, usage=Usage(5, 2, "m1"))

    return handler


async def collect(stream: Any) -> list[Any]:
    return [item async for item in stream]


async def test_events_in_order_then_committed_then_the_result(store: Store) -> None:
    """Node events and text deltas as the turn runs, TurnCommitted after the store has
    the turn, the TurnResult last."""
    registry = reply_registry(llm_call=streaming_llm(("He", "llo")))
    async with running(store, registry) as manager:
        session = await manager.get_or_create("s1")
        items = await collect(session.stream("hi"))
    *events, last = items
    assert isinstance(last, TurnResult) and last.ok and last.reply == "re: hi"
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["He", "llo"]
    started = [e.node_id for e in events if isinstance(e, NodeStarted)]
    assert started == ["start", "classify", "recall", "llm_call", "format", "done"]
    kinds = [type(e) for e in events]
    assert kinds.index(TextDelta) > started.index("llm_call")
    assert kinds[-2:] == [RunCompleted, TurnCommitted]
    committed = events[-1]
    assert committed == TurnCommitted("s1:1", "s1", 1, 2, "success")
    assert [m.content for m in (await store.load("s1")).recent] == ["hi", "re: hi"]
    assert last.usage.input_tokens == 5 and last.usage.by_model["m1"].calls == 1


async def test_aclose_mid_turn_cancels_it_and_leaves_the_session_usable(store: Store) -> None:
    """Nothing of the cancelled turn is stored; the session is idle at once."""
    gate = anyio.Event()  # never set: the model "hangs" after its first piece
    registry = reply_registry(llm_call=streaming_llm(("par", "tial"), gate))
    async with running(store, registry) as manager:
        session = await manager.get_or_create("s1")
        stream = session.stream("first")
        async for event in stream:
            if isinstance(event, TextDelta):
                break
        await stream.aclose()
        assert (session.phase, session.busy, session.turn_count) == ("idle", False, 0)
        assert await store.turns("s1") == ()
        assert [item async for item in stream] == []  # closed: nothing more
        gate.set()
        result = await session.send("second")
    assert result.ok and result.turn == 1
    assert [m.content for m in (await store.load("s1")).recent] == ["second", "re: second"]


async def test_break_without_aclose_cancels_the_turn(store: Store) -> None:
    """A plain ``break``: the turn is cancelled when the iterator goes; the next turn
    runs after it, and only the next turn is stored."""
    gate = anyio.Event()
    registry = reply_registry(llm_call=streaming_llm(("par", "tial"), gate))
    async with running(store, registry) as manager:
        session = await manager.get_or_create("s1")
        async for event in session.stream("first"):
            if isinstance(event, TextDelta):
                break
        gate.set()  # were the turn still running, it would now finish and commit
        result = await session.send("second")
        assert result.ok and result.turn == 1
        assert session.phase == "idle"
    turns = await store.turns("s1")
    assert [t.turn for t in turns] == [1]
    assert [m.content for m in (await store.load("s1")).recent] == ["second", "re: second"]


async def test_async_with_closes_the_stream(store: Store) -> None:
    gate = anyio.Event()
    registry = reply_registry(llm_call=streaming_llm(("a", "b"), gate))
    async with running(store, registry) as manager:
        session = await manager.get_or_create("s1")
        async with session.stream("x") as events:
            first = [e async for e in _until_text(events)]
        assert isinstance(first[-1], TextDelta)
        assert not session.busy and session.turn_count == 0


async def _until_text(events: Any) -> Any:
    async for e in events:
        yield e
        if isinstance(e, TextDelta):
            return


async def test_a_slow_consumer_gets_merged_text_and_never_blocks_the_turn(store: Store) -> None:
    """With a buffer of 4 and nobody reading, the turn still ends and commits; the text
    arrives whole, in fewer pieces, and the result is last."""
    pieces = tuple(f"t{i} " for i in range(200))
    registry = reply_registry(llm_call=streaming_llm(pieces))
    async with running(store, registry) as manager:
        session = await manager.get_or_create("s1")
        stream = session.stream("go", buffer=4)
        first = await stream.__anext__()  # starts the turn
        await wait_until(lambda: session.turn_count == 1 and not session.busy)
        rest = await collect(stream)
    items = [first, *rest]
    deltas = [e for e in items if isinstance(e, TextDelta)]
    assert "".join(d.text for d in deltas) == "".join(pieces)
    assert len(deltas) < len(pieces)
    assert isinstance(items[-2], TurnCommitted) and isinstance(items[-1], TurnResult)
    assert items[-1].ok
    # Every node's start and end is still there: only text is merged.
    assert sum(isinstance(e, NodeCompleted) for e in items) == 6


async def test_a_failing_turn_streams_a_failed_result_committed_without_messages(
    store: Store,
) -> None:
    async def broken(node: Node, ctx: Mapping[str, Any]) -> Outcome:
        emitter = current_emitter()
        assert emitter is not None
        emitter.text("half a rep")
        return Outcome("fail", reason="model fell over")

    async with running(store, reply_registry(llm_call=broken)) as manager:
        session = await manager.get_or_create("s1")
        items = await collect(session.stream("hi"))
    result = items[-1]
    assert isinstance(result, TurnResult) and result.status == "fail"
    assert items[-2] == TurnCommitted("s1:1", "s1", 1, 0, "fail")
    assert (await store.load("s1")).recent == ()


async def test_a_closed_session_refuses_a_stream(store: Store) -> None:
    async with running(store) as manager:
        session = await manager.get_or_create("s1")
        await manager.close("s1")
        with pytest.raises(SessionClosed):
            session.stream("late")


async def test_a_stream_per_turn_keeps_fifo_order(store: Store) -> None:
    async with running(store) as manager:
        session = await manager.get_or_create("s1")
        results: list[Any] = []

        async def one(text: str) -> None:
            results.append((await collect(session.stream(text)))[-1].reply)

        async with anyio.create_task_group() as tg:
            for text in ("a", "b", "c"):
                tg.start_soon(one, text)
                await anyio.lowlevel.checkpoint()
    assert [m.content for m in (await store.load("s1")).recent] == [
        "a",
        "re: a",
        "b",
        "re: b",
        "c",
        "re: c",
    ]
    assert sorted(results) == ["re: a", "re: b", "re: c"]


# --------------------------------------------------------------------------- usage


def _two_models() -> ScriptedModel:
    return ScriptedModel(
        [
            LLMResponse("one", usage=Usage(10, 3), model="small"),
            LLMResponse("two", usage=Usage(20, 4), model="large"),
            LLMResponse("three", usage=Usage(30, 5), model="small"),
        ]
    )


async def test_usage_per_turn_and_per_session_survives_a_restart(tmp_path: Path) -> None:
    """Per turn from the trace; per session from the stored turn records, by model, in
    a new manager over the same SQLite file."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    llm = _two_models()
    async with SessionManager(url, llm=llm, store_secret=SECRET) as manager:
        session = await manager.get_or_create("s1")
        first = await session.send("a")
        await session.send("b")
        assert first.usage.to_dict() == {
            "input_tokens": 10,
            "output_tokens": 3,
            "calls": 1,
            "turns": 1,
            "by_model": {"small": {"calls": 1, "input_tokens": 10, "output_tokens": 3}},
        }
    async with SessionManager(url, llm=llm, store_secret=SECRET) as manager:
        session = await manager.get_or_create("s1")
        await session.send("c")
        totals = await session.usage()
    assert isinstance(totals, UsageTotals)
    assert (totals.input_tokens, totals.output_tokens, totals.calls, totals.turns) == (
        60,
        12,
        3,
        3,
    )
    assert totals.total_tokens == 72
    assert {k: (m.calls, m.input_tokens) for k, m in totals.by_model.items()} == {
        "small": (2, 40),
        "large": (1, 20),
    }


async def test_usage_pages_through_many_turns(store: Store) -> None:
    from sessions.usage import stored_usage

    llm = ScriptedModel(["x"] * 7)
    async with SessionManager(store, llm=llm) as manager:
        session = await manager.get_or_create("s1")
        for i in range(7):
            await session.send(f"m{i}")
    totals = await stored_usage(store, "s1", page=3)
    assert (totals.turns, totals.calls) == (7, 7)
    assert totals.by_model.keys() == {"scripted"}


async def test_a_session_without_model_calls_has_empty_usage(store: Store) -> None:
    async with running(store) as manager:
        session = await manager.get_or_create("s1")
        result = await session.send("hi")
        assert result.usage.calls == 0 and result.usage.by_model == {}
        assert (await session.usage()).to_dict()["by_model"] == {}


# --------------------------------------------------------------------------- manager


async def test_the_manager_takes_a_spec_and_observers(store: Store) -> None:
    seen: list[Event] = []
    async with SessionManager(store, llm="echo:my-echo", observers=[seen.append]) as manager:
        session = await manager.get_or_create("s1")
        result = await session.send("hi")
    assert result.reply == "echo: hi"
    assert result.usage.by_model.keys() == {"my-echo"}
    assert isinstance(seen[-1], TurnCommitted) and seen[-1].turn == 1
    assert any(isinstance(e, NodeStarted) for e in seen)


def test_a_bad_spec_is_a_typed_error() -> None:
    with pytest.raises(LLMSpecError, match="unknown provider"):
        SessionManager("memory:", llm="nope:model")


async def test_the_stream_works_on_a_durable_store(tmp_path: Path) -> None:
    async with open_store(f"sqlite:///{tmp_path / 'd.db'}", secret=SECRET) as store:
        async with running(store, graph=chain_graph()) as manager:
            session = await manager.get_or_create("s1")
            items = await collect(session.stream("hi"))
        assert isinstance(items[-1], TurnResult) and items[-1].ok
        assert len(await store.turns("s1")) == 1


async def test_the_portable_wakeup_works_too(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an asyncio loop (trio) the consumer sleeps on an anyio.Event instead."""
    import sessions.stream

    monkeypatch.setattr(sessions.stream, "_asyncio_loop", lambda: None)
    gate = anyio.Event()
    registry = reply_registry(llm_call=streaming_llm(("a", "b"), gate))
    async with running(store, registry) as manager:
        session = await manager.get_or_create("s1")
        texts: list[str] = []
        async for item in session.stream("hi"):
            if isinstance(item, TextDelta):
                texts.append(item.text)
                gate.set()
    assert texts == ["a", "b"]


async def test_closing_before_or_after_iterating_is_harmless(store: Store) -> None:
    async with running(store) as manager:
        session = await manager.get_or_create("s1")
        unused = session.stream("never")
        await unused.aclose()
        assert [item async for item in unused] == []
        await unused.aclose()
        done = session.stream("once")
        items = [item async for item in done]
        await done.aclose()
        assert isinstance(items[-1], TurnResult) and items[-1].turn == 1
        assert session.turn_count == 1


async def test_an_error_is_raised_once_then_the_stream_ends(store: Store) -> None:
    from sessions.errors import SessionBusy

    gate = anyio.Event()
    registry = reply_registry(llm_call=streaming_llm(("a",), gate))
    async with running(store, registry, limits=Limits(queue_size=0)) as manager:
        session = await manager.get_or_create("s1")
        first = session.stream("first")
        assert isinstance(await first.__anext__(), RunStarted)
        await wait_until(lambda: session.busy)
        second = session.stream("second")
        with pytest.raises(SessionBusy):
            await second.__anext__()
        assert [item async for item in second] == []
        gate.set()
        assert (await collect(first))[-1].ok
