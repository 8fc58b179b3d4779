"""What a handler returns (:class:`Outcome`) and what a run returns (:class:`RunResult`).

The records made for every node (outcomes, trace records) are frozen ``msgspec``
structs rather than frozen dataclasses: equally immutable and built in C, which matters
at a dozen of them per turn (``python -m bench`` measures a turn).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import msgspec

from engine.messages import Usage

__all__ = ["EMPTY", "NodeRecord", "Outcome", "RunResult", "RunStatus", "Status", "total_usage"]

Status = Literal["success", "fail", "retry", "partial", "skipped"]
"""A node's outcome.  ``retry`` is a failure the handler marks as worth retrying."""

RunStatus = Literal["success", "fail", "cancelled", "paused"]

EMPTY: Mapping[str, Any] = MappingProxyType({})


class Outcome(msgspec.Struct, frozen=True):
    """A handler's answer: a status, the context keys it changes, and routing hints.

    ``updates`` holds only what changed; the runner applies it.  ``preferred_label``
    picks among unconditional edges by label; ``suggested_next`` names a target node.
    ``reason`` says why a node failed (shown in errors and traces).  ``usage`` is the
    model tokens the visit used (the runner copies it into the node's record).
    A handler may instead return a plain mapping, which means ``Outcome("success", it)``.
    """

    status: Status = "success"
    updates: Mapping[str, Any] = EMPTY
    preferred_label: str | None = None
    suggested_next: str | None = None
    reason: str | None = None
    usage: Usage | None = None


SUCCESS = Outcome()


class NodeRecord(msgspec.Struct, frozen=True):
    """One visit of one node: the unit of a trace."""

    node_id: str
    handler: str
    status: Status
    attempts: int
    duration: float
    """Seconds, all attempts and backoff included."""
    reason: str | None = None
    usage: Usage | None = None
    """Model tokens and model name of the visit, when its handler called a model."""
    branch: str | None = None
    """The parallel branch the visit ran in (its first node's id); None outside one."""
    changed: tuple[str, ...] = ()
    """The context keys the visit wrote (its outcome's update keys, in their order);
    names only, never values, so recording them costs a tuple per visit."""
    edge: int | None = None
    """The ``Edge.index`` of the edge the walk left the visit by, recorded only when
    the node has several edges to one target (else the next visit's node names it)."""

    @property
    def duration_ms(self) -> float:
        """``duration`` in milliseconds."""
        return self.duration * 1000.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``id``, ``handler``, ``status``, ``attempts``, ``duration_ms``,
        ``changed`` (the context keys written, a list) when the visit wrote any, ``edge``
        when recorded, and
        ``model``, ``input_tokens``, ``output_tokens`` when the visit used a model).

        Flat keys: a stored trace stays a list of flat dicts."""
        d: dict[str, Any] = {
            "id": self.node_id,
            "handler": self.handler,
            "status": self.status,
            "attempts": self.attempts,
            "duration_ms": round(self.duration * 1000.0, 4),
        }
        if self.reason is not None:
            d["reason"] = self.reason
        if self.branch is not None:
            d["branch"] = self.branch
        if self.changed:
            d["changed"] = list(self.changed)
        if self.edge is not None:
            d["edge"] = self.edge
        usage = self.usage
        if usage is not None:
            d["model"] = usage.model
            d["input_tokens"] = usage.input_tokens
            d["output_tokens"] = usage.output_tokens
        return d


def total_usage(trace: Iterable[NodeRecord | Mapping[str, Any]]) -> dict[str, Any] | None:
    """A turn's model usage summed over its node visits (records or stored trace dicts):
    ``{"input_tokens", "output_tokens", "models"}``, or ``None`` when no node used a model."""
    found = False
    tokens_in = tokens_out = 0
    models: list[str] = []
    for r in trace:
        u = r.to_dict() if isinstance(r, NodeRecord) else r
        if "input_tokens" not in u:
            continue
        found = True
        tokens_in += int(u["input_tokens"])
        tokens_out += int(u["output_tokens"])
        model = str(u.get("model") or "")
        if model and model not in models:
            models.append(model)
    if not found:
        return None
    return {"input_tokens": tokens_in, "output_tokens": tokens_out, "models": models}


@dataclass(frozen=True, slots=True)
class RunResult:
    """The end of a run: its status, final context, trace, and error if it failed."""

    status: RunStatus
    context: dict[str, Any]
    trace: tuple[NodeRecord, ...]
    run_id: str
    error: BaseException | None = field(default=None, compare=False)

    @property
    def ok(self) -> bool:
        """True when the run reached an exit node."""
        return self.status == "success"
