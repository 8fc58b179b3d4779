"""``/sessions``: list, read, delete, compact, export and import sessions.

Reads go to the manager's store (no lease is taken to read); deleting and compacting
go through the manager, which hosts the session while it works on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine.server.errors import BadRequest, NotFound
from engine.server.http import json, page, read_json, state
from sessions.gates import waiting_of
from sessions.limits import validate_session_id
from sessions.store.base import SessionMeta
from sessions.usage import stored_usage

__all__ = ["ROUTES", "meta_json", "session_id"]

_TYPES = ("primary", "background", "delegation", "consultation")
_SCAN = 500  # sessions read per store page while filtering


def session_id(request: Request) -> str:
    """The path's session id, checked (``InvalidSessionId``: 400)."""
    return validate_session_id(request.path_params["session_id"])


def meta_json(meta: SessionMeta) -> dict[str, Any]:
    """A session's metadata as JSON (``version``, the fencing token, is internal)."""
    if meta.tampered:
        return {"id": meta.id, "tampered": True}
    return {
        "id": meta.id,
        "agent_id": meta.agent_id,
        "type": meta.type,
        "created_at": meta.created_at,
        "updated_at": meta.updated_at,
        "turn_count": meta.turn_count,
        "message_count": meta.message_count,
        "config": meta.config,
        "working_memory": meta.working_memory,
        "goals": meta.goals,
        "cognitive_mode": meta.cognitive_mode,
        "summary_upto": meta.summary_upto,
    }


async def list_sessions(request: Request) -> Response:
    """``GET /sessions?offset&limit&agent&type``: sessions by id, filtered, paged."""
    offset, limit = page(request)
    agent = request.query_params.get("agent")
    kind = request.query_params.get("type")
    if kind is not None and kind not in _TYPES:
        raise BadRequest(f"query parameter type={kind!r}: expected one of {', '.join(_TYPES)}")
    manager = state(request).manager
    if agent is None and kind is None:
        found = await manager.list_sessions(offset, limit)
        return json({"offset": offset, "limit": limit, "sessions": [meta_json(m) for m in found]})
    matched: list[dict[str, Any]] = []
    skip, start = offset, 0
    while len(matched) < limit:
        chunk = await manager.list_sessions(start, _SCAN)
        for meta in chunk:
            if (agent is None or meta.agent_id == agent) and (kind is None or meta.type == kind):
                if skip:
                    skip -= 1
                elif len(matched) < limit:
                    matched.append(meta_json(meta))
        if len(chunk) < _SCAN:
            break
        start += _SCAN
    return json({"offset": offset, "limit": limit, "sessions": matched})


async def get_session(request: Request) -> Response:
    """``GET /sessions/{id}``: metadata, counters, model usage totals, and what it waits
    for: ``question`` (a turn paused at a human gate) and ``retry`` (a failed turn that
    ``POST /sessions/{id}/retry`` can re-run), each null when absent."""
    sid = session_id(request)
    store = state(request).manager.store
    loaded = await store.load(sid, recent=0)
    body = meta_json(loaded.meta)
    body["usage"] = (await stored_usage(store, sid)).to_dict()
    body.update(waiting_of(sid, loaded.checkpoint))
    return json(body)


async def messages(request: Request) -> Response:
    """``GET /sessions/{id}/messages?offset&limit``: messages by ``seq``."""
    sid = session_id(request)
    offset, limit = page(request)
    store = state(request).manager.store
    found = await store.messages(sid, offset, limit)
    if not found:
        await store.load(sid, recent=0)  # SessionNotFound when there is no such session
    return json({"offset": offset, "limit": limit, "messages": found})


async def delete_session(request: Request) -> Response:
    """``DELETE /sessions/{id}``: the session and all its records."""
    sid = session_id(request)
    if not await state(request).manager.delete(sid):
        raise NotFound(f"session {sid!r}: no such session")
    return Response(status_code=204)


async def compact(request: Request) -> Response:
    """``POST /sessions/{id}/compact``: summarise old messages now."""
    sid = session_id(request)
    st = state(request)
    with st.turn():
        result = await st.manager.compact(sid)
    return json(
        {
            "messages_compacted": result.messages_compacted,
            "tokens_before": result.tokens_before,
            "tokens_after": result.tokens_after,
            "upto_seq": result.upto_seq,
            "reason": result.reason,
        }
    )


async def export(request: Request) -> Response:
    """``GET /sessions/{id}/export``: the signed, portable export document."""
    sid = session_id(request)
    return json(await state(request).manager.store.export(sid))


async def import_(request: Request) -> Response:
    """``POST /sessions/import?replace=true``: verify and store an export document."""
    st = state(request)
    doc = await read_json(request, st.max_body)
    if not isinstance(doc, Mapping):
        raise BadRequest("request body must be an export document (a JSON object)")
    replace = request.query_params.get("replace", "false").lower() in ("1", "true", "yes")
    if replace:
        meta = doc.get("meta")
        sid = meta.get("id") if isinstance(meta, Mapping) else None
        if isinstance(sid, str):
            # The imported copy replaces a hosted one (on a cluster, maybe on a host:
            # not in ``live``): stop hosting it first, releasing its lease.
            await st.manager.close(sid)
    imported = await st.manager.store.import_(doc, replace=replace)
    return json(meta_json(imported), 201)


ROUTES = [
    Route("/sessions", list_sessions, methods=["GET"]),
    Route("/sessions/import", import_, methods=["POST"]),
    Route("/sessions/{session_id}", get_session, methods=["GET"]),
    Route("/sessions/{session_id}", delete_session, methods=["DELETE"]),
    Route("/sessions/{session_id}/messages", messages, methods=["GET"]),
    Route("/sessions/{session_id}/compact", compact, methods=["POST"]),
    Route("/sessions/{session_id}/export", export, methods=["GET"]),
]
