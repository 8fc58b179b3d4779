"""``/graphs``: the graphs the server runs, and each drawn as SVG by Graphviz.

The picture is the same normalised DOT ``python -m engine.run render`` writes
(:func:`engine.cli.views.graph_to_dot`), laid out by Graphviz's ``dot`` program; with
no ``dot`` installed the SVG route answers 503 (``GraphvizMissing``).
"""

from __future__ import annotations

import shutil
import subprocess

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine.cli.views import graph_to_dot
from engine.graph import Graph
from engine.server.errors import GraphvizMissing, NotFound
from engine.server.http import json, state

__all__ = ["ROUTES"]


def _graphs(request: Request) -> dict[str, Graph]:
    manager = state(request).manager
    found = {"turn": manager.turn_graph}
    if manager.heartbeat_graph is not None:
        found["heartbeat"] = manager.heartbeat_graph
    return found


async def list_graphs(request: Request) -> Response:
    """``GET /graphs``: each graph's name, file, content hash, nodes and SVG address."""
    return json(
        {
            "graphs": [
                {
                    "name": name,
                    "path": graph.path,
                    "hash": graph.source_hash,
                    "nodes": list(graph.nodes),
                    "svg": f"/graphs/{name}.svg",
                }
                for name, graph in _graphs(request).items()
            ]
        }
    )


async def graph_svg(request: Request) -> Response:
    """``GET /graphs/{name}.svg``: the graph drawn by Graphviz."""
    name = request.path_params["name"]
    graph = _graphs(request).get(name)
    if graph is None:
        raise NotFound(f"graph {name!r}: no such graph (see /graphs)")
    exe = shutil.which("dot")
    if exe is None:
        raise GraphvizMissing("drawing a graph needs Graphviz's `dot` program; install graphviz")
    proc = await anyio.run_process(
        [exe, "-Tsvg"], input=graph_to_dot(graph).encode(), check=False, stderr=subprocess.PIPE
    )
    if proc.returncode != 0:
        raise GraphvizMissing(f"dot failed to draw graph {name!r} (exit {proc.returncode})")
    return Response(proc.stdout, media_type="image/svg+xml")


ROUTES = [
    Route("/graphs", list_graphs, methods=["GET"]),
    Route("/graphs/{name}.svg", graph_svg, methods=["GET"]),
]
