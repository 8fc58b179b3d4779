"""Run and node events, as frozen dataclasses, delivered to observers.

An observer is any callable taking one :data:`Event`.  Observers run inline on the
engine's task, so they must be quick and must not raise (an observer that raises is
logged and ignored: watching a run never breaks it).  The engine builds no event at
all when a run has no observers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Event",
    "NodeCompleted",
    "NodeFailed",
    "NodeRetrying",
    "NodeStarted",
    "Observer",
    "RunCompleted",
    "RunFailed",
    "RunStarted",
    "StructlogObserver",
]


@dataclass(frozen=True, slots=True)
class RunStarted:
    """A run began at ``start``."""

    run_id: str
    graph: str
    start: str


@dataclass(frozen=True, slots=True)
class RunCompleted:
    """A run reached exit node ``exit``."""

    run_id: str
    graph: str
    exit: str
    steps: int
    duration: float


@dataclass(frozen=True, slots=True)
class RunFailed:
    """A run stopped without reaching an exit (``status`` fail or cancelled)."""

    run_id: str
    graph: str
    status: str
    node_id: str | None
    error: str
    steps: int
    duration: float


@dataclass(frozen=True, slots=True)
class NodeStarted:
    """A node's handler is about to run (attempt 1)."""

    run_id: str
    node_id: str
    handler: str


@dataclass(frozen=True, slots=True)
class NodeRetrying:
    """Attempt ``attempt`` failed retryably; the next starts after ``delay`` seconds."""

    run_id: str
    node_id: str
    handler: str
    attempt: int
    delay: float
    reason: str


@dataclass(frozen=True, slots=True)
class NodeCompleted:
    """A node finished with a non-failing status (success, partial, skipped)."""

    run_id: str
    node_id: str
    handler: str
    status: str
    attempts: int
    duration: float


@dataclass(frozen=True, slots=True)
class NodeFailed:
    """A node finished failing, after ``attempts`` tries."""

    run_id: str
    node_id: str
    handler: str
    attempts: int
    duration: float
    reason: str


Event = (
    RunStarted | RunCompleted | RunFailed | NodeStarted | NodeRetrying | NodeCompleted | NodeFailed
)
Observer = Callable[[Event], None]


class StructlogObserver:
    """Logs every event through structlog, with the run id and any bound fields.

    ``fields`` are bound once (session id, trace id, turn...).  Node events are
    logged at ``info``, retries at ``warning``, failures at ``error``; with a filtering
    logger whose level is above ``info`` the per-node cost is a method call.
    """

    __slots__ = ("_log",)

    def __init__(self, logger: Any = None, **fields: Any) -> None:
        import structlog

        base = logger if logger is not None else structlog.get_logger("turngraph")
        self._log = base.bind(**fields) if fields else base

    def __call__(self, event: Event) -> None:
        log = self._log
        if isinstance(event, NodeCompleted):
            log.info(
                "node",
                run_id=event.run_id,
                node=event.node_id,
                handler=event.handler,
                status=event.status,
                attempt=event.attempts,
                duration_ms=round(event.duration * 1000, 3),
            )
        elif isinstance(event, NodeFailed):
            log.error(
                "node",
                run_id=event.run_id,
                node=event.node_id,
                handler=event.handler,
                status="fail",
                attempt=event.attempts,
                duration_ms=round(event.duration * 1000, 3),
                reason=event.reason,
            )
        elif isinstance(event, NodeRetrying):
            log.warning(
                "node.retry",
                run_id=event.run_id,
                node=event.node_id,
                handler=event.handler,
                attempt=event.attempt,
                delay_s=round(event.delay, 4),
                reason=event.reason,
            )
        elif isinstance(event, RunStarted):
            log.debug("run.start", run_id=event.run_id, graph=event.graph)
        elif isinstance(event, RunCompleted):
            log.info(
                "run.done",
                run_id=event.run_id,
                graph=event.graph,
                exit=event.exit,
                steps=event.steps,
                duration_ms=round(event.duration * 1000, 3),
            )
        elif isinstance(event, RunFailed):
            log.error(
                "run.failed",
                run_id=event.run_id,
                graph=event.graph,
                status=event.status,
                node=event.node_id,
                error=event.error,
            )


_fallback = logging.getLogger("turngraph.events")


def notify(observers: tuple[Observer, ...], event: Event) -> None:
    """Deliver ``event`` to each observer; an observer's exception is logged, not raised."""
    for obs in observers:
        try:
            obs(event)
        except Exception:  # an observer must never break a run
            _fallback.exception("observer %r raised on %s", obs, type(event).__name__)
