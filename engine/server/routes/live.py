"""Watching a session's turns as they run: the live page and its event stream.

* ``GET /sessions/{id}/live`` — Server-Sent Events: ``event: watching`` first, then the
  frames of the session's turns run by this server (:mod:`engine.server.live`), the
  running one's so far included, exactly as a streamed ``POST /sessions/{id}/turns``
  sends them (``RunStarted``, ``NodeStarted``, ``NodeCompleted``..., ``result``);
* ``GET /ui/sessions/{id}/live`` — the turn graph drawn by Graphviz and a small form;
  a short vanilla script (``EventSource``) marks each node running, then visited,
  retried or failed as its events arrive, draws the edges taken, fills a table of the
  visits, and shows the reply with a link to the committed turn's page;
* ``POST /ui/sessions/{id}/turns`` — the form without JavaScript: runs the turn and
  redirects (303) to its turn page; a form posted from another site's page is refused
  (403 ``CrossSite``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import anyio
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from engine.cli.trace_dot import FAILED, RETRIED, TAKEN, VISITED, WAITING, traced_dot
from engine.server.draw import draw_svg
from engine.server.errors import BadRequest, CrossSite
from engine.server.html import esc, link, page, path_part
from engine.server.http import read_body, state
from engine.server.routes.graphs import graphs_of
from engine.server.routes.sessions import session_id
from engine.server.routes.turns import answer_turn, item_frame, open_for_turn, run_turn
from engine.server.routes.ui import html_errors, svg_body, waiting_box
from engine.server.sse import frame
from engine.server.state import ServerState
from sessions.errors import SessionNotFound

__all__ = ["ROUTES", "RUNNING"]

RUNNING = "#ffd23f"
"""The fill of a node whose visit is under way (the other colours: the turn page's)."""

_TICK = 1.0  # seconds between checks that the server is not draining
_KEEPALIVE = 15  # ticks between SSE comments that keep idle proxies from closing

_CSS = f"""
#graph g.node.tg-running :is(polygon,ellipse,path){{fill:{RUNNING};stroke:#b58900;stroke-width:3}}
#graph g.node.tg-waiting :is(polygon,ellipse,path){{fill:{WAITING};stroke:{TAKEN};stroke-width:3}}
#question:empty{{display:none}}
#graph g.node.tg-visited :is(polygon,ellipse,path){{fill:{VISITED};stroke:{TAKEN};stroke-width:2.5}}
#graph g.node.tg-retried :is(polygon,ellipse,path){{fill:{RETRIED};stroke:{TAKEN};stroke-width:2.5}}
#graph g.node.tg-failed :is(polygon,ellipse,path){{fill:{FAILED};stroke:{FAILED};stroke-width:2.5}}
#graph g.edge.tg-taken path{{stroke:{TAKEN};stroke-width:3}}
#graph g.edge.tg-taken polygon{{fill:{TAKEN};stroke:{TAKEN}}}
#reply:empty{{display:none}}
"""

# Vanilla JavaScript, no framework: one EventSource, a map from node id to its SVG
# group (Graphviz writes each node's id as the <title> of its <g class="node">).
_SCRIPT = """
(() => {
  const root = document.getElementById("live");
  const svg = document.querySelector("#graph svg");
  const nodes = new Map(), edges = new Map();
  for (const g of svg ? svg.querySelectorAll("g.node, g.edge") : []) {
    const title = g.querySelector("title");
    if (!title) continue;
    const into = g.classList.contains("node") ? nodes : edges;
    into.set(title.textContent, [...(into.get(title.textContent) || []), g]);
  }
  const status = document.getElementById("status");
  const reply = document.getElementById("reply");
  const visits = document.getElementById("visits");
  const states = ["tg-running", "tg-visited", "tg-retried", "tg-failed", "tg-waiting"];
  const question = document.getElementById("question");
  let last = null;
  const mark = (id, state) => {
    for (const g of nodes.get(id) || []) { g.classList.remove(...states); g.classList.add(state); }
  };
  const row = (cells, cls) => {
    const tr = visits.insertRow();
    if (cls) tr.className = cls;
    for (const c of cells) tr.insertCell().textContent = c;
  };
  // An "error" without data is the connection's (EventSource reconnects by itself).
  const on = (name, fn) => watch.addEventListener(name, (e) => e.data && fn(JSON.parse(e.data)));
  const watch = new EventSource(root.dataset.watch);
  on("watching", () => { status.textContent = "watching: waiting for a turn"; });
  on("RunStarted", () => {
    for (const gs of [...nodes.values(), ...edges.values()])
      for (const g of gs) g.classList.remove(...states, "tg-taken");
    while (visits.rows.length > 1) visits.deleteRow(1);
    reply.textContent = ""; last = null; question.replaceChildren();
    status.textContent = "turn running";
  });
  on("NodeStarted", (d) => {
    // d.edge names the one edge taken when several join the same two nodes.
    const one = d.edge == null ? null : document.getElementById("tg-e" + d.edge);
    if (d.branch == null && last !== null)
      for (const g of one ? [one] : edges.get(last + "->" + d.node_id) || [])
        g.classList.add("tg-taken");
    if (d.branch == null) last = d.node_id;
    mark(d.node_id, "tg-running");
    status.textContent = "turn running: " + d.node_id;
  });
  on("NodeRetrying", (d) => mark(d.node_id, "tg-retried"));
  on("NodeCompleted", (d) => {
    mark(d.node_id, d.attempts > 1 ? "tg-retried" : "tg-visited");
    const ms = (d.duration * 1000).toFixed(2) + " ms";
    row([d.node_id, d.handler, d.status, d.attempts, ms, (d.changed || []).join(", ")],
        d.attempts > 1 ? "retry" : "");
  });
  on("NodeFailed", (d) => {
    mark(d.node_id, "tg-failed");
    const ms = (d.duration * 1000).toFixed(2) + " ms";
    row([d.node_id, d.handler, "fail", d.attempts, ms, ""], "fail");
  });
  on("RunPaused", (d) => {
    const one = last === null ? [] : edges.get(last + "->" + d.node_id) || [];
    for (const g of one) g.classList.add("tg-taken");
    mark(d.node_id, "tg-waiting");
    status.textContent = "paused at " + d.node_id + ": waiting for an answer";
  });
  // A paused turn's question, a button per choice (POST /sessions/{id}/answer).
  const ask = (q) => {
    question.replaceChildren();
    const b = document.createElement("b");
    b.textContent = "waiting at " + q.node + ": ";
    const text = document.createElement("span");
    text.className = "question";
    text.textContent = q.question + " ";
    question.append(b, text);
    for (const c of q.choices) {
      const button = document.createElement("button");
      button.textContent = c;
      button.addEventListener("click", async () => {
        const r = await fetch(root.dataset.answer, {
          method: "POST", headers: {"content-type": "application/json"},
          body: JSON.stringify({choice: c, node: q.node}),
        });
        if (!r.ok) status.textContent = "error: " + (await r.json()).error.message;
      });
      question.append(button, " ");
    }
  };
  on("TextDelta", (d) => { reply.textContent += d.text; });
  on("result", (d) => {
    reply.textContent = d.reply;
    status.textContent = "";
    const a = document.createElement("a");
    a.href = root.dataset.page + "/turns/" + d.turn;
    a.textContent = "turn " + d.turn;
    status.append(a, " · " + d.status + (d.error ? ": " + d.error : ""));
    if (d.question) ask(d.question);
  });
  on("error", (d) => { status.textContent = "error: " + d.error.message; });
  document.getElementById("send").addEventListener("submit", async (e) => {
    e.preventDefault();
    const text = e.target.elements.text.value;
    e.target.elements.text.value = "";
    const r = await fetch(root.dataset.post, {
      method: "POST",
      headers: {"content-type": "application/json", "accept": "text/event-stream"},
      body: JSON.stringify({text}),
    });
    const body = await r.text();  // the same frames the watcher gets; errors say why
    const bad = /event: error\\ndata: (.*)/.exec(body);
    if (r.ok && !bad) return;
    status.textContent = "error: " + (bad ? JSON.parse(bad[1]).error.message : r.status);
  });
})();
"""


@html_errors
async def live_page(request: Request) -> Response:
    """``GET /ui/sessions/{id}/live``: the turn graph, lit as the session's turns run."""
    sid = session_id(request)
    graph = graphs_of(request)["turn"]
    svg = await draw_svg(traced_dot(graph, ()), f"the turn graph of session {sid!r}")
    try:  # a session waiting at a gate shows its question (the page may come first)
        waiting = waiting_box(
            sid, (await state(request).manager.store.load(sid, recent=0)).checkpoint
        )
    except SessionNotFound:
        waiting = ""
    base = f"/ui/sessions/{path_part(sid)}"
    api = f"/sessions/{path_part(sid)}"
    body = (
        f'<main id="live" data-watch="{esc(api)}/live" data-post="{esc(api)}/turns" '
        f'data-answer="{esc(api)}/answer" '
        f'data-page="{esc(base)}"><style>{_CSS}</style>'
        f"<p>{link(base, f'session {sid}')} · turns run by this server light up here as "
        'they run (nodes: <span style="background:' + RUNNING + '">running</span>, '
        f'<span style="background:{VISITED}">visited</span>, '
        f'<span style="background:{RETRIED}">retried</span>, '
        f'<span style="background:{FAILED}">failed</span>)</p>'
        f'<form id="send" method="post" action="{esc(base)}/turns">'
        '<input name="text" size="60" placeholder="say something" required> '
        "<button>send</button></form>"
        '<p id="status" class="muted">connecting…</p>'
        '<div id="reply" class="msg assistant"></div><div id="question" class="msg">'
        f"{waiting}</div>"
        f'<div class="graph" id="graph">{svg_body(svg)}</div>'
        '<h2>node visits</h2><table id="visits"><tr><th>node</th><th>handler</th>'
        "<th>status</th><th>attempts</th><th>duration</th><th>context keys changed</th>"
        "</tr></table>"
        f"<script>{_SCRIPT}</script></main>"
    )
    return page(f"live: {sid}", body)


@html_errors
async def form_answer(request: Request) -> Response:
    """``POST /ui/sessions/{id}/answer`` (a form's ``choice``, and ``node``: the gate
    the page showed): answer the waiting question, then 303 to the turn's page."""
    sid = session_id(request)
    _same_site(request)
    st = state(request)
    fields = parse_qs((await read_body(request, st.max_body)).decode(errors="replace"))
    choice = (fields.get("choice") or [""])[0]
    shown = fields.get("node")  # the gate the page showed (none: whichever waits)
    node = shown[0] if shown else None
    result = await answer_turn(st, sid, choice, node)
    return RedirectResponse(f"/ui/sessions/{path_part(sid)}/turns/{result.turn}", 303)


@html_errors
async def form_turn(request: Request) -> Response:
    """``POST /ui/sessions/{id}/turns`` (a form's ``text``): run the turn, then 303 to
    its page."""
    sid = session_id(request)
    _same_site(request)
    st = state(request)
    fields = parse_qs((await read_body(request, st.max_body)).decode(errors="replace"))
    text = (fields.get("text") or [""])[0]
    if not text.strip():
        raise BadRequest("the form's text is empty")
    result = await run_turn(st, await open_for_turn(st, sid), text)
    return RedirectResponse(f"/ui/sessions/{path_part(sid)}/turns/{result.turn}", 303)


def _same_site(request: Request) -> None:
    """Refuse a form another site's page posts here (``CrossSite``, 403).

    A form post needs no CORS preflight, so without this any page a person visits could
    make their browser run turns on a server they reach (loopback, no token).  Browsers
    send ``Origin`` with every form post; a client that sends none is not a browser."""
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        raise CrossSite(f"a form posted from {origin!r}, not from this server's own pages")


async def watch(request: Request) -> Response:
    """``GET /sessions/{id}/live``: the session's turns as SSE frames (see the module)."""
    sid = session_id(request)
    return StreamingResponse(
        _watch_frames(state(request), sid),
        media_type="text/event-stream",
        headers={"cache-control": "no-store", "x-accel-buffering": "no"},
    )


async def _watch_frames(st: ServerState, sid: str) -> AsyncIterator[bytes]:
    """The frames of one watcher, until it leaves, falls too far behind (``event:
    dropped``, see :mod:`engine.server.live`), or the server drains with no turn left
    running (a watcher must not hold shutdown up for its whole grace)."""
    with st.live.watch(sid) as receive:
        yield frame("watching", {"session_id": sid})
        idle = 0
        while True:
            item: object = None
            try:
                with anyio.move_on_after(_TICK):
                    item = await receive.receive()
            except anyio.EndOfStream:  # it fell too far behind: the hub dropped it
                yield frame("dropped", {"reason": "the watcher fell behind; reconnect"})
                return
            if item is not None:
                idle = 0
                yield item_frame(sid, item)
            elif st.draining and not st.running:
                return
            else:
                idle += 1
                if idle % _KEEPALIVE == 0:
                    yield b": keepalive\n\n"


ROUTES = [
    Route("/sessions/{session_id}/live", watch, methods=["GET"]),
    Route("/ui/sessions/{session_id}/live", live_page, methods=["GET"]),
    Route("/ui/sessions/{session_id}/turns", form_turn, methods=["POST"]),
    Route("/ui/sessions/{session_id}/answer", form_answer, methods=["POST"]),
]
