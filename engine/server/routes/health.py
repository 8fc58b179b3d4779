"""``/healthz`` (the process answers) and ``/readyz`` (its store answers, and it is not
draining); and ``/openapi.json``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine.errors import TurngraphError
from engine.server.errors import ShuttingDown, StoreUnavailable
from engine.server.http import json, state
from engine.server.openapi import document

__all__ = ["ROUTES"]


async def healthz(request: Request) -> Response:
    """``GET /healthz``: 200 while the process serves."""
    return json({"status": "ok"})


async def readyz(request: Request) -> Response:
    """``GET /readyz``: 200 when the store answers a read; 503 when it does not
    (``StoreError``) or the server is draining (``ShuttingDown``)."""
    st = state(request)
    if st.draining:
        raise ShuttingDown("the server is shutting down")
    try:
        await st.manager.store.list_sessions(0, 1)
    except TurngraphError:
        raise
    except Exception as exc:  # a driver's own error (connection refused...): name its type only
        raise StoreUnavailable(f"the store is not reachable ({type(exc).__name__})") from None
    return json({"status": "ready", "sessions_live": len(st.manager.live), "turns": st.running})


async def openapi(request: Request) -> Response:
    """``GET /openapi.json``: the API described as OpenAPI 3.1."""
    return json(document())


ROUTES = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
]
