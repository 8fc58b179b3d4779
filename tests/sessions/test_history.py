"""History: the bounded window, the read-only view, pagination from memory and store."""

from __future__ import annotations

import copy
import json
import pickle

import pytest

from handlers._common import recent_messages
from handlers.adapters import ChatMessage
from sessions import HistoryView, Limits, MessageWindow
from sessions.history import CHAT_CACHE
from sessions.store.base import Message, Store

from .session_kit import running


def _m(seq: int, content: str = "", turn: int = 1) -> Message:
    return Message(seq, "user", content or f"m{seq}", turn, 0.0)


def test_window_is_bounded_and_counts_characters() -> None:
    """Appending past the bound evicts the oldest and keeps ``chars`` exact."""
    w = MessageWindow(3, [_m(i, "x" * (i + 1)) for i in range(5)])
    assert [m.seq for m in w.messages] == [2, 3, 4]
    assert w.chars == 3 + 4 + 5 and w.estimated_tokens() == 3
    assert w.first_seq == 2
    w.set_summary(Message(1, "summary", "yy", 0, 0.0))
    assert w.chars == 14
    assert w.drop_upto(3) == 2 and [m.seq for m in w.messages] == [4] and w.chars == 7


def test_slice_by_seq_answers_only_what_memory_holds() -> None:
    """A range reaching below the window returns None (the caller asks the store)."""
    w = MessageWindow(10, [_m(i) for i in range(5, 9)])
    assert w.slice_by_seq(6, 8) == (_m(6), _m(7))
    assert w.slice_by_seq(7, 100) == (_m(7), _m(8))
    assert w.slice_by_seq(4, 6) is None
    assert w.slice_by_seq(9, 12) == ()
    assert MessageWindow(3).slice_by_seq(0, 0) == ()


def test_view_is_a_live_read_only_sequence() -> None:
    """The view reflects later appends, shows the summary first, and supports indexing."""
    w = MessageWindow(5)
    view = HistoryView(w)
    assert len(view) == 0 and list(view) == []
    w.extend(_m(i) for i in range(3))
    assert len(view) == 3 and view[0].seq == 0 and view[-1].seq == 2
    w.set_summary(Message(0, "summary", "s", 0, 0.0))
    assert [m.role for m in view] == ["summary", "user", "user", "user"]
    assert view[1:3] == (_m(0), _m(1))
    assert view[::2] == (view[0], _m(1))
    assert [m.seq for m in reversed(view)] == [2, 1, 0, 0]
    assert view.recent(2) == (_m(1), _m(2))
    assert view.recent(10) == (_m(0), _m(1), _m(2)) and view.recent(0) == ()
    assert _m(1) in view and view.index(_m(1)) == 2
    with pytest.raises(IndexError):
        view[4]
    assert not hasattr(view, "append") and not hasattr(view, "__setitem__")


async def test_window_bounded_older_messages_stay_in_the_store(store: Store) -> None:
    """Only ``max_messages`` stay in memory; pages below the window come from the store."""
    async with running(store, limits=Limits(max_messages=10)) as m:
        session = await m.create("long")
        for i in range(20):
            await session.send(f"m{i}")
        assert len(session.history) == 10
        assert session.history[0].seq == 30
        first = await session.messages(0, 5)
        assert [x.content for x in first.items] == ["m0", "re: m0", "m1", "re: m1", "m2"]
        assert (first.total, first.has_more, first.offset) == (40, True, 0)
        last = await session.messages(35, 10)
        assert [x.seq for x in last.items] == [35, 36, 37, 38, 39]
        assert last.has_more is False
        straddle = await session.messages(28, 4)
        assert [x.seq for x in straddle.items] == [28, 29, 30, 31]
        beyond = await session.messages(40, 10)
        assert beyond.items == () and not beyond.has_more
        everything = await session.all(page_size=7)
        assert [x.seq for x in everything] == list(range(40))
        assert [x.content for x in session.recent(2)] == ["m19", "re: m19"]
        with pytest.raises(ValueError, match="offset"):
            await session.messages(-1, 5)
        await m.close("long")
        reloaded = await m.get("long")
        assert [x.seq for x in reloaded.history] == list(range(30, 40))
        assert reloaded.message_count == 40


@pytest.mark.parametrize("summary", [False, True])
def test_view_slices_like_a_tuple(summary: bool) -> None:
    """Every contiguous slice of the view equals the same slice of a tuple of it."""
    for size in range(5):
        w = MessageWindow(10, [_m(i) for i in range(size)])
        if summary:
            w.set_summary(Message(0, "summary", "s", 0, 0.0))
        view, copy = HistoryView(w), tuple(HistoryView(w))
        bounds = [None, *range(-7, 8)]
        for start in bounds:
            for stop in bounds:
                assert view[start:stop] == copy[start:stop], (size, start, stop)


def _generic(view: HistoryView, n: int) -> list[dict[str, object]]:
    """recent_messages() the slow way: a plain sequence, no chat cache."""
    return recent_messages({"session.history": tuple(view)}, n)


@pytest.mark.parametrize("max_messages", [3, 20, 200])
def test_cached_chat_tail_equals_building_the_messages(max_messages: int) -> None:
    """Whatever the window did (appends, evictions past its bound, a summary, messages
    dropped by compaction), the cached chat messages are the ones built from scratch."""
    w = MessageWindow(max_messages)
    view = HistoryView(w)
    for seq in range(150):
        w.append(Message(seq, "user" if seq % 2 else "assistant", f"m{seq}", seq, 0.0))
        if seq == 60:
            w.set_summary(Message(seq + 1, "summary", "so far", 0, 0.0))
            w.drop_upto(seq - 5)
        for n in (0, 1, 2, 5, 20, 64, 65):
            fast = recent_messages({"session.history": view}, n)
            assert fast == _generic(view, n), (seq, n)


def test_chat_messages_from_the_history_are_read_only() -> None:
    """They are shared by every later model call: changing one is refused, copying and
    JSON work."""
    w = MessageWindow(50, [_m(i) for i in range(30)])
    tail = w.chat_tail(20)
    assert tail is not None
    first = tail[0]
    assert isinstance(first, ChatMessage) and first == {"role": "user", "content": "m10"}
    with pytest.raises(TypeError, match="shared"):
        first["content"] = "changed"
    with pytest.raises(TypeError):
        first.update(role="system")
    assert json.dumps(first) == '{"role": "user", "content": "m10"}'
    assert copy.deepcopy(first) == first and pickle.loads(pickle.dumps(first)) == first
    editable = dict(first)
    editable["content"] = "mine"
    assert w.chat_tail(20)[0]["content"] == "m10"  # type: ignore[index]


def test_short_windows_and_big_requests_fall_back() -> None:
    """Fewer messages than asked for, or more than the cache holds: no cached answer
    (the caller builds them, summary included)."""
    assert MessageWindow(100, [_m(i) for i in range(5)]).chat_tail(20) is None
    assert MessageWindow(100, [_m(i) for i in range(90)]).chat_tail(CHAT_CACHE + 1) is None
    assert MessageWindow(100, [_m(i) for i in range(90)]).chat_tail(CHAT_CACHE) is not None
