"""The web trace viewer: server-rendered pages, no JavaScript (the live page of
:mod:`engine.server.routes.live` has a short script).

* ``/`` — the sessions, with a search box (``?q=`` matches id or agent, any case; each
  request examines a bounded window of sessions and links to where it stopped);
* ``/ui/sessions/{id}`` — one conversation, its messages grouped by turn;
* ``/ui/sessions/{id}/turns/{n}`` — one turn: its graph drawn by Graphviz with the path
  the turn took highlighted (:func:`engine.cli.trace_dot.traced_dot`, parallel branches
  each on its own path) and a table of each node visit (its parallel branch when the turn
  had any, handler, status, attempts, duration, and the context keys it changed when its
  trace records them).

Pages read the store only (no lease is taken).  An error is a page with the same
status the JSON API would answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from functools import wraps
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine.cli.trace_dot import node_state, traced_dot
from engine.errors import TurngraphError
from engine.graph import Graph
from engine.server.draw import draw_svg
from engine.server.errors import NotFound, status_of
from engine.server.html import esc, link, page, path_part, table
from engine.server.http import page as paging
from engine.server.http import path_number, state
from engine.server.routes.graphs import graphs_of
from engine.server.routes.sessions import search, session_id
from sessions.store.base import Checkpoint, Message, SessionMatch, SessionMeta, Store, TurnRecord

__all__ = ["ROUTES", "graph_for", "html_errors", "svg_body", "visits_table", "waiting_box", "when"]

_SHOWN = 100  # rows on one page

Handler = Callable[[Request], Awaitable[Response]]


def html_errors(fn: Handler) -> Handler:
    """A typed error as a short HTML page with its API status (never a traceback)."""

    @wraps(fn)
    async def run(request: Request) -> Response:
        try:
            return await fn(request)
        except TurngraphError as exc:
            body = f'<p class="fail">{esc(type(exc).__name__)}: {esc(exc)}</p>'
            return page("error", body, status_of(exc))

    return run


def when(ts: float) -> str:
    """``ts`` (Unix seconds) as a UTC date and time."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ms(value: Any) -> str:
    return f"{float(value):.2f} ms"


def _session_href(sid: str) -> str:
    return f"/ui/sessions/{path_part(sid)}"


# --------------------------------------------------------------------------- sessions


@html_errors
async def sessions_page(request: Request) -> Response:
    """``GET /?q=&after=&offset=``: the sessions, filtered by ``q`` (id or agent, any
    case), from the cursor ``after``.  A search examines at most ``SCAN`` sessions after
    ``after`` per request and links to where it stopped, so a rare match never reads
    the whole store at once; unfiltered, each page links to the next by its cursor."""
    offset, _ = paging(request)
    q = request.query_params.get("q", "").strip()
    store = state(request).manager.store
    after = request.query_params.get("after", "")
    metas, next_ = await search(store, SessionMatch(text=q, after=after), offset, _SHOWN)
    rows = [
        [
            link(_session_href(m.id), m.id),
            esc(m.agent_id),
            esc(m.type),
            esc(m.turn_count),
            esc(m.message_count),
            esc(when(m.updated_at)),
        ]
        if not m.tampered
        else [esc(m.id), '<span class="fail">tampered</span>', "", "", "", ""]
        for m in metas
    ]
    form = (
        '<form method="get" action="/"><input type="search" name="q" '
        f'value="{esc(q)}" placeholder="session id or agent"> <button>search</button></form>'
    )
    shown = table(["session", "agent", "type", "turns", "messages", "updated"], rows)
    return page("sessions", form + shown + _more(q, after, metas, next_))


def _more(q: str, after: str, metas: Sequence[SessionMeta], next_: str | None) -> str:
    """What follows the table: the next page's link, or where a search stopped."""
    if not q:
        if next_ is not None:
            return link(f"/?after={path_part(next_)}", "next page")
        return '<p class="muted">no sessions</p>' if not metas else ""
    if next_ is None:
        if metas:
            return ""
        return f'<p class="muted">no {"more " if after else ""}sessions match</p>'
    further = link(f"/?q={path_part(q)}&after={path_part(next_)}", "more…")
    if len(metas) == _SHOWN:
        return further
    return f'<p class="muted">searched sessions up to {esc(next_)}; {further}</p>'


# --------------------------------------------------------------------------- session


