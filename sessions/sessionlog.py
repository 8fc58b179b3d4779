"""A session's log: its messages, its turn records (node traces) and its tool calls.

:class:`SessionLog` keeps what memory may hold of them, bounded by
:class:`~sessions.limits.Limits`, and pages the rest in from the store:

* messages: the newest ``max_messages`` in a :class:`~sessions.history.MessageWindow`,
  shown to handlers through one live :class:`~sessions.history.HistoryView`;
* reasoning steps: the turn records holding the newest ``max_reasoning_steps`` node
  visits of this process's turns, one reference per turn;
* tool-call records: the newest ``max_tool_calls`` tool results and assistant tool
  requests (every one is also a message).

The log never writes to the store: the turn pipeline commits a turn, then appends it
here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from itertools import islice
from types import MappingProxyType
from typing import Any, NamedTuple, cast

from sessions.history import HistoryView, MessagePage, MessageWindow
from sessions.limits import Limits
from sessions.store.base import EMPTY_META, LoadedSession, Message, Role, Store, TurnRecord

__all__ = ["ReasoningStep", "SessionLog", "is_tool_call"]

_ROLES = frozenset({"user", "assistant", "tool", "system", "summary"})


class ReasoningStep(NamedTuple):
    """One reasoning step: one node visit of a turn's traversal log.

    ``record`` is the node's trace entry as stored (:meth:`engine.NodeRecord.to_dict`:
    ``id``, ``handler``, ``status``, ``attempts``, ``duration_ms``[, ``reason``]).
    """

    turn: int
    record: Mapping[str, Any]


def is_tool_call(message: Message) -> bool:
    """Whether ``message`` is a tool-call record: a tool result (``role="tool"``) or an
    assistant message asking for tools (``meta["tool_calls"]``)."""
    return message.role == "tool" or (message.role == "assistant" and "tool_calls" in message.meta)


class SessionLog:
    """The bounded in-memory log of one session, backed by the store for the rest.

    ``window`` and ``history`` (its read-only view) are created once and live as long as
    the session; ``next_seq`` is the ``seq`` the next message gets, which is also how
    many messages the session ever had.
    """

    __slots__ = (
        "__weakref__",  # tests check a closed session's log is freed
        "_id",
        "_limits",
        "_store",
        "_tool_calls",
        "_trace_steps",
        "_traces",
        "history",
        "next_seq",
        "window",
    )

    def __init__(self, store: Store, limits: Limits, loaded: LoadedSession) -> None:
        self._id = loaded.meta.id
        self._store = store
        self._limits = limits
        self.window = MessageWindow(limits.max_messages)
        upto = loaded.meta.summary_upto
        if loaded.summary is not None:
            self.window.set_summary(loaded.summary)
            upto = max(upto, loaded.summary.seq)
        self.window.extend(m for m in loaded.recent if m.seq > upto)
        self.history = HistoryView(self.window)
        self.next_seq = loaded.meta.message_count
        # Records with a step among the newest max_reasoning_steps (the oldest may be
        # partly past it), and how many steps they hold: one reference per turn, not a
        # long-lived object per node visit.
        self._traces: deque[TurnRecord] = deque()
        self._trace_steps = 0
        self._tool_calls: deque[Message] = deque(
            filter(is_tool_call, self.window.messages), maxlen=limits.max_tool_calls
        )

    # ------------------------------------------------------------------ reading

    def recent(self, n: int) -> tuple[Message, ...]:
        """The last ``n`` messages in memory, oldest first."""
        return self.history.recent(n)

    async def messages(self, offset: int = 0, limit: int = 100) -> MessagePage:
        """Messages ``offset <= seq < offset + limit``: from memory, older ones from the store."""
        if offset < 0 or limit < 0:
            raise ValueError("offset and limit must be >= 0")
        total = self.next_seq
        stop = min(offset + limit, total)
        items = self.window.slice_by_seq(offset, stop)
        if items is None:
            items = await self._store.messages(self._id, offset, stop - offset)
        return MessagePage(tuple(items), offset, total, stop < total)

    async def all(self, page_size: int = 500) -> tuple[Message, ...]:
        """Every message of the session, oldest first (pages older ones in from the store)."""
        out: list[Message] = []
        offset = 0
        while True:
            page = await self.messages(offset, page_size)
            out.extend(page.items)
            offset += len(page.items)
            if not page.has_more or not page.items:
                return tuple(out)

    def steps(self) -> tuple[ReasoningStep, ...]:
        """The reasoning steps in memory, oldest first (see :meth:`Session.steps`)."""
        steps = [ReasoningStep(r.turn, step) for r in self._traces for step in r.trace]
        return tuple(steps[-self._limits.max_reasoning_steps :])

    def tool_calls(self) -> tuple[Message, ...]:
        """The tool-call records in memory, oldest first (see :meth:`Session.tool_calls`)."""
        return tuple(self._tool_calls)

    async def traces(self, offset: int = 0, limit: int = 100) -> tuple[TurnRecord, ...]:
        """Turn records of turns ``offset+1 ...``: recent from memory, older from the store."""
        if offset < 0 or limit < 0:
            raise ValueError("offset and limit must be >= 0")
        mem = tuple(self._whole_traces())
        if mem and offset + 1 >= mem[0].turn:
            start = offset + 1 - mem[0].turn
            return mem[start : start + limit]
        return await self._store.turns(self._id, offset, limit)

    def _whole_traces(self) -> Iterable[TurnRecord]:
        """The in-memory records all of whose steps are kept (at most ``trace_window``)."""
        traces = self._traces
        limits = self._limits
        skip = 1 if self._trace_steps > limits.max_reasoning_steps else 0
        skip = max(skip, len(traces) - limits.trace_window)
        return islice(traces, skip, None) if skip else traces

    # ------------------------------------------------------------------ writing

    def new_messages(
        self, text: str, extra: object, reply: str, turn: int, now: float
    ) -> tuple[Message, ...]:
        """The messages a successful turn adds: the user's ``text``, the tool exchange the
        graph left in ``turn.messages`` (``extra``), the ``reply``; numbered from
        :attr:`next_seq`.  Nothing is appended yet (see :meth:`append`)."""
        seq = self.next_seq
        out = [Message(seq, "user", text, turn, now)]
        if extra is not None and isinstance(extra, Sequence) and not isinstance(extra, str):
            for item in extra:
                if not isinstance(item, Mapping):
                    continue
                role = str(item.get("role", "tool"))
                meta = item.get("meta")
                out.append(
                    Message(
                        seq + len(out),
                        cast(Role, role if role in _ROLES else "tool"),
                        str(item.get("content", "")),
                        turn,
                        now,
                        MappingProxyType(dict(meta)) if isinstance(meta, Mapping) else EMPTY_META,
                    )
                )
        out.append(Message(seq + len(out), "assistant", reply, turn, now))
        return tuple(out)

    def append(self, messages: tuple[Message, ...], record: TurnRecord) -> None:
        """Add a committed turn: its ``messages`` (possibly none) and its ``record``."""
        if messages:
            self.window.extend(messages)
            self.next_seq += len(messages)
            if len(messages) > 2:  # user, [tool exchange...], assistant
                self._tool_calls.extend(filter(is_tool_call, messages))
        self._keep_trace(record)

    def _keep_trace(self, record: TurnRecord) -> None:
        """Keep a committed turn's record and steps in memory, within the limits.

        A step is one node visit.  The records holding the newest
        ``max_reasoning_steps`` steps stay (the oldest of them possibly only in part:
        :meth:`steps` cuts it, :meth:`traces` reads it from the store), so memory holds
        at most the limit plus one turn's steps, one reference per turn.
        """
        traces = self._traces
        traces.append(record)
        self._trace_steps += len(record.trace)
        # Drop the oldest record once none of its steps is among the newest.
        limit = self._limits.max_reasoning_steps
        while self._trace_steps - len(traces[0].trace) >= limit:
            self._trace_steps -= len(traces.popleft().trace)

    def apply_summary(self, summary: Message, upto_seq: int) -> None:
        """Let go of the messages ``summary`` covers; show it first instead."""
        self.window.drop_upto(upto_seq)
        self.window.set_summary(summary)
