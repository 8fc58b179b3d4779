"""Durable sessions on a real SQLite file: restarts, per-node checkpoints, resume."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog
from structlog.testing import capture_logs

from engine.graph import Graph, Node
from engine.registry import HandlerRegistry
from sessions import Limits, SessionManager
from sessions.errors import Fenced, SessionBusy
from sessions.store.base import TurnCommit
from sessions.store.sqlite import SQLiteStore

from .session_kit import SECRET, chain_graph, reply_registry, running


class Crash(BaseException):
    """Stands in for the process dying mid-turn (not an Exception: nothing catches it)."""


def _classify(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
    return {"intent": f"intent-of-{ctx['session.input']}"}


def _format(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
    return {"reply": f"{ctx['session.input']} / {ctx.get('intent')}"}


def _registry(*, crash: bool = False, **extra: Any) -> HandlerRegistry:
    def llm(node: Node, ctx: Mapping[str, Any]) -> None:
        if crash:
            raise Crash

    return reply_registry(classify=_classify, format=_format, llm_call=llm, **extra)


@asynccontextmanager
async def sqlite_manager(
    path: Path, registry: HandlerRegistry, graph: Graph, **kw: Any
) -> AsyncIterator[SessionManager]:
    """A manager over a fresh SQLiteStore on ``path`` (like a new process would open)."""
    store = SQLiteStore(f"sqlite:///{path}", path, secret=SECRET, synchronous="NORMAL")
    async with store, running(store, registry, graph=graph, **kw) as m:
        yield m


async def test_sessions_survive_a_restart(tmp_path: Path) -> None:
    """Turn counts, messages, working memory and traces continue after a restart."""
    db, graph = tmp_path / "s.db", chain_graph()

    def remember(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
        return {"memory.working": {"last": ctx["session.input"]}}

    registry = _registry(recall=remember)
    async with sqlite_manager(db, registry, graph) as m:
        session = await m.create("durable", agent_id="bot")
        for i in range(3):
            await session.send(f"m{i}")
    async with sqlite_manager(db, registry, graph) as m:
        session = await m.get("durable")
        assert (session.turn_count, session.message_count, session.agent_id) == (3, 6, "bot")
        assert session.working_memory == {"last": "m2"}
        assert [x.content for x in session.history][:2] == ["m0", "m0 / intent-of-m0"]
        assert [t.turn for t in await session.traces()] == [1, 2, 3]
        result = await session.send("m3")
        assert (result.turn, result.reply) == (4, "m3 / intent-of-m3")
        page = await session.messages(6, 10)
        assert [x.seq for x in page.items] == [6, 7]


async def test_interrupted_turn_resumes_at_its_checkpoint(tmp_path: Path) -> None:
    """A turn that died after some nodes continues at the next node, context intact."""
    db, graph = tmp_path / "cp.db", chain_graph()
    limits = Limits(checkpoint=True)
    async with sqlite_manager(db, _registry(crash=True), graph, limits=limits) as m:
        session = await m.create("crashy")
        with pytest.raises(Crash):
            await session.send("hello")
        cp = (await m.store.load("crashy")).checkpoint
        assert cp is not None
        assert (cp.turn, cp.last_node, cp.next_node, cp.input) == (1, "recall", "llm_call", "hello")
        assert cp.context["intent"] == "intent-of-hello"
    async with sqlite_manager(db, _registry(), graph, limits=limits) as m:
        session = await m.get("crashy")
        assert session.resumable is not None
        result = await session.resume()
        assert result is not None and result.ok
        assert (result.turn, result.reply) == (1, "hello / intent-of-hello")
        assert [n.node_id for n in result.trace] == ["llm_call", "format", "done"]
        (record,) = await session.traces()
        assert [n["id"] for n in record.trace] == list(
            ("start", "classify", "recall", "llm_call", "format", "done")
        )
        assert [x.content for x in session.history] == ["hello", "hello / intent-of-hello"]
        assert (await m.store.load("crashy")).checkpoint is None
        assert await session.resume() is None
        assert (await session.send("next")).turn == 2


async def test_auto_resume_on_get(tmp_path: Path) -> None:
    """With ``auto_resume``, loading the session finishes the interrupted turn."""
    db, graph = tmp_path / "auto.db", chain_graph()
    limits = Limits(checkpoint=True)
    async with sqlite_manager(db, _registry(crash=True), graph, limits=limits) as m:
        with pytest.raises(Crash):
            await (await m.create("auto")).send("hi")
    async with sqlite_manager(db, _registry(), graph, limits=limits, auto_resume=True) as m:
        session = await m.get("auto")
        assert session.turn_count == 1 and session.resumable is None
        assert [x.content for x in session.history] == ["hi", "hi / intent-of-hi"]


async def test_changed_graph_reports_and_does_not_replay(tmp_path: Path) -> None:
    """A checkpoint from another graph is reported, cleared and never replayed."""
    db = tmp_path / "changed.db"
    limits = Limits(checkpoint=True)
    async with sqlite_manager(db, _registry(crash=True), chain_graph(), limits=limits) as m:
        with pytest.raises(Crash):
            await (await m.create("moved")).send("lost")
    with capture_logs() as logs:
        async with sqlite_manager(db, _registry(), chain_graph(), limits=limits) as m:
            session = await m.get("moved")
            assert session.resumable is None
            assert session.interrupted_turn is not None
            assert session.interrupted_turn.next_node == "llm_call"
            assert (await m.store.load("moved")).checkpoint is None
            assert list(session.history) == []
            assert (await session.send("fresh")).turn == 1
    warned = [e for e in logs if e["event"] == "turn.interrupted"]
    assert warned and warned[0]["reason"] == "turn graph changed"


async def test_cancelled_turn_clears_its_checkpoint(tmp_path: Path) -> None:
    """A turn cancelled by its caller is abandoned: no checkpoint is left to resume."""
    started = anyio.Event()

    async def llm(node: Node, ctx: Mapping[str, Any]) -> None:
        started.set()
        await anyio.sleep_forever()

    db = tmp_path / "cancel.db"
    registry = reply_registry(llm_call=llm)
    async with sqlite_manager(db, registry, chain_graph(), limits=Limits(checkpoint=True)) as m:
        session = await m.create("abandon")
        async with anyio.create_task_group() as tg:
            tg.start_soon(session.send, "bye")
            await started.wait()
            assert (await m.store.load("abandon")).checkpoint is not None
            tg.cancel_scope.cancel()
        assert (await m.store.load("abandon")).checkpoint is None
        assert session.phase == "idle" and session.turn_count == 0


async def test_interrupted_turn_report_prints_nothing_on_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """With structlog unconfigured, the turn.interrupted report goes to logging, not stdout."""
    db = tmp_path / "quiet.db"
    limits = Limits(checkpoint=True)
    async with sqlite_manager(db, _registry(crash=True), chain_graph(), limits=limits) as m:
        with pytest.raises(Crash):
            await (await m.create("quiet")).send("lost")
    structlog.reset_defaults()
    async with sqlite_manager(db, _registry(), chain_graph(), limits=limits) as m:
        assert (await m.get("quiet")).interrupted_turn is not None
    assert capsys.readouterr().out == ""
    assert any(r.getMessage().startswith("turn.interrupted") for r in caplog.records)


async def test_send_before_resume_reports_the_interrupted_turn(tmp_path: Path) -> None:
    """A send on a session still holding a resumable checkpoint abandons it loudly: it
    moves to ``interrupted_turn``, a warning is logged, the store forgets it."""
    db, graph = tmp_path / "skip.db", chain_graph()
    limits = Limits(checkpoint=True)
    async with sqlite_manager(db, _registry(crash=True), graph, limits=limits) as m:
        with pytest.raises(Crash):
            await (await m.create("skipped")).send("unfinished")
    with capture_logs() as logs:
        async with sqlite_manager(db, _registry(), graph, limits=limits) as m:
            session = await m.get("skipped")
            cp = session.resumable
            assert cp is not None and cp.input == "unfinished"
            result = await session.send("new topic")
            assert (result.ok, result.turn) == (True, 1)
            assert session.interrupted_turn == cp and session.resumable is None
            assert await session.resume() is None
            assert (await m.store.load("skipped")).checkpoint is None
            assert session.history[0].content == "new topic"
    warned = [e for e in logs if e["event"] == "turn.interrupted"]
    assert [(e["turn"], e["reason"]) for e in warned] == [(1, "superseded by a new turn")]


async def test_fenced_while_checkpointing_closes_and_unlists(tmp_path: Path) -> None:
    """Fenced from a checkpoint write mid-turn closes the session and drops it from its
    manager; a later get_or_create acquires afresh (SessionBusy while the other holds it)."""
    db, graph = tmp_path / "fence.db", chain_graph()
    limits = Limits(checkpoint=True)
    async with sqlite_manager(db, _registry(), graph, limits=limits, owner="one") as first:
        session = await first.create("contested")
        assert (await session.send("mine")).ok
        session.start_heartbeat(60.0)
        await first.store.release("contested", first.owner, session.token)
        async with sqlite_manager(db, _registry(), graph, limits=limits, owner="two") as second:
            await second.get("contested")
            with pytest.raises(Fenced):
                await session.send("too late")
            assert session.closed and not session.heartbeat.running
            assert first.live == ()
            with pytest.raises(SessionBusy):
                await first.get_or_create("contested")
        again = await first.get_or_create("contested")
        assert again is not session and again.turn_count == 1
        assert (await again.send("back")).turn == 2


class SlowCommitStore(SQLiteStore):
    """Commits a turn, then lingers, so a cancellation can land after the write."""

    committed: anyio.Event

    async def append_turn(self, session_id: str, commit: TurnCommit, *, token: int) -> None:
        await super().append_turn(session_id, commit, token=token)
        self.committed.set()
        await anyio.sleep(0.05)


async def test_cancel_during_commit_keeps_memory_and_store_in_step(tmp_path: Path) -> None:
    """A send cancelled after the store committed still applies the turn in memory, so
    memory and store agree and the next send succeeds."""
    db = tmp_path / "shield.db"
    store = SlowCommitStore(f"sqlite:///{db}", db, secret=SECRET, synchronous="NORMAL")
    store.committed = anyio.Event()
    async with store, running(store, _registry()) as m:
        session = await m.create("shielded")
        async with anyio.create_task_group() as tg:
            tg.start_soon(session.send, "cut off")
            await store.committed.wait()
            tg.cancel_scope.cancel()
        meta = (await store.load("shielded")).meta
        in_memory = (session.turn_count, session.message_count)
        assert in_memory == (meta.turn_count, meta.message_count) == (1, 2)
        assert [x.content for x in session.history] == ["cut off", "cut off / intent-of-cut off"]
        result = await session.send("next")
        assert (result.ok, result.turn) == (True, 2)
        assert (await store.load("shielded")).meta.message_count == 4


def _beats() -> Any:
    """A heartbeat handler counting its beats into working memory (``beat``)."""
    count = 0

    def beat(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
        nonlocal count
        count += 1
        return {"memory.working": {"beat": count}, "heartbeat.mode": "reflect"}

    return beat


async def test_an_idle_heartbeat_result_is_stored_without_another_turn(tmp_path: Path) -> None:
    """A heartbeat applied between turns reaches the store at once: another process
    reading the file sees it while no further turn has run."""
    db = tmp_path / "hb.db"
    async with sqlite_manager(db, _registry(beat=_beats()), chain_graph()) as m:
        session = await m.create("hb")
        assert (await session.send("hello")).ok
        assert await session.heartbeat.beat() and await session.heartbeat.beat()
        other = SQLiteStore(f"sqlite:///{db}", db, secret=SECRET)
        async with other:
            with anyio.fail_after(5):
                meta = (await other.load("hb")).meta
                while meta.working_memory.get("beat") != 2:  # another process: no event to await
                    await anyio.sleep(0.005)
                    meta = (await other.load("hb")).meta
        assert (meta.cognitive_mode, meta.turn_count) == ("reflect", 1)


async def test_a_heartbeat_result_applied_after_a_turn_is_stored_with_it(tmp_path: Path) -> None:
    """A heartbeat that finished during a turn is applied when the turn ends and is in
    the store by the time ``send`` returns."""
    entered, release = anyio.Event(), anyio.Event()

    async def llm(node: Node, ctx: Mapping[str, Any]) -> None:
        entered.set()
        await release.wait()

    registry = reply_registry(llm_call=llm, beat=_beats())
    async with sqlite_manager(tmp_path / "mid.db", registry, chain_graph()) as m:
        session = await m.create("mid")
        async with anyio.create_task_group() as tg:
            tg.start_soon(session.send, "hello")
            await entered.wait()
            assert await session.heartbeat.beat()
            release.set()
        meta = (await m.store.load("mid")).meta
        assert (dict(meta.working_memory), meta.turn_count) == ({"beat": 1}, 1)
        assert session.working_memory == {"beat": 1}


async def test_close_keeps_the_last_heartbeat_result(tmp_path: Path) -> None:
    """Closing right after a heartbeat (no turn since) still stores its result, and
    nothing is written after the lease is released (no fencing error)."""
    db, graph = tmp_path / "close.db", chain_graph()
    with capture_logs() as logs:
        async with sqlite_manager(db, _registry(beat=_beats()), graph) as m:
            session = await m.create("hb")
            assert await session.heartbeat.beat()
            await m.close("hb")
    assert [e for e in logs if e["log_level"] in ("warning", "error")] == []
    async with sqlite_manager(db, _registry(), graph) as m:
        session = await m.get("hb")
        assert (session.working_memory, session.cognitive_mode) == ({"beat": 1}, "reflect")
