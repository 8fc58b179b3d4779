"""The API as an OpenAPI 3.1 document, written by hand (the routes are few and stable).

``tests/server/test_openapi.py`` checks that every route the app serves is listed here
with its methods, so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Any

__all__ = ["document"]

_ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {"kind": {"type": "string"}, "message": {"type": "string"}},
            "required": ["kind", "message"],
        }
    },
}
_SESSION_ID = {
    "name": "session_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$"},
}
_PAGE = [
    {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 0}},
]
_TURN_RESULT = {
    "type": "object",
    "properties": {
        "session_id": {"type": "string"},
        "turn": {"type": "integer"},
        "status": {"type": "string", "enum": ["success", "fail", "paused"]},
        "reply": {"type": "string"},
        "trace_id": {"type": "string"},
        "usage": {"type": "object"},
        "trace": {"type": "array", "items": {"type": "object"}},
        "error": {"type": "string"},
        "question": {
            "type": "object",
            "description": "a paused turn's human gate: answer with POST .../answer",
            "properties": {
                "node": {"type": "string"},
                "question": {"type": "string"},
                "choices": {"type": "array", "items": {"type": "string"}},
            },
        },
    },
}


def _op(summary: str, ok: str = "200", *, params: list[Any] | None = None, **extra: Any) -> Any:
    responses: dict[str, Any] = {ok: {"description": "OK"}}
    for status, what in (
        ("400", "bad id, parameter or body"),
        ("401", "missing or wrong bearer token"),
        ("404", "no such session, turn or graph"),
        ("503", "store unreachable or server shutting down"),
    ):
        responses[status] = {
            "description": what,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
    return {"summary": summary, "parameters": params or [], "responses": responses, **extra}


def _page(summary: str, params: list[Any]) -> Any:
    """A viewer page: HTML, not JSON (errors are HTML pages too)."""
    op = _op(summary, params=params)
    op["responses"]["200"]["content"] = {"text/html": {"schema": {"type": "string"}}}
    return op


def _watch(sid: list[Any]) -> Any:
    """``GET /sessions/{id}/live``: the session's turns as Server-Sent Events."""
    op = _op(
        "Watch the session's turns run here (SSE, the running turn's so far first)", params=sid
    )
    op["responses"]["200"]["content"] = {"text/event-stream": {"schema": {"type": "string"}}}
    return op


