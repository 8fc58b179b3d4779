"""Per-manager limits and the session-id rule.

:class:`Limits` is one frozen value handed to a :class:`~sessions.SessionManager`; every
session of that manager shares it.  :func:`validate_session_id` (re-exported from the store
codec, so stores and sessions share one rule) is the single gate a session id passes
before it reaches a store, a log line or a file name.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.runner import DEFAULT_MAX_STEPS
from sessions.store.codec import validate_session_id

__all__ = ["Limits", "validate_session_id"]


@dataclass(frozen=True, slots=True)
class Limits:
    """How much one manager and each of its sessions may hold and do.

    ``max_messages`` bounds each session's in-memory window (older messages leave memory
    but stay in the store).  ``queue_size`` bounds the turns *waiting* on one session;
    one more raises :class:`~engine.errors.SessionBusy`.  ``compaction_threshold_tokens``
    (estimated as characters / 4; ``None`` turns automatic compaction off) starts a
    background compaction that keeps the last ``keep_recent_turns`` turns verbatim.
    ``checkpoint`` saves the in-flight turn after every node so a crashed process can
    resume it.  Heartbeat failures back off exponentially up to ``heartbeat_max_backoff``
    seconds.

    Retention, per session (the seed system's defaults; past a limit the oldest items leave
    memory, never the store): ``max_messages`` messages; ``max_reasoning_steps`` reasoning
    steps, a step being one node visit of the traversal log (a turn's record stays in memory
    while any of its steps is among the newest, so memory holds at most the limit plus one
    turn's steps; ``traces()`` serves at most the last ``trace_window`` whole turns from
    memory, older ones from the store); ``max_tool_calls`` tool-call records (tool results
    and assistant tool requests). ``max_active_sessions`` bounds the sessions one manager
    hosts at once (one more raises :class:`~engine.errors.SessionLimitReached`; 10 suits
    interactive use, raise it for servers). ``max_steps_per_turn`` bounds the nodes one turn
    may visit, so a cycle cannot run forever (a turn graph's own ``max_steps`` attribute may
    lower it, never raise it); a turn that pauses, fails or is resumed counts it over all
    its runs (:mod:`sessions.gates`).  ``turn_timeout`` (seconds; ``None``:
    unbounded) bounds one turn's run: past it the running node is cancelled and the turn fails with
    :class:`~engine.errors.TurnTimeout`, the session idle again (a graph's own
    ``turn_timeout`` attribute may shorten it).  A plain handler run inline (no node
    ``timeout``, not ``blocking``) cannot be cancelled: the turn fails when it returns.
    """

    max_messages: int = 1000
    max_reasoning_steps: int = 100
    max_tool_calls: int = 500
    max_active_sessions: int = 10
    queue_size: int = 64
    compaction_threshold_tokens: int | None = 32_000
    keep_recent_turns: int = 4
    checkpoint: bool = False
    trace_window: int = 100
    heartbeat_max_backoff: float = 300.0
    max_steps_per_turn: int = DEFAULT_MAX_STEPS
    turn_timeout: float | None = 600.0

    def __post_init__(self) -> None:
        for name in (
            "max_messages",
            "max_reasoning_steps",
            "max_tool_calls",
            "max_active_sessions",
            "max_steps_per_turn",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"Limits.{name} must be >= 1")
        if self.turn_timeout is not None and not self.turn_timeout > 0:
            raise ValueError("Limits.turn_timeout must be > 0 seconds (or None)")
        if self.queue_size < 0 or self.keep_recent_turns < 0 or self.trace_window < 1:
            raise ValueError("Limits.queue_size/keep_recent_turns must be >= 0, trace_window >= 1")
