"""The graphs turngraph ships (``turn.dot``, ``tool_turn.dot``, ``heartbeat.dot``), read
as package data with :mod:`importlib.resources`, so they are found wherever the package
is installed (a source tree, site-packages, a zip)::

    from engine import load_graph
    from graphs import graph_source

    graph = load_graph(graph_source("turn.dot"))
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

__all__ = ["NAMES", "graph_source", "resource"]

NAMES = ("turn.dot", "tool_turn.dot", "heartbeat.dot")
"""The file names of the shipped graphs."""


def resource(name: str) -> Traversable:
    """The shipped graph ``name`` (e.g. ``"turn.dot"``) as a resource.

    Raises ``FileNotFoundError`` naming the graph when no such graph ships.
    """
    res = files(__name__).joinpath(name)
    if name not in NAMES or not res.is_file():
        raise FileNotFoundError(f"turngraph ships no graph named {name!r} (one of {NAMES})")
    return res


def graph_source(name: str) -> str:
    """What :func:`engine.load_graph` takes for the shipped graph ``name``: the path of a
    real file when the package lies on disk (so messages name it), else its DOT text
    (a resource inside a zip is no file)."""
    res = resource(name)
    if isinstance(res, Path):
        return str(res)
    return res.read_text(encoding="utf-8")
