"""Run and node events, as frozen dataclasses, delivered to observers.

An observer is any callable taking one :data:`Event`.  Observers run inline on the
engine's task, so they must be quick and must not raise (an observer that raises is
logged and ignored: watching a run never breaks it).  The engine builds no event at
all when a run has no observers.

Handlers put events of their own on the stream (a model's text as it arrives, the
tool calls it asks for, the tools' results) through the run's :class:`Emitter`, found
with :func:`current_emitter`: the engine core never imports a handler, and a handler
never learns who is watching.  When nobody observes a run there is no emitter, so a
handler can skip streaming altogether.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from engine.messages import Usage

__all__ = [
    "Emitter",
    "Event",
    "NodeCompleted",
    "NodeFailed",
    "NodeRetrying",
    "NodeStarted",
    "Observer",
    "RunCompleted",
    "RunFailed",
    "RunPaused",
    "RunStarted",
    "StructlogObserver",
    "TextDelta",
    "ToolCallCompleted",
    "ToolCallRequested",
    "TurnCommitted",
    "current_emitter",
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
class RunPaused:
    """A run stopped at human gate ``node_id`` to ask ``question``; it goes on when
    someone answers with one of ``choices`` (``steps``: the nodes run before it)."""

    run_id: str
    graph: str
    node_id: str
    question: str
    choices: tuple[str, ...]
    steps: int


@dataclass(frozen=True, slots=True)
class NodeStarted:
    """A node's handler is about to run (attempt 1).

    ``branch`` on this and the other node events: the parallel branch the visit runs in
    (``a``, ``a/x`` when nested), ``None`` outside one.  ``edge``: the ``Edge.index`` of
    the edge the walk came in by, when the node before has several edges to this one
    (else the previous node names it).
    """

    run_id: str
    node_id: str
    handler: str
    branch: str | None = None
    edge: int | None = None


@dataclass(frozen=True, slots=True)
class NodeRetrying:
    """Attempt ``attempt`` failed retryably; the next starts after ``delay`` seconds."""

    run_id: str
    node_id: str
    handler: str
    attempt: int
    delay: float
    reason: str
    branch: str | None = None


@dataclass(frozen=True, slots=True)
class NodeCompleted:
    """A node finished with a non-failing status (success, partial, skipped)."""

    run_id: str
    node_id: str
    handler: str
    status: str
    attempts: int
    duration: float
    usage: Usage | None = None
    """The model tokens the visit used, when its handler reported them."""
    branch: str | None = None
    changed: tuple[str, ...] = ()
    """The context keys the visit wrote (its record's ``changed``: the same tuple)."""


@dataclass(frozen=True, slots=True)
class NodeFailed:
    """A node finished failing, after ``attempts`` tries."""

    run_id: str
    node_id: str
    handler: str
    attempts: int
    duration: float
    reason: str
    branch: str | None = None


class TextDelta(msgspec.Struct, frozen=True):
    """A piece of a model's reply, as it arrived, in order.

    The pieces of one attempt concatenate to the reply's text.  When the attempt fails
    (a stream cut mid-way) a :class:`NodeRetrying` or :class:`NodeFailed` follows and
    the pieces so far are void: no partial reply is ever used.  A frozen ``msgspec``
    struct rather than a dataclass, as it is made once per token: built in C.
    """

    run_id: str
    node_id: str
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallRequested:
    """The model asked for tool ``name`` with ``arguments`` (``call_id`` pairs the result)."""

    run_id: str
    node_id: str
    call_id: str
    name: str
    arguments: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ToolCallCompleted:
    """A tool call returned ``content`` (``is_error``: the model is told it failed)."""

    run_id: str
    node_id: str
    call_id: str
    name: str
    content: str
    is_error: bool


@dataclass(frozen=True, slots=True)
class TurnCommitted:
    """A session's turn is in its store: the last event of a turn, after the commit.

    ``run_id`` is the turn's trace id; ``status`` is ``success`` or ``fail`` (a failed
    turn's record is committed too, with no message); ``seq`` is the sequence number the
    session's next message will take, so the turn's messages all have lower ones.
    Sessions deliver it; a bare engine run has no store and never does.
    """

    run_id: str
    session_id: str
    turn: int
    seq: int
    status: str


Event = (
    RunStarted
    | RunCompleted
    | RunFailed
    | RunPaused
    | NodeStarted
    | NodeRetrying
    | NodeCompleted
    | NodeFailed
    | TextDelta
    | ToolCallRequested
    | ToolCallCompleted
    | TurnCommitted
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
                **_branch_field(event.branch),
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
                **_branch_field(event.branch),
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
                **_branch_field(event.branch),
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
        elif isinstance(event, RunPaused):
            log.info(
                "run.paused",
                run_id=event.run_id,
                graph=event.graph,
                node=event.node_id,
                choices=list(event.choices),
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


_NO_FIELDS: Mapping[str, Any] = MappingProxyType({})


def _branch_field(branch: str | None) -> Mapping[str, Any]:
    """``branch=`` for a node's log line inside a parallel branch; nothing outside one."""
    return _NO_FIELDS if branch is None else {"branch": branch}


_fallback = logging.getLogger("turngraph.events")


def notify(observers: tuple[Observer, ...], event: Event) -> None:
    """Deliver ``event`` to each observer; an observer's exception is logged, not raised."""
    for obs in observers:
        try:
            obs(event)
        except Exception:  # an observer must never break a run
            _fallback.exception("observer %r raised on %s", obs, type(event).__name__)


class Emitter:
    """Puts a handler's events on its run's stream (see :func:`current_emitter`).

    The engine makes one per observed run and points ``node_id`` at the node running;
    each method builds one event and hands it to the run's observers.
    """

    __slots__ = ("node_id", "observers", "run_id")

    def __init__(self, observers: tuple[Observer, ...], run_id: str) -> None:
        self.observers = observers
        self.run_id = run_id
        self.node_id = ""

    def text(self, text: str) -> None:
        """A piece of the model's reply arrived."""
        event = TextDelta(self.run_id, self.node_id, text)
        for obs in self.observers:  # notify() inlined: this runs once per token
            try:
                obs(event)
            except Exception:
                _fallback.exception("observer %r raised on TextDelta", obs)

    def tool_call(self, call_id: str, name: str, arguments: Mapping[str, Any]) -> None:
        """The model asked for a tool."""
        notify(
            self.observers, ToolCallRequested(self.run_id, self.node_id, call_id, name, arguments)
        )

    def tool_result(self, call_id: str, name: str, content: str, is_error: bool) -> None:
        """A tool returned (or failed, ``is_error``)."""
        event = ToolCallCompleted(self.run_id, self.node_id, call_id, name, content, is_error)
        notify(self.observers, event)


EMITTER: ContextVar[Emitter | None] = ContextVar("turngraph_emitter", default=None)
"""The running node's emitter; set by the engine for each observed run."""


def current_emitter() -> Emitter | None:
    """The emitter of the run this code is part of, or ``None`` when nobody observes it."""
    return EMITTER.get()
