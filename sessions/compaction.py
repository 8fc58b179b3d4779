"""Compaction: fold a session's older messages into one summary message.

When a session's estimated tokens (characters / 4) pass ``Limits.compaction_threshold_tokens``,
or on :meth:`Session.compact`, the messages older than the last ``keep_recent_turns``
turns are summarised through the LLM adapter into a ``role="summary"`` message.  The
originals are never deleted: the store archives the summary beside them
(:meth:`Store.append_summary`) and they stay readable through ``messages(offset)``; only
the in-memory window lets them go.

Nothing that arrives during a compaction is lost: the summary is computed outside the
session lock over a snapshot, then applied under the lock and covers only messages whose
``seq`` existed when it started.

A compaction never grows the context: a summary whose estimated tokens are not fewer
than those of what it replaces (the covered messages and the previous summary) is
dropped, and the result says why (``reason``) with ``messages_compacted == 0``.

Compaction works on a :class:`Compactable`: a window of messages and a way to apply a
summary, which :class:`~sessions.Session` implements (this module never imports it), and
so does :class:`SessionParts`, made of the session's parts, which is what a session's
:class:`Compactor` (one compaction at a time) holds.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import anyio

from engine.logs import log
from sessions.heartbeat import Spawn
from sessions.history import MessageWindow
from sessions.limits import Limits
from sessions.store.base import Message
from sessions.turn_host import TurnHost

if TYPE_CHECKING:
    from handlers.adapters.llm import LLM

__all__ = [
    "Compactable",
    "CompactionResult",
    "Compactor",
    "SessionParts",
    "Summarizer",
    "compact_session",
    "extract_summarizer",
    "llm_summarizer",
    "plan_cut",
]

Summarizer = Callable[[Sequence[Message], "Message | None"], Awaitable[str]]
"""``(messages, previous_summary) -> summary text``."""

PROMPT = (
    "Summarise the conversation below for your own later reference. Keep facts, "
    "decisions, names, open questions and commitments; drop pleasantries.\n\n"
)


@dataclass(frozen=True, slots=True)
class CompactionResult:
    """What one compaction did.  ``messages_compacted`` is 0 for a no-op, and ``reason``
    then says why when it is not simply "nothing old enough to compact"."""

    messages_compacted: int
    tokens_before: int
    tokens_after: int
    upto_seq: int = -1
    summary: Message | None = None
    reason: str = ""

    @property
    def tokens_reclaimed(self) -> int:
        """``tokens_before - tokens_after`` (never negative)."""
        return max(0, self.tokens_before - self.tokens_after)

    def to_dict(self) -> dict[str, int]:
        """The metrics as a JSON-ready dict."""
        return {
            "messages_compacted": self.messages_compacted,
            "tokens_before": self.tokens_before,
            "tokens_after": self.tokens_after,
            "tokens_reclaimed": self.tokens_reclaimed,
        }


def transcript(messages: Sequence[Message], previous: Message | None) -> str:
    """The text a summariser reads: the previous summary, then ``role: content`` lines."""
    lines = [f"(earlier summary) {previous.content}"] if previous is not None else []
    lines.extend(f"{m.role}: {m.content}" for m in messages)
    return "\n".join(lines)


def llm_summarizer(llm: LLM, *, max_tokens: int = 512) -> Summarizer:
    """A :data:`Summarizer` that asks ``llm`` (an ``LLM`` adapter) for the summary."""

    async def summarize(messages: Sequence[Message], previous: Message | None) -> str:
        prompt = PROMPT + transcript(messages, previous)
        response = await llm.complete([{"role": "user", "content": prompt}], max_tokens=max_tokens)
        return response.text.strip()

    return summarize


def extract_summarizer(*, ratio: float = 0.5) -> Summarizer:
    """An offline :data:`Summarizer` that needs no model: the previous summary and the
    messages' contents joined by ``" / "``, cut to ``ratio`` of the characters they hold.

    A deterministic stand-in, not a real summary: it is the manager's default when no
    LLM adapter is given, because the offline ``EchoModel`` would echo the whole prompt
    back, which is always longer than what it was asked to summarise.
    """
    if not 0 < ratio < 1:
        raise ValueError(f"ratio must be between 0 and 1, not {ratio!r}")

    async def summarize(messages: Sequence[Message], previous: Message | None) -> str:
        parts = [m.content for m in messages]
        if previous is not None:
            parts.insert(0, previous.content)
        text = " / ".join(parts)
        budget = int(ratio * sum(map(len, parts)))
        return text if len(text) <= budget else text[: max(budget - 1, 0)] + "…"

    return summarize


def plan_cut(messages: Sequence[Message], keep_recent_turns: int) -> int | None:
    """The ``seq`` of the last message to compact, keeping the newest turns verbatim.

    ``messages`` are oldest first.  Returns ``None`` when there is nothing older than
    the last ``keep_recent_turns`` turns.
    """
    kept: set[int] = set()
    for m in reversed(messages):
        if m.turn not in kept:
            if len(kept) >= keep_recent_turns:
                return m.seq
            kept.add(m.turn)
    return None


def _tokens(items: Sequence[Message | str]) -> int:
    """Estimated tokens of messages or texts, as the window counts them (characters / 4)."""
    chars = sum(len(i) if isinstance(i, str) else len(i.content) for i in items)
    return chars // 4


class Compactable(Protocol):
    """What compaction needs of a session: its message window, its turn count (the
    summary's turn) and a way to apply a summary (:meth:`Session.apply_summary`)."""

    @property
    def window(self) -> MessageWindow:
        """The in-memory messages, oldest first, and the current summary."""
        ...

    @property
    def turn_count(self) -> int:
        """Finished turns."""
        ...

    async def apply_summary(self, summary: Message, upto_seq: int) -> bool:
        """Archive ``summary`` and drop what it covers from memory; False if the session
        could not take it (closed)."""
        ...


@dataclass(frozen=True, slots=True)
class SessionParts:
    """A :class:`Compactable` made of one session's parts rather than the session: its
    ``window``, its ``host`` (for ``turn_count``) and ``apply``, which applies a summary
    under the session lock.  A compactor holds this: holding the session that holds the
    compactor would make a reference cycle, and a closed session would then wait for
    the cyclic garbage collector instead of being freed at once."""

    window: MessageWindow
    host: TurnHost
    apply: Callable[[Message, int], Awaitable[bool]]

    @property
    def turn_count(self) -> int:
        """The session's finished turns."""
        return self.host.turn_count

    async def apply_summary(self, summary: Message, upto_seq: int) -> bool:
        """Archive ``summary`` and drop what it covers from memory (locked); False when
        the session closed first."""
        return await self.apply(summary, upto_seq)


async def compact_session(
    session: Compactable, summarize: Summarizer, keep: int
) -> CompactionResult:
    """Compact ``session`` once (callers serialise: see :class:`Compactor`)."""
    window = session.window
    tokens_before = window.estimated_tokens()
    snapshot = tuple(window.messages)
    upto = plan_cut(snapshot, keep)
    if upto is None:
        return CompactionResult(0, tokens_before, tokens_before)
    covered = [m for m in snapshot if m.seq <= upto]
    previous = window.summary
    # The slow part runs outside the session lock: turns go on meanwhile.
    text = await summarize(covered, previous)
    replaced = _tokens(covered) + (_tokens((previous,)) if previous is not None else 0)
    if (size := _tokens((text,))) >= replaced:
        reason = f"summary not shorter than what it replaces ({size} >= {replaced} tokens)"
        return CompactionResult(0, tokens_before, window.estimated_tokens(), reason=reason)
    summary = Message(
        upto, "summary", text, session.turn_count, time.time(), {"covers": len(covered)}
    )
    if not await session.apply_summary(summary, upto):
        return CompactionResult(0, tokens_before, window.estimated_tokens())
    return CompactionResult(len(covered), tokens_before, window.estimated_tokens(), upto, summary)


class Compactor:
    """One session's compactions, one at a time: on request, or in the background when
    the window's estimated tokens pass ``threshold`` (``None``: never automatically).

    ``target`` is what it compacts (``session_id``, for log lines); ``limits`` give the
    threshold (``compaction_threshold_tokens``) and ``keep_recent_turns``; ``spawn``
    starts the background compactions.
    """

    __slots__ = (
        "_gen",
        "_keep",
        "_lock",
        "_running",
        "_session_id",
        "_spawn",
        "_summarize",
        "_target",
        "threshold",
    )

    def __init__(
        self,
        session_id: str,
        target: Compactable,
        summarize: Summarizer,
        limits: Limits,
        spawn: Spawn,
    ) -> None:
        self._session_id = session_id
        self._target = target
        self._summarize = summarize
        self._keep = limits.keep_recent_turns
        self.threshold = limits.compaction_threshold_tokens
        self._spawn = spawn
        self._lock: anyio.Lock | None = None  # made on the first compaction
        self._gen = 0
        self._running = False

    async def compact(self) -> CompactionResult:
        """Compact now.  A call that arrives while another compaction runs waits for it
        and returns a no-op result instead of compacting twice."""
        gen = self._gen
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            if gen != self._gen:
                tokens = self._target.window.estimated_tokens()
                return CompactionResult(0, tokens, tokens)
            try:
                return await compact_session(self._target, self._summarize, self._keep)
            finally:
                self._gen += 1

    def maybe_start(self) -> None:
        """Start a background compaction if the window is past the threshold and none runs."""
        threshold = self.threshold
        if threshold is None or self._running:
            return
        if self._target.window.estimated_tokens() <= threshold:
            return
        self._running = True
        self._spawn(self._auto)

    async def _auto(self) -> None:
        try:
            await self.compact()
        except Exception as exc:  # a background compaction must never take the session down
            log(
                "warning",
                "compaction.failed",
                session_id=self._session_id,
                error=f"{type(exc).__name__}: {exc}",
            )
        finally:
            self._running = False
