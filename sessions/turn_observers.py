"""What the engine and listeners hear of a turn: the observers of its run, the phase
tracked as its nodes start, and the :class:`~engine.events.TurnCommitted` event once
it is in the store."""

from __future__ import annotations

from engine.events import Observer, StructlogObserver, TurnCommitted, notify
from engine.graph import Node
from engine.outcome import RunStatus
from sessions.sessionlog import SessionLog
from sessions.turn_host import Phase, TurnHost, TurnRuntime

__all__ = ["TurnHooks"]

# A plain dict (private, never mutated): its .get is what every node start pays.
_PHASE_OF: dict[str, Phase] = {
    "llm_call": "awaiting_llm",
    "reflect": "awaiting_llm",
    "dispatch_tools": "awaiting_tools",
}


class TurnHooks:
    """One session's turn observers and engine hooks."""

    __slots__ = ("_host", "_log", "_rt")

    def __init__(self, host: TurnHost, runtime: TurnRuntime, log: SessionLog) -> None:
        self._host = host
        self._rt = runtime
        self._log = log

    def observers(
        self, turn: int, trace_id: str, spans: Observer | None, watch: Observer | None
    ) -> tuple[Observer, ...]:
        """This turn's observers: its log (when logging is on), then its telemetry
        ``spans`` and the caller's ``watch``, each when given."""
        observers: tuple[Observer, ...] = ()
        # No observer at all when logging is off: the engine then builds no events.
        if self._rt.logging():
            observers = (StructlogObserver(session_id=self._host.id, trace_id=trace_id, turn=turn),)
        if spans is not None:
            observers = (*observers, spans)
        if watch is not None:
            observers = (*observers, watch)
        return observers

    def on_enter(self, node: Node) -> None:
        """Track the phase as nodes start (called by the engine, allocation-free)."""
        self._host.phase = _PHASE_OF.get(node.handler, "processing")

    def committed(
        self, observers: tuple[Observer, ...], trace_id: str, turn: int, status: RunStatus
    ) -> None:
        """Tell the engine's observers (the manager's) and ``observers`` (this turn's)
        that the turn is in the store; never when nobody listens."""
        engine = self._rt.engine
        if observers or engine.observers:
            seq = self._log.next_seq
            event = TurnCommitted(trace_id, self._host.id, turn, seq, status)
            notify(engine.observers + observers, event)
