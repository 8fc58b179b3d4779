"""The turngraph HTTP API (``python -m engine.run serve``; the ``serve`` extra).

A thin client of :class:`~sessions.SessionManager`, at the top layer beside the
command line: :func:`create_app` builds the Starlette app, :mod:`engine.server.run`
serves it with uvicorn and drains it on SIGTERM.  Routes live one resource a module
in :mod:`engine.server.routes`; :mod:`engine.server.errors` maps typed errors to
statuses; :mod:`engine.server.sse` writes turn events as Server-Sent Events.
"""

from __future__ import annotations

from engine.server.app import MAX_BODY, MAX_SESSIONS, TOKEN_ENV, create_app

__all__ = ["MAX_BODY", "MAX_SESSIONS", "TOKEN_ENV", "create_app"]
