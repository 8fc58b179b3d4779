"""A compiled graph as pydot objects: pydot stays turngraph's DOT object model.

turngraph reads DOT with its own linear reader (:mod:`engine.dot`; the README says why),
but pydot, the DOT library the product brief names, is still the object model offered
to callers who want to inspect, change or write a graph with DOT tools.
:func:`to_pydot` builds the ``pydot.Dot`` of a compiled :class:`~engine.graph.Graph`:
defaults applied, subgraphs flattened, values written back as DOT text.  Ids and
values are stored quoted, as pydot's own parser stores them, with
:func:`engine.dot_write.quote`, so ``to_pydot(graph).to_string()`` is DOT that
Graphviz, pydot and :func:`engine.load_graph` all read back as the same graph
(``\\l`` and ``\\r`` line ends included).  This is the only module that imports pydot,
and only when called.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from engine.dot_write import quote, value_text

if TYPE_CHECKING:
    import pydot

    from engine.graph import Graph, Value

__all__ = ["to_pydot"]


def _quoted(attrs: Mapping[str, Value]) -> dict[str, Any]:
    # Quoted keys also keep an attribute called ``name`` or ``obj_dict`` from meeting
    # pydot's own keyword parameters.
    return {quote(k): quote(value_text(v)) for k, v in attrs.items()}


def to_pydot(graph: Graph) -> pydot.Dot:
    """``graph`` as a ``pydot.Dot`` digraph (nodes in order, every edge kept, parallel
    ones included), with quoted ids and values as pydot's parser would hold them."""
    import pydot

    dot = pydot.Dot(quote(graph.name or "turn"), graph_type="digraph")
    for key, value in _quoted(graph.attrs).items():
        dot.set(key, value)
    for node in graph.nodes.values():
        dot.add_node(pydot.Node(quote(node.id), **_quoted(node.attrs)))
    for edge in graph.edges:
        dot.add_edge(pydot.Edge(quote(edge.src), quote(edge.dst), **_quoted(edge.attrs)))
    return dot
