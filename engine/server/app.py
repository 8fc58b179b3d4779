"""The ASGI application: :func:`create_app` builds it for uvicorn or any ASGI server.

::

    uvicorn --factory 'engine.server:create_app'          # defaults: $TURNGRAPH_STORE...
    app = create_app("sqlite:///chat.db", llm="echo")     # or build it in Python

The app owns one :class:`~sessions.SessionManager` from its lifespan's start to its
end, so run it with lifespan events on (uvicorn does by default).  At the end running
turns get ``grace`` seconds to finish, then the manager closes, releasing every lease.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from engine.errors import TurngraphError
from engine.server.auth import BearerAuth
from engine.server.errors import error_body, status_of
from engine.server.http import json
from engine.server.routes import graphs, health, heartbeats, live, sessions, turns, ui
from engine.server.state import Manager, ServerState
from sessions.gate_timers import GateTimers

if TYPE_CHECKING:
    from sessions import SessionManager

__all__ = ["MAX_BODY", "MAX_SESSIONS", "TOKEN_ENV", "create_app"]

TOKEN_ENV = "TURNGRAPH_API_TOKEN"
"""The environment variable holding the bearer token every request must carry."""

MAX_BODY = 1 << 20
"""Default largest request body, in bytes (an import document counts too)."""

MAX_SESSIONS = 1000
"""Default most sessions one server hosts at once (see :func:`create_app`)."""


async def _on_error(request: Request, exc: Exception) -> Response:
    """Any error as its JSON body and status; never a traceback or a secret."""
    if isinstance(exc, HTTPException):
        kind = "NotFound" if exc.status_code == 404 else "MethodNotAllowed"
        body = {"error": {"kind": kind, "message": f"{request.method} {request.url.path}"}}
        return json(body, exc.status_code)
    return json(error_body(exc), status_of(exc))


def _gate_timers(st: ServerState) -> GateTimers | None:
    """The manager's gate timers (a manager hosting its sessions here has them; a
    cluster's hosts run their own)."""
    timers = getattr(st.manager, "gate_timers", None)
    return timers if isinstance(timers, GateTimers) else None


def _publish_timeouts(st: ServerState) -> None:
    """Run the turns of gates whose timeout fires like answered ones: counted in
    flight and published to the session's live watchers."""
    timers = _gate_timers(st)
    if timers is not None:
        timers.runner = lambda sid, step: turns.published(st, sid, step)


def _manager(
    store: str | None,
    llm: str | None,
    graph: str | None,
    max_sessions: int,
    dialect: str | None,
    allow_shell: bool,
) -> SessionManager:
    from engine.cli.common import dialect_graph
    from sessions import Limits, SessionManager
    from sessions.store import default_store_url

    return SessionManager(
        store or os.environ.get("TURNGRAPH_STORE") or default_store_url(),
        llm=llm or os.environ.get("TURNGRAPH_LLM") or "echo",
        turn_graph=dialect_graph(graph, dialect),
        limits=Limits(max_active_sessions=max_sessions),
        allow_shell=allow_shell,
    )


def create_app(
    store: str | None = None,
    *,
    llm: str | None = None,
    graph: str | None = None,
    manager: Manager | None = None,
    token: str | None = None,
    max_body: int = MAX_BODY,
    grace: float = 30.0,
    max_sessions: int = MAX_SESSIONS,
    dialect: str | None = None,
    allow_shell: bool = False,
) -> Starlette:
    """The turngraph HTTP API as a Starlette app.

    ``store`` is a store URL (default ``$TURNGRAPH_STORE``, else SQLite in the data
    folder); ``llm`` a model spec (default ``$TURNGRAPH_LLM``, else ``echo``); ``graph``
    the turn graph's path (default the shipped ``turn.dot``).  ``manager`` replaces all
    three with a :class:`~sessions.SessionManager` of your own, or a
    :class:`sessions.cluster.ClusterManager` (sessions on a Ray cluster), not yet
    entered: the app enters and exits it.  ``token`` (default ``$TURNGRAPH_API_TOKEN``) turns on
    bearer authentication.  ``max_body`` caps request bodies (413 above it); ``grace``
    is how long shutdown waits for running turns before cancelling them.
    ``max_sessions`` bounds the sessions hosted at once (idle ones are closed to make
    room; a turn beyond it with every hosted session busy answers 429).
    ``dialect`` reads ``graph`` in that dialect (``"attractor"``: :mod:`engine.attractor`;
    default: the graph's own ``dialect=`` attribute).  ``allow_shell`` lets ``shell``
    nodes (Attractor's ``tool_command``) run their commands; off by default, whatever
    the graph says (``manager`` replaces both, as it does ``store``, ``llm`` and ``graph``).
    """
    token = token if token is not None else os.environ.get(TOKEN_ENV) or None
    st = ServerState(
        manager or _manager(store, llm, graph, max_sessions, dialect, allow_shell),
        token=token.encode() if token else None,
        max_body=max_body,
        grace=grace,
    )
    _publish_timeouts(st)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            try:
                await stack.enter_async_context(st.manager)
            except TurngraphError as exc:  # e.g. a store folder that does not exist
                # Kept for the server to report as one line (engine.server.run); the
                # app answers 503 meanwhile, never a traceback.
                st.startup_error = exc
                yield
                return
            tg = st.tg = await stack.enter_async_context(anyio.create_task_group())
            try:
                yield
            finally:
                st.draining = True
                with anyio.move_on_after(st.grace, shield=True):
                    await st.wait_idle()
                st.tg = None
                tg.cancel_scope.cancel()  # past the grace: a cancelled turn stores nothing
                timers = _gate_timers(st)
                if timers is not None:  # and so do timed-out gates' turns (manager's tasks)
                    timers.close()

    # A typed error is an answer; any other exception is a bug, answered with a fixed
    # message by Starlette's outermost layer, which also logs its traceback (server-side).
    handlers: dict[Any, Any] = {
        TurngraphError: _on_error,
        HTTPException: _on_error,
        Exception: _on_error,
    }
    app = Starlette(
        routes=[
            *turns.ROUTES,
            *sessions.ROUTES,
            *graphs.ROUTES,
            *health.ROUTES,
            *ui.ROUTES,
            *live.ROUTES,
            *heartbeats.ROUTES,
        ],
        exception_handlers=handlers,
        lifespan=lifespan,
    )
    app.state.turngraph = st
    if st.token is not None:
        app.add_middleware(BearerAuth, token=st.token)
    return app
