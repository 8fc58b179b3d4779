"""Which edge a walk took: a node with several edges to one target records the one it
left by (``NodeRecord.edge``), the drawing lights only that edge, and traces stored
before the field existed still draw every edge between the two nodes."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio

from engine import Engine, HandlerRegistry, NodeStarted, Outcome
from engine.cli.trace_dot import traced_dot
from engine.loader import load_graph
from engine.testing import RecordingObserver, ScriptedHandler

DOT = """digraph twins {
    start [shape=Mdiamond]
    done [shape=Msquare]
    route [handler=route]
    start -> route
    route -> done [label=a, condition="context.mode=a"]
    route -> done [label=b, condition="context.mode=b"]
    route -> done [label=c, condition="context.mode=c"]
}
"""


async def _route(node: object, ctx: Mapping[str, Any]) -> Outcome:
    return Outcome("success", updates={"mode": "b"})


def _run(tmp_path: Path) -> tuple[Any, Any, RecordingObserver]:
    path = tmp_path / "twins.dot"
    path.write_text(DOT)
    reg = HandlerRegistry()
    reg.register("route", _route)
    for name in ("start", "done"):
        reg.register(name, ScriptedHandler())
    graph = load_graph(path, registry=reg)
    seen = RecordingObserver()
    result = anyio.run(lambda: Engine(reg).run(graph, {}, observers=[seen]))
    return graph, result, seen


def _taken(dot: str) -> list[str]:
    return [line for line in dot.splitlines() if "->" in line and "tg-taken" in line]


def test_the_record_names_the_edge_taken_and_only_it_is_drawn(tmp_path: Path) -> None:
    graph, result, seen = _run(tmp_path)
    route = next(r for r in result.trace if r.node_id == "route")
    b = next(e for e in graph.edges if e.label == "b")
    assert route.edge == b.index and route.to_dict()["edge"] == b.index
    assert result.trace[0].edge is None  # start has one edge to route: nothing to record
    taken = _taken(traced_dot(graph, [r.to_dict() for r in result.trace]))
    assert len(taken) == 2 and any("mode=b" in t for t in taken)
    assert not any("mode=a" in t or "mode=c" in t for t in taken)
    started = [e for e in seen.events if isinstance(e, NodeStarted) and e.node_id == "done"]
    assert started[0].edge == b.index  # the live page lights the same one


def test_a_trace_stored_without_edges_draws_every_edge_between_the_pair(tmp_path: Path) -> None:
    graph, result, _ = _run(tmp_path)
    old = [{k: v for k, v in r.to_dict().items() if k != "edge"} for r in result.trace]
    taken = _taken(traced_dot(graph, old))
    assert len([t for t in taken if re.search(r'"?route"? -> "?done"?', t)]) == 3
