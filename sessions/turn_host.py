"""What a turn reads of its session (:class:`TurnHost`) and of what all sessions share
(:class:`TurnRuntime`): the protocols the turn pipeline's parts are written against, so
none of them imports the session; and :class:`SessionCore`, the host a session hands its
parts in place of itself."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, Protocol

from engine.events import Observer
from engine.graph import Graph
from sessions.limits import Limits
from sessions.store.base import SessionMeta, SessionType

if TYPE_CHECKING:
    from engine.runner import Engine
    from sessions.telemetry import Telemetry

__all__ = ["Phase", "SessionCore", "TurnHost", "TurnRuntime", "Watch"]

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


class SessionCore:
    """One session's identity, turn graph and the fields its turns advance: a
    :class:`TurnHost` that is not the session.

    The session keeps these here and shows them as its own attributes; its parts (the
    turn pipeline, the heartbeat's run, the compactor) hold this instead of the session,
    so no part refers back to the session that holds it, and a closed session is freed
    by reference counting rather than left to the cyclic garbage collector.
    """

    __slots__ = (
        "agent_id",
        "closed",
        "config",
        "id",
        "phase",
        "trace_id",
        "turn_count",
        "turn_graph",
        "type",
        "updated_at",
    )

    def __init__(self, meta: SessionMeta, turn_graph: Graph) -> None:
        self.id = meta.id
        self.agent_id = meta.agent_id
        self.type: SessionType = meta.type
        self.config: Mapping[str, Any] = meta.config
        self.turn_graph = turn_graph
        self.turn_count = meta.turn_count
        self.updated_at = meta.updated_at
        self.trace_id = ""
        self.phase: Phase = "idle"
        self.closed = False


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
