"""What a turn reads of its session (:class:`TurnHost`) and of what all sessions share
(:class:`TurnRuntime`): the protocols the turn pipeline's parts are written against, so
none of them imports the session."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, Protocol

from engine.events import Observer
from engine.graph import Graph
from sessions.limits import Limits
from sessions.store.base import SessionType

if TYPE_CHECKING:
    from engine.runner import Engine
    from sessions.telemetry import Telemetry

__all__ = ["Phase", "TurnHost", "TurnRuntime", "Watch"]

Phase = Literal["idle", "processing", "awaiting_llm", "awaiting_tools"]


class TurnHost(Protocol):
    """The session fields a turn reads (identity, graph) and advances (the counters,
    ``phase``, ``trace_id``); ``closed`` refuses new turns."""

    id: str
    agent_id: str
    type: SessionType
    config: Mapping[str, Any]
    turn_graph: Graph
    turn_count: int
    updated_at: float
    trace_id: str
    phase: Phase
    closed: bool


class TurnRuntime(Protocol):
    """What a turn needs of what all sessions share (:class:`~sessions.SessionRuntime`)."""

    engine: Engine
    limits: Limits
    telemetry: Telemetry | None

    def logging(self) -> bool:
        """Whether this turn should log its nodes."""
        ...


Watch = Observer | None
"""An observer of one turn's events, or none."""
