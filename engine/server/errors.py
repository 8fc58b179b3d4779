"""The server's errors, and every typed error mapped to an HTTP status and a JSON body.

Every error response has the same shape::

    {"error": {"kind": "SessionNotFound", "message": "session 'x': no such session"}}

``kind`` is the class name of the typed error the Python API raises (so a client can
branch on the same names), ``message`` its one-line text.  An error that is not a
:class:`~engine.errors.TurngraphError` is a bug of ours: it answers 500 with kind
``InternalError`` and a fixed message, never its text or a traceback (either could
carry a secret).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.errors import AdapterError, GraphError, TurngraphError
from sessions.errors import (
    Fenced,
    GateTimedOut,
    ImportRejected,
    InvalidSessionId,
    NotPaused,
    RetryRefused,
    SessionBusy,
    SessionClosed,
    SessionExists,
    SessionLimitReached,
    SessionNotFound,
    SessionPaused,
    SessionTampered,
    StoreCorrupt,
    StoreError,
    UnknownChoice,
)

__all__ = [
    "ApiError",
    "BadRequest",
    "BodyTooLarge",
    "CrossSite",
    "GraphvizMissing",
    "NotFound",
    "NotJson",
    "ShuttingDown",
    "StoreUnavailable",
    "Unauthorized",
    "error_body",
    "status_of",
]


class ApiError(TurngraphError):
    """An HTTP request the server refuses; ``status`` is its HTTP status."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ApiError):
    """A malformed body, parameter or path (bad JSON, ``text`` not a string...)."""


class Unauthorized(ApiError):
    """A missing or wrong bearer token (``TURNGRAPH_API_TOKEN`` is set)."""

    status = 401


class CrossSite(ApiError):
    """A form posted from another site's page (its ``Origin`` is not this server)."""

    status = 403


class NotFound(ApiError):
    """No such route, graph or turn."""

    status = 404


class BodyTooLarge(ApiError):
    """A request body over the server's ``max_body`` bytes (checked while reading)."""

    status = 413


class NotJson(ApiError):
    """A JSON endpoint posted without ``Content-Type: application/json``.

    Refused because a browser sends a ``text/plain`` or form post to any site without
    asking it first: another site's page could otherwise run turns on a loopback server
    that has no token."""

    status = 415


class ShuttingDown(ApiError):
    """The server is draining after SIGTERM: it finishes running turns, takes no new ones."""

    status = 503


class StoreUnavailable(ApiError):
    """The store did not answer (its driver failed with an error of its own)."""

    status = 503


class GraphvizMissing(ApiError):
    """Drawing a graph needs Graphviz's ``dot`` program, which is not installed."""

    status = 503


# Checked in order: the first class the error is an instance of wins (subclasses first).
_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (ApiError, 0),  # its own ``status``
    (InvalidSessionId, 400),
    (SessionNotFound, 404),
    (SessionExists, 409),
    (Fenced, 409),
    (SessionBusy, 409),
    (SessionLimitReached, 429),
    (SessionPaused, 409),  # a question waits: answer it first
    (NotPaused, 409),
    (GateTimedOut, 409),
    (RetryRefused, 409),
    (UnknownChoice, 400),
    (SessionClosed, 503),
    (ImportRejected, 400),
    (SessionTampered, 500),
    (StoreCorrupt, 500),
    (StoreError, 503),  # the store is unreachable or refused: try again later
    (GraphError, 400),
    (AdapterError, 502),  # the model provider failed
    (TurngraphError, 400),
)


def status_of(exc: BaseException) -> int:
    """The HTTP status for ``exc`` (500 for anything that is not a turngraph error)."""
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status or getattr(exc, "status", 400)
    return 500


def error_body(exc: BaseException) -> Mapping[str, Any]:
    """The JSON body for ``exc``: its kind and one-line message (fixed text for a bug)."""
    if not isinstance(exc, TurngraphError):
        return {"error": {"kind": "InternalError", "message": "internal server error"}}
    message = " ".join(str(exc).split())
    return {"error": {"kind": type(exc).__name__, "message": message}}
