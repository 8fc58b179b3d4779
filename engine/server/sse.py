"""Turn events as JSON and as Server-Sent Events frames.

A streamed turn is a sequence of frames ``event: NAME`` / ``data: JSON``: one per engine
event, named by its class (``RunStarted``, ``NodeStarted``, ``TextDelta``,
``ToolCallRequested``, ``ToolCallCompleted``, ``NodeCompleted``, ``TurnCommitted``...),
and last ``event: result`` with the same JSON a non-streamed turn answers
(:func:`result_json`), or ``event: error`` with the error body if the turn could not run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from sessions.usage import UsageTotals

if TYPE_CHECKING:
    from engine.events import Event
    from sessions import TurnResult

__all__ = ["encode", "event_frame", "frame", "result_json"]


def _as_builtin(obj: Any) -> Any:
    """What msgspec cannot encode itself: read-only mappings (``MappingProxyType``)."""
    if isinstance(obj, Mapping):
        return dict(obj)
    raise NotImplementedError(type(obj).__name__)


encode = msgspec.json.Encoder(enc_hook=_as_builtin).encode
"""JSON bytes of dicts, lists, dataclasses, msgspec structs and read-only mappings."""
_encode = encode


def result_json(session_id: str, result: TurnResult) -> dict[str, Any]:
    """What ``POST /sessions/{id}/turns`` answers: reply, status, turn, usage, node trace
    (and, for a turn paused at a human gate, its ``question``: node, text, choices)."""
    # Each record becomes a dict once; the usage is summed from those same dicts
    # (``result.usage`` would convert every record a second time).
    trace = [record.to_dict() for record in result.trace]
    body: dict[str, Any] = {
        "session_id": session_id,
        "turn": result.turn,
        "status": result.status,
        "reply": result.reply,
        "trace_id": result.trace_id,
        "usage": UsageTotals.of((trace,)).to_dict(),
        "trace": trace,
    }
    if result.error is not None:
        body["error"] = " ".join(str(result.error).split())
    if result.status == "paused":
        node = getattr(result.error, "node_id", "")
        body["question"] = {"node": node, "question": result.question, "choices": result.choices}
    return body


def frame(name: str, data: Mapping[str, Any] | bytes) -> bytes:
    """One SSE frame: ``event: name`` and ``data:`` as one line of JSON."""
    payload = data if isinstance(data, bytes) else _encode(data)
    return b"event: " + name.encode() + b"\ndata: " + payload + b"\n\n"


def event_frame(event: Event) -> bytes:
    """The SSE frame of one engine event (dataclasses and msgspec structs encode alike)."""
    return frame(type(event).__name__, _encode(event))
