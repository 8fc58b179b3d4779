"""``/sessions/{id}/turns``: run a turn (JSON or a live SSE stream) and read past turns;
``/sessions/{id}/answer`` and ``/sessions/{id}/retry``: go on with a paused turn or
re-run a failed one.

A turn that stops at a human gate answers ``status: "paused"`` with its ``question``;
until ``POST /sessions/{id}/answer`` ``{"choice": ...}``, new turns get 409
``SessionPaused``.

**A client that leaves.**  A turn is never cut by its client: a plain request's turn
runs on in its request task, and a streamed turn runs in the server's task group apart
from the response, so when the client disconnects mid-stream the turn still finishes
and commits whole (or fails whole: nothing of it is stored).  Its outcome is then
read with ``GET /sessions/{id}/turns/{n}``.  Only shutdown past its grace period
cancels a turn, and a cancelled turn stores nothing.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from engine.events import Event, Observer
from engine.server.errors import BadRequest, NotFound, ShuttingDown, error_body
from engine.server.http import json, page, path_number, read_json, state
from engine.server.routes.sessions import session_id
from engine.server.sse import event_frame, frame, result_json
from engine.server.state import ServerState, TurnEvents, TurnSession
from sessions import TurnResult

__all__ = ["ROUTES", "answer_turn", "item_frame", "open_for_turn", "published", "run_turn"]

Item = Event | TurnResult | BaseException


async def _text(request: Request, st: ServerState) -> str:
    body = await read_json(request, st.max_body)
    if not isinstance(body, dict):
        raise BadRequest('request body must be a JSON object like {"text": "..."}')
    text = body.get("text")
    if not isinstance(text, str):
        raise BadRequest(f'"text" must be a string, not {type(text).__name__}')
    return text


async def post_turn(request: Request) -> Response:
    """``POST /sessions/{id}/turns`` ``{"text": ...}``: run one turn (created if new)."""
    sid = session_id(request)
    st = state(request)
    text = await _text(request, st)
    session = await open_for_turn(st, sid)
    if "text/event-stream" in request.headers.get("accept", ""):
        return _stream(st, session, text)
    return json(result_json(sid, await run_turn(st, session, text)))


async def open_for_turn(st: ServerState, sid: str) -> TurnSession:
    """The session, hosted for a turn; ``ShuttingDown`` (503) while draining, checked
    before the session is loaded (and its lease taken)."""
    if st.draining:
        raise ShuttingDown("the server is shutting down and takes no new turns")
    return await st.open(sid)


async def run_turn(st: ServerState, session: TurnSession, text: str) -> TurnResult:
    """One plain (not streamed) turn, counted in flight; when someone watches the
    session its events are published to them (:mod:`engine.server.live`)."""
    with st.turn():
        if st.live.watched(session.id):
            return await _watched(st, session, text)
        return await session.send(text)


async def _watched(st: ServerState, session: TurnSession, text: str) -> TurnResult:
    """``session.send(text)``, its events published to the session's watchers."""
    publish = st.live.publish
    try:
        async with session.stream(text) as events:
            async for item in events:
                publish(session.id, item)
                if isinstance(item, TurnResult):
                    return item
    except Exception as exc:
        publish(session.id, exc)
        raise
    raise AssertionError("a turn stream ended without its result")  # pragma: no cover


def _stream(st: ServerState, session: TurnSession, text: str) -> Response:
    """The turn as SSE; the turn itself runs in the server's task group (see module)."""
    if st.tg is None:
        raise ShuttingDown("the server is not running")
    send, receive = anyio.create_memory_object_stream[Item](math.inf)
    events = session.stream(text)
    st.enter()  # counted from now: the pump leaves when the turn has ended
    st.tg.start_soon(_pump, st, session.id, events, send)
    return StreamingResponse(
        _frames(session.id, receive),
        media_type="text/event-stream",
        headers={"cache-control": "no-store", "x-accel-buffering": "no"},
    )


async def _pump(
    st: ServerState, sid: str, events: TurnEvents, send: MemoryObjectSendStream[Item]
) -> None:
    """Run the turn to its end, handing each item on while the client listens, and to
    the session's watchers (:mod:`engine.server.live`)."""
    publish = st.live.publish
    try:
        with send:
            async with events:
                try:
                    async for item in events:
                        _offer(send, item)
                        publish(sid, item)
                except Exception as exc:  # the turn could not run: the client hears why
                    _offer(send, exc)
                    publish(sid, exc)
    finally:
        st.leave()


def _offer(send: MemoryObjectSendStream[Item], item: Item) -> None:
    # The client left: the turn goes on to its commit all the same.
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
        send.send_nowait(item)


