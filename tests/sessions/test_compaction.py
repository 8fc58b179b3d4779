"""Compaction: older turns become one summary; nothing is lost; concurrent calls run once."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import pytest

from handlers.adapters import EchoModel
from sessions import Limits, SessionManager
from sessions.compaction import (
    Compactable,
    compact_session,
    extract_summarizer,
    llm_summarizer,
    plan_cut,
)
from sessions.errors import Fenced, SessionBusy
from sessions.history import MessageWindow
from sessions.store.base import Message, Store

from .session_kit import running, wait_until


def _msgs(turns: Sequence[int]) -> list[Message]:
    return [Message(i, "user", f"m{i}", t, 0.0) for i, t in enumerate(turns)]


def test_plan_cut_keeps_the_newest_turns() -> None:
    """The cut is the last message older than the kept turns; None when nothing is older."""
    msgs = _msgs([1, 1, 2, 2, 3, 3, 3])
    assert plan_cut(msgs, 1) == 3
    assert plan_cut(msgs, 2) == 1
    assert plan_cut(msgs, 3) is None
    assert plan_cut(msgs, 0) == 6
    assert plan_cut([], 2) is None


class ShortSummary:
    """A summariser returning a short text; counts calls; may block until released."""

    def __init__(self, *, block: bool = False) -> None:
        self.calls = 0
        self.started = anyio.Event()
        self.release = anyio.Event()
        if not block:
            self.release.set()
        self.seen: list[tuple[int, ...]] = []

    async def __call__(self, messages: Sequence[Message], previous: Message | None) -> str:
        self.calls += 1
        self.seen.append(tuple(m.seq for m in messages))
        self.started.set()
        await self.release.wait()
        return f"summary of {len(messages)}"


async def test_compact_summarises_old_turns_and_keeps_originals(store: Store) -> None:
    """Old messages leave memory for one summary; the store still has every original."""
    summarize = ShortSummary()
    limits = Limits(keep_recent_turns=2, compaction_threshold_tokens=None)
    async with running(store, limits=limits, summarizer=summarize) as m:
        session = await m.create("c")
        for i in range(10):
            await session.send(f"a fairly long message number {i} " * 4)
        before = session.window.estimated_tokens()
        metrics = await session.compact()
        assert metrics.messages_compacted == 16
        assert metrics.tokens_before == before
        assert metrics.tokens_after == session.window.estimated_tokens() < before
        assert metrics.tokens_reclaimed == before - metrics.tokens_after
        assert metrics.to_dict()["messages_compacted"] == 16
        history = list(session.history)
        assert history[0].role == "summary" and history[0].content == "summary of 16"
        assert [x.turn for x in history[1:]] == [9, 9, 10, 10]
        everything = await session.all()
        assert [x.seq for x in everything] == list(range(20))
        assert (await session.messages(0, 4)).items[0].content.startswith("a fairly long")
        assert (await session.compact()).messages_compacted == 0  # nothing new to fold
        await m.close("c")
        reloaded = await m.get("c")
        assert [x.role for x in reloaded.history][:2] == ["summary", "user"]
        assert len(reloaded.history) == 5


async def test_compaction_during_sends_loses_nothing(store: Store) -> None:
    """Turns sent while the summary is computed are kept verbatim after it is applied."""
    summarize = ShortSummary(block=True)
    limits = Limits(keep_recent_turns=1, compaction_threshold_tokens=None)
    async with running(store, limits=limits, summarizer=summarize) as m:
        session = await m.create("busy")
        for i in range(4):
            await session.send(f"before {i}")
        async with anyio.create_task_group() as tg:
            tg.start_soon(session.compact)
            await summarize.started.wait()
            for i in range(5):
                assert (await session.send(f"during {i}")).ok
            summarize.release.set()
        assert summarize.seen == [(0, 1, 2, 3, 4, 5)]
        contents = [x.content for x in session.history]
        assert contents[0] == "summary of 6"
        assert contents[1:3] == ["before 3", "re: before 3"]
        assert [c for c in contents if c.startswith("during")] == [f"during {i}" for i in range(5)]
        assert len(await session.all()) == 18


async def test_concurrent_compact_calls_run_once(store: Store) -> None:
    """A second compact() waits for the first and returns a no-op."""
    summarize = ShortSummary(block=True)
    limits = Limits(keep_recent_turns=1, compaction_threshold_tokens=None)
    async with running(store, limits=limits, summarizer=summarize) as m:
        session = await m.create("twice")
        for i in range(4):
            await session.send(f"x{i}")
        results = []

        async def compact() -> None:
            results.append(await session.compact())

        async with anyio.create_task_group() as tg:
            tg.start_soon(compact)
            tg.start_soon(compact)
            await summarize.started.wait()
            summarize.release.set()
        assert summarize.calls == 1
        assert sorted(r.messages_compacted for r in results) == [0, 6]


async def test_threshold_triggers_background_compaction(store: Store) -> None:
    """Passing the token threshold compacts in the background without blocking turns."""
    limits = Limits(keep_recent_turns=1, compaction_threshold_tokens=40)
    async with running(store, limits=limits, summarizer=ShortSummary()) as m:
        session = await m.create("auto")
        for i in range(6):
            await session.send(f"message with some words {i}")
        await wait_until(lambda: session.window.summary is not None)
        assert session.history[0].role == "summary"
        assert len(await session.all()) == 12


async def test_llm_summarizer_uses_the_adapter() -> None:
    """The default summariser asks the LLM adapter with the transcript."""
    summarize = llm_summarizer(EchoModel())
    previous = Message(1, "summary", "they said hi", 1, 0.0)
    text = await summarize(_msgs([2, 2]), previous)
    assert "they said hi" in text and "user: m1" in text


async def test_a_summary_no_shorter_than_its_messages_is_not_applied(store: Store) -> None:
    """A summary that would not shrink the context is refused: nothing changes."""

    async def verbose(messages: Sequence[Message], previous: Message | None) -> str:
        return "at great length " * 200

    limits = Limits(keep_recent_turns=1, compaction_threshold_tokens=None)
    async with running(store, limits=limits, summarizer=verbose) as m:
        session = await m.create("wordy")
        for i in range(4):
            await session.send(f"x{i}")
        before, tokens = list(session.history), session.window.estimated_tokens()
        result = await session.compact()
        assert (result.messages_compacted, result.summary) == (0, None)
        assert result.tokens_before == result.tokens_after == tokens
        assert "not shorter" in result.reason
        assert list(session.history) == before
        assert (await store.load("wordy")).summary is None


async def test_fenced_compaction_closes_the_session(store: Store) -> None:
    """Fenced while archiving a summary closes the session and drops it from the manager."""
    limits = Limits(keep_recent_turns=1, compaction_threshold_tokens=None)
    async with running(store, limits=limits, summarizer=ShortSummary()) as m:
        session = await m.create("usurped")
        for i in range(3):
            await session.send(f"a long enough message {i} " * 4)
        await store.release("usurped", m.owner, session.token)
        await store.acquire("usurped", "intruder", 30.0)
        with pytest.raises(Fenced):
            await session.compact()
        assert session.closed and m.live == ()
        with pytest.raises(SessionBusy):
            await m.get_or_create("usurped")


async def test_offline_compaction_never_grows_the_context(store: Store) -> None:
    """With no LLM the default summariser shrinks the context; an echoing model's
    summary (longer than its input) is refused instead of applied."""
    limits = Limits(keep_recent_turns=1, compaction_threshold_tokens=None)
    for llm, shrinks in ((None, True), (EchoModel(), False)):
        async with SessionManager(store, limits=limits, llm=llm) as m:
            session = await m.get_or_create(f"offline-{shrinks}")
            for i in range(4):
                await session.send(f"message number {i}")
            result = await session.compact()
            assert (result.messages_compacted == 6) is shrinks
            assert result.tokens_after <= result.tokens_before
            assert (result.tokens_after < result.tokens_before) is shrinks


async def test_extract_summarizer_is_bounded() -> None:
    """The offline summary keeps the previous summary first and at most half the text."""
    summarize = extract_summarizer()
    previous = Message(1, "summary", "earlier", 1, 0.0)
    msgs = [Message(i, "user", f"message {i} " * 5, 2, 0.0) for i in range(4)]
    text = await summarize(msgs, previous)
    assert text.startswith("earlier / message 0")
    assert len(text) <= (len("earlier") + sum(len(m.content) for m in msgs)) // 2
    with pytest.raises(ValueError, match="ratio"):
        extract_summarizer(ratio=1.5)


class Notebook:
    """Not a session: a window of messages and a summary slot, the whole of what
    compaction asks for (:class:`~sessions.compaction.Compactable`)."""

    def __init__(self, messages: Sequence[Message], *, accept: bool = True) -> None:
        self.window = MessageWindow(100, messages)
        self.turn_count = max(m.turn for m in messages)
        self.accept = accept
        self.applied: list[tuple[Message, int]] = []

    async def apply_summary(self, summary: Message, upto_seq: int) -> bool:
        if not self.accept:
            return False
        self.applied.append((summary, upto_seq))
        self.window.drop_upto(upto_seq)
        self.window.set_summary(summary)
        return True


async def test_compaction_works_on_any_compactable() -> None:
    """Compaction needs only the protocol: it plans the cut on the window, asks the
    summariser for the older turns and hands the summary to ``apply_summary``."""
    book = Notebook(
        [Message(i, "user", f"a long message {i} " * 6, i // 2 + 1, 0.0) for i in range(8)]
    )
    target: Compactable = book
    summarize = ShortSummary()
    result = await compact_session(target, summarize, keep=1)
    assert summarize.seen == [(0, 1, 2, 3, 4, 5)]
    assert [(s.content, s.role, s.seq, s.turn, upto) for s, upto in book.applied] == [
        ("summary of 6", "summary", 5, 4, 5)
    ]
    assert (result.messages_compacted, result.upto_seq) == (6, 5)
    assert [m.seq for m in book.window.messages] == [6, 7]
    assert result.tokens_after == book.window.estimated_tokens() < result.tokens_before


async def test_a_refused_summary_compacts_nothing() -> None:
    """When the target cannot take the summary (a closed session), nothing changes."""
    book = Notebook(
        [Message(i, "user", f"words {i} " * 8, i + 1, 0.0) for i in range(4)], accept=False
    )
    before = book.window.estimated_tokens()
    result = await compact_session(book, ShortSummary(), keep=1)
    assert (result.messages_compacted, result.summary) == (0, None)
    assert result.tokens_after == before == book.window.estimated_tokens()
