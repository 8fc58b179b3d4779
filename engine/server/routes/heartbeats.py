"""The trace viewer's heartbeat pages: a session's latest heartbeat runs, and each run's
path on the heartbeat graph.

* ``/ui/sessions/{id}/heartbeats`` — the runs (number, status, nodes, time, error);
* ``/ui/sessions/{id}/heartbeats/{n}`` — run ``n``: the heartbeat graph drawn by
  Graphviz with the path highlighted as on a turn's page, and its node-visit table;
* ``GET /sessions/{id}/heartbeats`` — the same runs as JSON.

Heartbeat runs are not stored: a session keeps its latest
:data:`~sessions.heartbeat.HEARTBEAT_RUNS_KEPT` in memory
(:attr:`sessions.heartbeat.Heartbeat.recent`), so these pages show the runs of sessions
this server hosts now, since it began hosting them.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine.cli.trace_dot import traced_dot
from engine.server.draw import draw_svg
from engine.server.errors import NotFound
from engine.server.html import esc, link, page, path_part, table
from engine.server.http import json, path_number, state
from engine.server.routes.graphs import graphs_of
from engine.server.routes.sessions import session_id
from engine.server.routes.ui import graph_for, html_errors, svg_body, visits_table, when
from sessions import Session
from sessions.heartbeat import HeartbeatTrace

__all__ = ["ROUTES", "hosted"]


def hosted(request: Request, sid: str) -> Session | None:
    """The session ``sid`` if this server hosts it now (nothing is loaded)."""
    return next((s for s in state(request).manager.live if s.id == sid), None)


def _runs(request: Request, sid: str) -> list[HeartbeatTrace]:
    session = hosted(request, sid)
    if session is None:
        raise NotFound(
            f"session {sid!r} is not hosted by this server: heartbeat runs are kept in "
            "memory by the process hosting the session, not stored"
        )
    return list(session.heartbeat.recent)


def _ms(run: HeartbeatTrace) -> str:
    return f"{sum(float(v.get('duration_ms', 0.0)) for v in run.trace):.2f} ms"


@html_errors
async def heartbeats_page(request: Request) -> Response:
    """``GET /ui/sessions/{id}/heartbeats``: the session's latest heartbeat runs."""
    sid = session_id(request)
    runs = _runs(request, sid)
    base = f"/ui/sessions/{path_part(sid)}"
    rows = [
        [
            link(f"{base}/heartbeats/{r.run}", f"run {r.run}"),
            esc(r.status),
            esc(len(r.trace)),
            esc(_ms(r)),
            esc(when(r.ts)),
            esc(r.error or ""),
        ]
        for r in reversed(runs)
    ]
    classes = ["fail" if r.status != "success" else "" for r in reversed(runs)]
    body = (
        f"<p>{link(base, f'session {sid}')} · the latest heartbeat runs, newest first "
        "(kept in memory while this server hosts the session)</p>"
        + table(["run", "status", "nodes", "duration", "ended", "error"], rows, classes)
        + ('<p class="muted">no heartbeat has run yet</p>' if not rows else "")
    )
    return page(f"heartbeats of {sid}", body)


@html_errors
async def heartbeat_page(request: Request) -> Response:
    """``GET /ui/sessions/{id}/heartbeats/{n}``: run ``n``'s path and node visits."""
    sid = session_id(request)
    n = path_number(request, "heartbeat run", "run")
    run = next((r for r in _runs(request, sid) if r.run == n), None)
    if run is None:
        raise NotFound(f"session {sid!r}: no heartbeat run {n} kept")
    graphs = graphs_of(request)
    if "heartbeat" not in graphs:
        raise NotFound("this server runs no heartbeat graph")
    graph, note = graph_for(graphs, run.graph_hash, "heartbeat")
    svg = await draw_svg(traced_dot(graph, run.trace), f"heartbeat {n} of session {sid!r}")
    base = f"/ui/sessions/{path_part(sid)}"
    parts = [
        f"<p>{link(base, f'session {sid}')} · {link(f'{base}/heartbeats', 'heartbeats')} · "
        f"status <b>{esc(run.status)}</b> · {len(run.trace)} node visits · {esc(_ms(run))}"
        f" · {esc(when(run.ts))}</p>"
    ]
    if run.error:
        parts.append(f'<p class="fail">error: {esc(run.error)}</p>')
    if note:
        parts.append(f'<p class="muted">{esc(note)}</p>')
    parts.append(f'<div class="graph">{svg_body(svg)}</div>')
    parts.append(visits_table(run.trace))
    return page(f"heartbeat {n} of {sid}", "".join(parts))


async def heartbeats_json(request: Request) -> Response:
    """``GET /sessions/{id}/heartbeats``: the latest heartbeat runs with their node
    traces, oldest first (404 when this server does not host the session)."""
    sid = session_id(request)
    return json({"session_id": sid, "runs": _runs(request, sid)})


ROUTES = [
    Route("/sessions/{session_id}/heartbeats", heartbeats_json, methods=["GET"]),
    Route("/ui/sessions/{session_id}/heartbeats", heartbeats_page, methods=["GET"]),
    Route("/ui/sessions/{session_id}/heartbeats/{n}", heartbeat_page, methods=["GET"]),
]
