"""A turn's path drawn on its graph: the nodes it visited, the edges it took, its failure.

Both the web trace viewer (``/ui/sessions/{id}/turns/{n}``) and ``python -m engine.run
render GRAPH --trace SESSION:TURN`` draw this DOT with Graphviz, so the picture is the
same in both.  Each marked node and edge also gets an SVG ``id`` and ``class``
(``tg-visited``, ``tg-retried``, ``tg-failed``; ``tg-taken`` on edges), so a page or a
test can find them in the SVG.

Parallel branches are drawn as they ran, side by side: a visit recorded in a branch
follows the previous visit of its own branch (its first visit follows the fan-out), the
visit after a join follows the last visit of every branch that did not fail, and a node
visited inside a branch says so in its label (``branch a``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from engine.cli.views import graph_to_dot
from engine.graph import Graph, Value

__all__ = ["node_state", "traced_dot"]

VISITED = "#d8ecff"
RETRIED = "#ffe3a3"
FAILED = "#ff6b6b"
TAKEN = "#1f6feb"
WAITING = "#ffd23f"

_FILL = {"tg-visited": VISITED, "tg-retried": RETRIED, "tg-failed": FAILED}
_FAILING = ("fail",)


def node_state(visits: Sequence[Mapping[str, Any]]) -> str:
    """``tg-failed`` when a visit failed, else ``tg-retried`` when one took more than
    one attempt, else ``tg-visited``."""
    if any(v.get("status") in _FAILING for v in visits):
        return "tg-failed"
    if any(int(v.get("attempts", 1)) > 1 for v in visits):
        return "tg-retried"
    return "tg-visited"


def _node_marks(visits: Sequence[Mapping[str, Any]], node_id: str) -> dict[str, Value]:
    state = node_state(visits)
    attempts = sum(int(v.get("attempts", 1)) for v in visits)
    notes = [f"visited {len(visits)}x"] if len(visits) > 1 else []
    branches = sorted({str(v["branch"]) for v in visits if v.get("branch")})
    if branches:
        notes.append(f"branch {', '.join(branches)}")
    if attempts > len(visits):
        notes.append(f"{attempts} attempts")
    marks: dict[str, Value] = {
        "style": "filled,bold",
        "fillcolor": _FILL[state],
        "penwidth": 2.5,
        "color": FAILED if state == "tg-failed" else TAKEN,
        "id": f"{state}-{node_id}",
        "class": state,
    }
    if state == "tg-retried":
        marks["peripheries"] = 2  # a double border: visible without colour too
    if notes:
        marks["xlabel"] = ", ".join(notes)
    return marks


def traced_dot(graph: Graph, trace: Sequence[Mapping[str, Any]], waiting: str | None = None) -> str:
    """``graph`` as DOT with the path of ``trace`` (stored node-visit dicts, in order)
    highlighted: visited nodes filled (red when failed, double-bordered when retried),
    the edges between consecutive visits drawn thick and blue.  Where a visit records
    the edge it left by (``edge``, kept when its node has several edges to one target)
    only that edge is drawn taken; else every edge between the two nodes (as traces
    stored before ``edge`` existed are drawn).  Every edge not taken gets the SVG id
    ``tg-e{index}``, so the live page can light the one a ``NodeStarted`` names.
    Visits of nodes the graph no longer has (it changed since the turn) are skipped.
    ``waiting``: the human gate a paused turn waits at, drawn yellow (``tg-waiting``)
    with the edge that led there."""
    visits: dict[str, list[Mapping[str, Any]]] = {}
    for visit in trace:
        visits.setdefault(str(visit.get("id")), []).append(visit)
    node_marks = {nid: _node_marks(vs, nid) for nid, vs in visits.items() if nid in graph.nodes}
    edge_marks: dict[tuple[str, str] | int, dict[str, Value]] = {}
    by_index = {e.index: e for e in graph.edges}
    steps = list(trace)
    if waiting is not None and waiting in graph.nodes:
        node_marks[waiting] = {
            "style": "filled,bold",
            "fillcolor": WAITING,
            "penwidth": 2.5,
            "color": TAKEN,
            "id": f"tg-waiting-{waiting}",
            "class": "tg-waiting",
        }
        steps.append({"id": waiting})
    for n, (visit, dst) in enumerate(_steps(steps), start=1):
        src = str(visit.get("id"))
        key: tuple[str, str] | int = (src, dst)
        index = visit.get("edge")
        edge = by_index.get(index) if isinstance(index, int) else None
        if edge is not None and (edge.src, edge.dst) == key:  # else the graph changed
            key = edge.index
        if key not in edge_marks:
            edge_marks[key] = {
                "color": TAKEN,
                "penwidth": 3,
                "id": f"tg-taken-{src}-{dst}",
                "class": "tg-taken",
                "taillabel": str(n),
            }
    for e in graph.edges:  # an id for every other edge, for the live page's script
        if e.index not in edge_marks and (e.src, e.dst) not in edge_marks:
            edge_marks[e.index] = {"id": f"tg-e{e.index}"}
    return graph_to_dot(graph, node_marks, edge_marks)


def _parent(branch: str | None) -> str | None:
    """The branch a branch was forked in (``a`` for ``a/x``; ``None`` at the top)."""
    if branch is None or "/" not in branch:
        return None
    return branch.rsplit("/", 1)[0]


def _steps(trace: Sequence[Mapping[str, Any]]) -> list[tuple[Mapping[str, Any], str]]:
    """The edges the visits of ``trace`` took, in visit order, branch by branch: each
    as (the visit it left, the id of the node it led to)."""
    last: dict[str | None, Mapping[str, Any]] = {}  # branch -> its latest visit
    steps: list[tuple[Mapping[str, Any], str]] = []
    for visit in trace:
        branch = visit.get("branch") or None
        dst = str(visit.get("id"))
        joined = [b for b in last if b is not None and _parent(b) == branch]
        if joined:  # the first visit after a join: every branch that finished leads here
            froms = [last.pop(b) for b in joined]
            steps += [(v, dst) for v in froms if v.get("status") != "fail"]
        else:
            before = last.get(branch, last.get(_parent(branch)))
            if before is not None:
                steps.append((before, dst))
        last[branch] = visit
    return steps