@html_errors
async def session_page(request: Request) -> Response:
    """``GET /ui/sessions/{id}?offset=``: the conversation, messages grouped by turn
    (the latest ``_SHOWN`` messages unless ``offset`` says where to start)."""
    sid = session_id(request)
    store = state(request).manager.store
    loaded = await store.load(sid, recent=0)
    meta = loaded.meta
    raw = request.query_params.get("offset")
    offset = paging(request)[0] if raw is not None else max(0, meta.message_count - _SHOWN)
    msgs = await store.messages(sid, offset, _SHOWN)
    numbers = sorted({m.turn for m in msgs if m.turn > 0})
    records: dict[int, TurnRecord] = {}
    if numbers:
        found = await store.turns(sid, numbers[0] - 1, numbers[-1] - numbers[0] + 1)
        records = {r.turn: r for r in found}
    parts = [
        f"<p>agent {esc(meta.agent_id)} · {esc(meta.type)} · {esc(meta.turn_count)} turns · "
        f"{esc(meta.message_count)} messages · updated {esc(when(meta.updated_at))} · "
        f"{link(f'{_session_href(sid)}/live', 'live: send a turn, watch it run')} · "
        f"{link(f'{_session_href(sid)}/heartbeats', 'heartbeat runs')}</p>"
    ]
    parts.append(waiting_box(sid, loaded.checkpoint))
    if offset > 0:
        back = max(0, offset - _SHOWN)
        parts.append(f"<p>{link(f'{_session_href(sid)}?offset={back}', 'earlier messages')}</p>")
    current = -1
    for m in msgs:
        if m.turn != current:
            current = m.turn
            parts.append(_turn_heading(sid, current, records.get(current)))
        parts.append(f'<div class="msg {esc(m.role)}"><b>{esc(m.role)}</b>: {esc(m.content)}</div>')
    if offset + _SHOWN < meta.message_count:
        later = f"{_session_href(sid)}?offset={offset + _SHOWN}"
        parts.append(f"<p>{link(later, 'later messages')}</p>")
    return page(f"session {sid}", "".join(parts))


def _turn_heading(sid: str, n: int, record: TurnRecord | None) -> str:
    if n == 0:
        return "<h3>outside turns</h3>"
    title = link(f"{_session_href(sid)}/turns/{n}", f"turn {n}")
    if record is None:
        return f"<h3>{title}</h3>"
    total = sum(float(v.get("duration_ms", 0.0)) for v in record.trace)
    cls = "fail" if record.status != "success" else ""
    return (
        f'<h3 class="{cls}">{title} · {esc(record.status)} · {len(record.trace)} nodes · '
        f"{esc(_ms(total))}</h3>"
    )


# --------------------------------------------------------------------------- turn


@html_errors
async def turn_page(request: Request) -> Response:
    """``GET /ui/sessions/{id}/turns/{n}``: the turn's path on its graph, its visits."""
    sid = session_id(request)
    n = path_number(request, "turn", "turn")
    store = state(request).manager.store
    found = await store.turns(sid, n - 1, 1)
    if not found:
        cp = (await store.load(sid, recent=0)).checkpoint  # or SessionNotFound
        if cp is not None and cp.kind == "paused" and cp.turn == n:
            return await _paused_page(request, sid, cp)
        raise NotFound(f"session {sid!r}: no turn {n} (not committed)")
    record = found[0]
    graph, note = graph_for(graphs_of(request), record.graph_hash)
    svg = await draw_svg(traced_dot(graph, record.trace), f"turn {n} of session {sid!r}")
    said = await _turn_messages(store, sid, n)
    total = sum(float(v.get("duration_ms", 0.0)) for v in record.trace)
    parts = [
        f"<p>{link(_session_href(sid), f'session {sid}')} · status <b>{esc(record.status)}</b>"
        f" · {len(record.trace)} node visits · {esc(_ms(total))} · {esc(when(record.ts))}"
        f" · trace {esc(record.trace_id)}</p>",
    ]
    if record.error:
        parts.append(f'<p class="fail">error: {esc(record.error)}</p>')
    parts += [
        f'<div class="msg {esc(m.role)}"><b>{esc(m.role)}</b>: {esc(m.content)}</div>' for m in said
    ]
    if note:
        parts.append(f'<p class="muted">{esc(note)}</p>')
    # Graphviz's SVG is markup we asked for: node labels inside it are escaped by dot.
    parts.append(f'<div class="graph">{svg_body(svg)}</div>')
    parts.append(visits_table(record.trace))
    return page(f"turn {n} of {sid}", "".join(parts))


async def _paused_page(request: Request, sid: str, cp: Checkpoint) -> Response:
    """A turn paused at a human gate: its path so far, the gate it waits at (yellow),
    the question and a button per choice."""
    graph, note = graph_for(graphs_of(request), cp.graph_hash)
    dot = traced_dot(graph, cp.trace, waiting=cp.next_node)
    svg = await draw_svg(dot, f"paused turn {cp.turn} of session {sid!r}")
    parts = [
        f"<p>{link(_session_href(sid), f'session {sid}')} · status <b>paused</b> · "
        f"{len(cp.trace)} node visits so far · trace {esc(cp.trace_id)}</p>",
        f'<div class="msg user"><b>user</b>: {esc(cp.input)}</div>',
        waiting_box(sid, cp),
    ]
    if note:
        parts.append(f'<p class="muted">{esc(note)}</p>')
    parts.append(f'<div class="graph">{svg_body(svg)}</div>')
    parts.append(visits_table(cp.trace))
    return page(f"turn {cp.turn} of {sid} (paused)", "".join(parts))