async def _frames(sid: str, receive: MemoryObjectReceiveStream[Item]) -> AsyncIterator[bytes]:
    with receive:
        async for item in receive:
            yield item_frame(sid, item)


def item_frame(sid: str, item: object) -> bytes:
    """The SSE frame of one item of a turn of session ``sid``: an engine event, its
    ``result``, or the ``error`` that stopped it."""
    if isinstance(item, TurnResult):
        return frame("result", result_json(sid, item))
    if isinstance(item, BaseException):
        return frame("error", error_body(item))
    return event_frame(item)  # type: ignore[arg-type]


async def post_answer(request: Request) -> Response:
    """``POST /sessions/{id}/answer`` ``{"choice": ..., "node": ...}``: answer the
    waiting question; the turn runs on from its gate (400 ``UnknownChoice``, 409
    ``NotPaused``, ``QuestionChanged`` (``node``, optional, is not the gate waiting)
    or ``GateTimedOut``)."""
    sid = session_id(request)
    st = state(request)
    body = await read_json(request, st.max_body)
    choice = body.get("choice") if isinstance(body, dict) else None
    node = body.get("node") if isinstance(body, dict) else None
    if not isinstance(choice, str) or not isinstance(node, str | None):
        raise BadRequest(
            'request body must be a JSON object like {"choice": "...", "node": "..."} '
            "(node optional)"
        )
    return json(result_json(sid, await answer_turn(st, sid, choice, node)))


async def answer_turn(st: ServerState, sid: str, choice: str, node: str | None) -> TurnResult:
    """Answer ``sid``'s waiting question with ``choice`` and run its turn on
    (``node``: the gate the caller saw asking, ``None``: whichever waits)."""
    return await _go_on(
        st, sid, lambda session, watch: session.answer(choice, node=node, watch=watch)
    )


async def post_retry(request: Request) -> Response:
    """``POST /sessions/{id}/retry``: re-run the failed latest turn from the node that
    failed (409 ``RetryRefused``)."""
    sid = session_id(request)
    result = await _go_on(state(request), sid, lambda s, watch: s.retry_turn(watch=watch))
    return json(result_json(sid, result))


async def _go_on(
    st: ServerState,
    sid: str,
    step: Callable[[TurnSession, Observer | None], Awaitable[TurnResult]],
) -> TurnResult:
    """Run an answered or retried turn; published to the session's watchers like a
    plain turn (:func:`run_turn`)."""
    if st.draining:
        raise ShuttingDown("the server is shutting down and takes no new turns")
    session = await st.open(sid, create=False)
    return await published(st, sid, lambda watch: step(session, watch))


async def published(
    st: ServerState, sid: str, step: Callable[[Observer | None], Awaitable[TurnResult]]
) -> TurnResult:
    """Run ``step`` (a turn going on from a gate or a failure), counted in flight; when
    someone watches ``sid`` its events, then its result (or error), are published to
    them.  Answers and retries come here, and so do the turns of gates whose timeout
    fired (the manager's gate timers: see :func:`engine.server.app.create_app`)."""
    with st.turn():
        if not st.live.watched(sid):
            return await step(None)
        publish = st.live.publish
        try:
            result = await step(lambda event: publish(sid, event))
        except Exception as exc:
            publish(sid, exc)
            raise
        publish(sid, result)
    return result


async def list_turns(request: Request) -> Response:
    """``GET /sessions/{id}/turns?offset&limit``: committed turns with their node traces."""
    sid = session_id(request)
    offset, limit = page(request)
    store = state(request).manager.store
    found = await store.turns(sid, offset, limit)
    if not found:
        await store.load(sid, recent=0)  # SessionNotFound when there is no such session
    # Turn records are msgspec structs: the encoder writes them (and their read-only
    # trace steps) as they are, as it does the messages.
    return json({"offset": offset, "limit": limit, "turns": found})


async def get_turn(request: Request) -> Response:
    """``GET /sessions/{id}/turns/{n}``: one committed turn (1-based) and its node trace."""
    sid = session_id(request)
    n = path_number(request, "turn", "turn")
    store = state(request).manager.store
    found = await store.turns(sid, n - 1, 1)
    if not found:
        await store.load(sid, recent=0)
        raise NotFound(f"session {sid!r}: no turn {n} (not committed)")
    return json(found[0])


ROUTES = [
    Route("/sessions/{session_id}/turns", post_turn, methods=["POST"]),
    Route("/sessions/{session_id}/turns", list_turns, methods=["GET"]),
    Route("/sessions/{session_id}/turns/{n}", get_turn, methods=["GET"]),
    Route("/sessions/{session_id}/answer", post_answer, methods=["POST"]),
    Route("/sessions/{session_id}/retry", post_retry, methods=["POST"]),
]
