"""A session's in-memory message window and the read-only view handlers see.

The window keeps the most recent ``max_messages`` messages (older ones leave memory but
stay in the store) and a running character count, so token estimates are O(1).  The
view, :class:`HistoryView`, is created once per session and reads the live window: a
handler that asks for ``context["session.history"]`` gets the same object every turn,
never a copy, so a turn costs the same at message 20 and message 20,000.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import overload

from engine.messages import ChatMessage
from sessions.store.base import Message

__all__ = ["CHAT_CACHE", "HistoryView", "MessagePage", "MessageWindow"]


@dataclass(frozen=True, slots=True)
class MessagePage:
    """One page of a session's messages.

    ``offset`` is the ``seq`` of the first message asked for; ``total`` counts every
    message the session ever had (compaction summaries excluded); ``has_more`` is true
    when messages exist after this page.
    """

    items: tuple[Message, ...]
    offset: int
    total: int
    has_more: bool


CHAT_CACHE = 64
"""How many of the newest messages a window also keeps as model-ready chat dicts."""


class MessageWindow:
    """The newest messages of one session, bounded, with O(1) append and eviction.

    ``summary`` is the latest compaction summary, shown first by the view.  ``chars``
    counts the content characters of the window plus the summary.  ``chat`` holds the
    newest (up to :data:`CHAT_CACHE`) messages as read-only
    :class:`~engine.messages.ChatMessage` dicts, built once per message rather
    than once per model call (see :meth:`chat_tail`).
    """

    __slots__ = ("_items", "chars", "chat", "max_messages", "summary")

    def __init__(self, max_messages: int, items: Iterable[Message] = ()) -> None:
        self.max_messages = max_messages
        self._items: deque[Message] = deque()
        self.chat: deque[ChatMessage] = deque(maxlen=max(0, min(CHAT_CACHE, max_messages)))
        self.summary: Message | None = None
        self.chars = 0
        self.extend(items)

    def append(self, message: Message) -> None:
        """Add ``message``, evicting the oldest when the window is full."""
        self._push(message)
        if self.chat:  # the cache is kept up once a model call has asked for it
            self.chat.append(ChatMessage.of(message.role, message.content))

    def _push(self, message: Message) -> None:
        items = self._items
        if len(items) >= self.max_messages:
            self.chars -= len(items.popleft().content)
        items.append(message)
        self.chars += len(message.content)

    def extend(self, messages: Iterable[Message]) -> None:
        """Append each of ``messages`` in order."""
        for m in messages:
            self.append(m)

    def chat_tail(self, n: int) -> list[ChatMessage] | None:
        """The newest ``n`` messages as chat messages, oldest first, or ``None`` when the
        window holds fewer than ``n`` (or ``n`` is past the cache's size).

        The cache is filled on the first call and then kept up by :meth:`append`, so a
        session whose model never reads history (or that is short) pays nothing.
        """
        chat, items = self.chat, self._items
        if n > (chat.maxlen or 0) or n > len(items):
            return None
        if len(chat) < n:
            chat.clear()
            start = len(items) - (chat.maxlen or 0)
            chat.extend(
                ChatMessage.of(m.role, m.content) for m in islice(items, max(0, start), None)
            )
        if n <= 0:
            return []
        return list(islice(reversed(chat), n))[::-1]

    def set_summary(self, summary: Message | None) -> None:
        """Replace the summary shown before the window."""
        if self.summary is not None:
            self.chars -= len(self.summary.content)
        self.summary = summary
        if summary is not None:
            self.chars += len(summary.content)

    def drop_upto(self, seq: int) -> int:
        """Remove the messages with ``seq <= seq`` (they are oldest-first); return how many."""
        items, n = self._items, 0
        while items and items[0].seq <= seq:
            self.chars -= len(items.popleft().content)
            n += 1
        chat = self.chat  # serves only the newest: free the entries of dropped messages
        while len(chat) > len(items):
            chat.popleft()
        return n

    @property
    def first_seq(self) -> int | None:
        """``seq`` of the oldest message in memory, or ``None`` when empty."""
        return self._items[0].seq if self._items else None

    @property
    def messages(self) -> deque[Message]:
        """The underlying deque (for the view and for compaction's snapshot)."""
        return self._items

    def __len__(self) -> int:
        return len(self._items)

    def estimated_tokens(self) -> int:
        """A cheap token estimate: characters / 4."""
        return self.chars // 4

    def slice_by_seq(self, start: int, stop: int) -> tuple[Message, ...] | None:
        """Messages with ``start <= seq < stop`` if memory holds all of them, else ``None``."""
        items = self._items
        if not items:
            return None if start < stop else ()
        first = items[0].seq
        if start < first:
            return None
        last = items[-1].seq
        stop = min(stop, last + 1)
        if start >= stop:
            return ()
        return tuple(islice(items, start - first, stop - first))


class HistoryView(Sequence[Message]):
    """A read-only, live :class:`~collections.abc.Sequence` over a window.

    Index 0 is the compaction summary when there is one, then the in-memory messages
    oldest first.  Creating it is O(1); indexing near either end is O(1).
    """

    __slots__ = ("_window",)

    def __init__(self, window: MessageWindow) -> None:
        self._window = window

    def __len__(self) -> int:
        w = self._window
        return len(w.messages) + (w.summary is not None)

    @overload
    def __getitem__(self, index: int) -> Message: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Message]: ...

    def __getitem__(self, index: int | slice) -> Message | Sequence[Message]:
        if isinstance(index, slice):
            return tuple(self)[index] if index.step not in (None, 1) else self._slice(index)
        w = self._window
        items, summary = w.messages, w.summary
        try:
            if summary is None:
                return items[index]  # the deque handles negative indexes itself
            if index == 0 or index == -len(items) - 1:
                return summary
            return items[index - 1 if index > 0 else index]
        except IndexError:
            raise IndexError("history index out of range") from None

    def _slice(self, index: slice) -> tuple[Message, ...]:
        w = self._window
        items, summary = w.messages, w.summary
        start, stop, _ = index.indices(len(items) + (summary is not None))
        if stop <= start:
            return ()
        head: tuple[Message, ...] = ()
        if summary is not None:  # shift to deque positions; the summary is position -1
            if start == 0:
                head, start = (summary,), 1
            start, stop = start - 1, stop - 1
        size = len(items)
        if start < size - stop:
            body = tuple(islice(items, start, stop))
        else:
            # A tail slice (the common case: "the last 20 messages") walks the deque
            # from its newest end, so its cost is the slice's length, not the window's.
            body = tuple(islice(reversed(items), size - stop, size - start))[::-1]
        return head + body if head else body

    def chat_tail(self, n: int) -> list[ChatMessage] | None:
        """The last ``n`` entries as cached, read-only chat messages, oldest first, or
        ``None`` when the window cannot serve them (see :meth:`MessageWindow.chat_tail`):
        the caller then builds them itself."""
        return self._window.chat_tail(n)

    def __iter__(self) -> Iterator[Message]:
        w = self._window
        if w.summary is not None:
            yield w.summary
        yield from w.messages

    def __reversed__(self) -> Iterator[Message]:
        w = self._window
        yield from reversed(w.messages)
        if w.summary is not None:
            yield w.summary

    def recent(self, n: int) -> tuple[Message, ...]:
        """The last ``n`` in-memory messages (the summary excluded), oldest first."""
        items = self._window.messages
        if n <= 0:
            return ()
        if n >= len(items):
            return tuple(items)
        # Walk from the newest end: O(n), not O(window).
        return tuple(islice(reversed(items), n))[::-1]

    def __repr__(self) -> str:
        return f"HistoryView({len(self)} messages)"


def as_dicts(messages: Sequence[Message]) -> list[dict[str, str]]:
    """``[{"role", "content"}, ...]``: the shape LLM adapters take."""
    return [{"role": m.role, "content": m.content} for m in messages]
