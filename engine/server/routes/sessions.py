"""``/sessions``: list, read, delete, compact, export and import sessions.

Reads go to the manager's store (no lease is taken to read); deleting and compacting
go through the manager, which hosts the session while it works on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Protocol

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine.server.errors import BadRequest, NotFound
from engine.server.http import json, page, read_json, state
from sessions.gates import waiting_of
from sessions.limits import validate_session_id
from sessions.store.base import Listed, SessionMatch, SessionMeta
from sessions.usage import stored_usage

__all__ = ["ROUTES", "SCAN", "Lister", "meta_json", "search", "session_id"]

_TYPES = ("primary", "background", "delegation", "consultation")
SCAN: Final = 1000
"""Sessions one text search request examines at most (a bounded store read)."""


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
    """``GET /sessions?after&limit&agent&type&offset``: sessions by id, a page at a time.

    A page is the sessions (of ``agent``, of ``type``) above the cursor ``after``, read
    as one range of an index; ``next`` is the ``after`` of the following page (null:
    this page is the last).  ``offset`` still skips that many sessions after ``after``
    (older clients page with it), but each request walks over them: to go deep, follow
    ``next``."""
    offset, limit = page(request)
    if limit == 0:  # a page of nothing has no place to continue from
        raise BadRequest("query parameter limit=0: expected an integer 1..1000")
    agent = request.query_params.get("agent")
    kind = request.query_params.get("type")
    if kind is not None and kind not in _TYPES:
        raise BadRequest(f"query parameter type={kind!r}: expected one of {', '.join(_TYPES)}")
    after = request.query_params.get("after", "")
    match = SessionMatch(agent_id=agent, type=kind, after=after)
    metas, next_ = await search(state(request).manager, match, offset, limit)
    sessions = [meta_json(m) for m in metas]
    return json({"offset": offset, "limit": limit, "sessions": sessions, "next": next_})


class Lister(Protocol):
    """What :func:`search` reads: a store or a session manager."""

    async def list_sessions(
        self, offset: int = 0, limit: int = 100, *, match: SessionMatch | None = None
    ) -> tuple[SessionMeta, ...]: ...


async def search(
    lister: Lister, match: SessionMatch, offset: int, limit: int
) -> tuple[list[SessionMeta], str | None]:
    """Up to ``limit`` sessions passing ``match`` (the first ``offset`` of them skipped)
    and the cursor to continue from (``None``: there are no more).

    Without ``match.text`` that is one page of an index range (:meth:`Store.list_sessions`).
    A substring ``text`` has no index: the ``SCAN`` sessions after ``match.after`` are
    examined — one bounded store read however rare the match — and the cursor says
    where the examination stopped."""
    if limit <= 0:
        return [], None
    if not match.text:
        found = await lister.list_sessions(offset, limit, match=match)
        return list(found), found.scanned_to if isinstance(found, Listed) else None
    window = await lister.list_sessions(0, SCAN, match=match)
    kept = list(window[offset : offset + limit])
    if len(window) > offset + limit and kept:
        return kept, kept[-1].id  # more matches in this window: resume after the last shown
    return kept, window.scanned_to if isinstance(window, Listed) else None


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