def waiting_box(sid: str, cp: Checkpoint | None) -> str:
    """What a paused turn asks, with a form button per choice (``POST
    /ui/sessions/{id}/answer``); empty unless the session waits at a gate."""
    if cp is None or cp.kind != "paused":
        return ""
    base = _session_href(sid)
    buttons = "".join(
        f'<button name="choice" value="{esc(c)}">{esc(c)}</button> ' for c in cp.choices
    )
    default = f" (default {esc(cp.default)} at {esc(when(cp.deadline))})" if cp.deadline else ""
    return (
        f'<div class="waiting msg" id="waiting"><b>waiting</b>: turn '
        f"{link(f'{base}/turns/{cp.turn}', cp.turn)} asks at gate <b>{esc(cp.next_node)}</b>: "
        f'<span class="question">{esc(cp.question)}</span>{default}'
        f'<form method="post" action="{esc(base)}/answer">'
        f'<input type="hidden" name="node" value="{esc(cp.next_node)}">{buttons}</form></div>'
    )


def graph_for(
    graphs: Mapping[str, Graph], graph_hash: str, name: str = "turn"
) -> tuple[Graph, str]:
    """The server's graph a run ran on (by content hash); else its ``name`` graph, and
    a note saying the drawing is of today's graph."""
    for graph in graphs.values():
        if graph.source_hash == graph_hash:
            return graph, ""
    graph = graphs[name]
    return graph, (
        f"the run was on graph {graph_hash[:12] or '?'}, which this server no longer has; "
        f"drawn on its current {name} graph {graph.source_hash[:12]}"
    )


def svg_body(svg: bytes) -> str:
    """The ``<svg>`` element alone (Graphviz writes an XML prolog and a doctype first)."""
    text = svg.decode()
    start = text.find("<svg")
    return text[start:] if start >= 0 else ""


async def _turn_messages(store: Store, sid: str, n: int) -> list[Message]:
    """The messages turn ``n`` wrote.  Turns write messages in order, so the first one
    is found by bisecting ``seq`` on the turn number (a few reads even for a long
    session); messages outside turns (turn 0) sort first."""
    lo, hi = 0, (await store.load(sid, recent=0)).meta.message_count
    while lo < hi:
        mid = (lo + hi) // 2
        probe = await store.messages(sid, mid, 1)
        if probe and probe[0].turn < n:
            lo = mid + 1
        else:
            hi = mid
    window = await store.messages(sid, lo, 32)
    return [m for m in window if m.turn == n]


def visits_table(trace: Sequence[Mapping[str, Any]]) -> str:
    """The node visits of a trace as a table (a failed visit's row red, a retried one's
    amber), with a ``branch`` column when the run had parallel branches and a ``context
    keys changed`` column when the trace records them."""
    changed = any("changed" in v for v in trace)  # traces stored before it have none
    branched = any(v.get("branch") for v in trace)
    head = ["#", "node"] + (["branch"] if branched else [])
    head += ["handler", "status", "attempts", "duration"]
    head += ["context keys changed"] if changed else []
    head += ["model", "tokens in/out", "reason"]
    rows, classes = [], []
    for i, v in enumerate(trace, start=1):
        state_ = node_state([v])
        row = [esc(i), f'<span class="node" id="visit-{i}">{esc(v.get("id"))}</span>']
        if branched:  # parallel branches side by side: which one each visit ran in
            row.append(esc(v.get("branch") or ""))
        row += [
            esc(v.get("handler", "")),
            esc(v.get("status", "")),
            esc(v.get("attempts", 1)),
            esc(_ms(v.get("duration_ms", 0.0))),
        ]
        if changed:
            row.append(esc(", ".join(map(str, v.get("changed", ())))))
        tokens = f"{v['input_tokens']}/{v['output_tokens']}" if "input_tokens" in v else ""
        row += [esc(v.get("model", "")), esc(tokens), esc(v.get("reason", ""))]
        rows.append(row)
        classes.append({"tg-failed": "fail", "tg-retried": "retry"}.get(state_, ""))
    return "<h2>node visits</h2>" + table(head, rows, classes)


ROUTES = [
    Route("/", sessions_page, methods=["GET"]),
    Route("/ui/sessions/{session_id}", session_page, methods=["GET"]),
    Route("/ui/sessions/{session_id}/turns/{n}", turn_page, methods=["GET"]),
]