def _form(sid: list[Any], field: str = "text", what: str = "Run a turn", *optional: str) -> Any:
    """``POST /ui/sessions/{id}/turns`` (``answer``): the viewer's forms without JavaScript."""
    fields = {name: {"type": "string"} for name in (field, *optional)}
    form = {"type": "object", "properties": fields, "required": [field]}
    body = {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": form}}}
    op = _op(f"{what} from a form, then 303 to its page", "303", params=sid, requestBody=body)
    return op


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def document() -> dict[str, Any]:
    """The OpenAPI document ``GET /openapi.json`` serves."""
    sid = [_SESSION_ID]
    turn_body = _body(
        {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
    )
    turn_post = _op(
        "Run one turn (the session is created if new); with Accept: text/event-stream, "
        "stream its events as SSE ending with a `result` event",
        params=sid,
        requestBody=turn_body,
    )
    turn_post["responses"]["200"]["content"] = {
        "application/json": {"schema": _TURN_RESULT},
        "text/event-stream": {"schema": {"type": "string"}},
    }
    conflict = "session busy or fenced, or a question waits (SessionPaused)"
    for status, what in (("409", conflict), ("413", "body too large")):
        turn_post["responses"][status] = {"description": what}
    answer = _op(
        "Answer the question a paused turn waits on: the turn runs on from its gate "
        "(400 UnknownChoice; 409 NotPaused, QuestionChanged (node is not the gate "
        "waiting) or GateTimedOut)",
        params=sid,
        requestBody=_body(
            {
                "type": "object",
                "properties": {"choice": {"type": "string"}, "node": {"type": "string"}},
                "required": ["choice"],
            }
        ),
    )
    retry = _op(
        "Re-run the failed latest turn from the node that failed (409 RetryRefused)",
        params=sid,
    )
    for op in (answer, retry):
        op["responses"]["200"]["content"] = {"application/json": {"schema": _TURN_RESULT}}
        op["responses"]["409"] = {"description": "nothing to answer or retry, or session busy"}
    filters = [
        {"name": "agent", "in": "query", "schema": {"type": "string"}},
        {"name": "type", "in": "query", "schema": {"type": "string"}},
    ]
    turn_n = {"name": "n", "in": "path", "required": True, "schema": {"type": "integer"}}
    graph = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    replace = {"name": "replace", "in": "query", "schema": {"type": "boolean"}}
    q = {"name": "q", "in": "query", "schema": {"type": "string"}}
    offset = _PAGE[0]
    return {
        "openapi": "3.1.0",
        "info": {"title": "turngraph", "version": "1"},
        "components": {
            "schemas": {"Error": _ERROR, "TurnResult": _TURN_RESULT},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/sessions": {"get": _op("List sessions", params=[*_PAGE, *filters])},
            "/sessions/import": {
                "post": _op(
                    "Import a signed export document",
                    "201",
                    params=[replace],
                    requestBody=_body({"type": "object"}),
                )
            },
            "/sessions/{session_id}": {
                "get": _op(
                    "A session's metadata, usage, and what it waits for (question, retry)",
                    params=sid,
                ),
                "delete": _op("Delete a session and its records", "204", params=sid),
            },
            "/sessions/{session_id}/messages": {
                "get": _op("A page of a session's messages", params=[*sid, *_PAGE])
            },
            "/sessions/{session_id}/turns": {
                "post": turn_post,
                "get": _op("Committed turns with node traces", params=[*sid, *_PAGE]),
            },
            "/sessions/{session_id}/turns/{n}": {
                "get": _op("One committed turn and its node trace", params=[*sid, turn_n])
            },
            "/sessions/{session_id}/answer": {"post": answer},
            "/sessions/{session_id}/retry": {"post": retry},
            "/sessions/{session_id}/compact": {"post": _op("Compact a session now", params=sid)},
            "/sessions/{session_id}/export": {
                "get": _op("A session's signed export document", params=sid)
            },
            "/graphs": {"get": _op("The graphs the server runs")},
            "/graphs/{name}.svg": {"get": _op("A graph drawn by Graphviz", params=[graph])},
            "/healthz": {"get": _op("The process answers")},
            "/readyz": {"get": _op("The store answers and the server is not draining")},
            "/openapi.json": {"get": _op("This document")},
            "/": {"get": _page("The trace viewer: sessions, searched by ?q=", [q, offset])},
            "/ui/sessions/{session_id}": {
                "get": _page("The trace viewer: one conversation by turn", [*sid, offset])
            },
            "/ui/sessions/{session_id}/turns/{n}": {
                "get": _page("The trace viewer: one turn's path and node visits", [*sid, turn_n])
            },
            "/sessions/{session_id}/live": {"get": _watch(sid)},
            "/ui/sessions/{session_id}/live": {
                "get": _page("The trace viewer: the session's turns lit as they run", sid)
            },
            "/ui/sessions/{session_id}/turns": {"post": _form(sid)},
            "/ui/sessions/{session_id}/answer": {
                "post": _form(sid, "choice", "Answer the waiting question", "node")
            },
            "/sessions/{session_id}/heartbeats": {
                "get": _op("A hosted session's latest heartbeat runs and traces", params=sid)
            },
            "/ui/sessions/{session_id}/heartbeats": {
                "get": _page("The trace viewer: a hosted session's latest heartbeat runs", sid)
            },
            "/ui/sessions/{session_id}/heartbeats/{n}": {
                "get": _page("The trace viewer: one heartbeat run's path", [*sid, turn_n])
            },
        },
    }
