"""The compiled, frozen form of a turn graph.

``engine.load_graph`` (in :mod:`engine.loader`) builds a :class:`Graph` from DOT text;
the runner compiles it once more into a per-registry plan.  Nothing here reads DOT:
a ``Graph`` is plain frozen data; its normalised ``networkx.MultiDiGraph`` is built on
request (:meth:`Graph.to_networkx`), so running a graph never imports networkx.

Attribute values are typed once at load (:data:`Value`): integers, floats, booleans,
durations as :class:`datetime.timedelta`, and strings with their escapes resolved.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import networkx as nx

    from engine.errors import Issue

__all__ = [
    "EMPTY_ATTRS",
    "Condition",
    "Edge",
    "Graph",
    "Node",
    "RetryPolicy",
    "Value",
    "build_networkx",
]

Value = str | int | float | bool | timedelta
"""A typed DOT attribute value."""

EMPTY_ATTRS: Mapping[str, Value] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Condition:
    """An edge condition compiled at load time.

    ``source`` is the text as written (``outcome=success && context.intent=question``);
    ``test`` is a pure function of the context mapping (the runner has put ``outcome``
    and ``preferred_label`` into it before edges are chosen).
    """

    source: str
    test: Callable[[Mapping[str, Any]], bool]

    def __call__(self, context: Mapping[str, Any]) -> bool:
        return self.test(context)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often, and how patiently, a node's retryable failures are tried again.

    Attempt ``n`` (1-based, the first retry is attempt 2) waits
    ``min(max_delay, initial_delay * factor ** (n - 2))`` seconds, multiplied by a
    random factor in ``[0.5, 1.0]`` when ``jitter`` is on ("equal jitter": spreads a
    herd of retries without ever waiting less than half the nominal delay).
    """

    max_retries: int = 0
    initial_delay: float = 0.2
    factor: float = 2.0
    max_delay: float = 30.0
    jitter: bool = True

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before ``attempt`` (2 = first retry)."""
        nominal = min(self.max_delay, self.initial_delay * self.factor ** max(0, attempt - 2))
        if self.jitter:
            nominal *= 0.5 + 0.5 * (rng or random).random()
        return nominal


NO_RETRY = RetryPolicy()


@dataclass(frozen=True, slots=True)
class Node:
    """One node of a graph, with its handler resolved and its policies typed.

    ``attrs`` holds every attribute as written (typed), including the ones that were
    lifted into fields, so handlers can read their own settings (``prompt``,
    ``template``...) from ``node.attrs``.
    """

    id: str
    handler: str
    attrs: Mapping[str, Value] = field(default_factory=lambda: EMPTY_ATTRS)
    line: int = 0
    col: int = 0
    label: str = ""
    shape: str = "box"
    retry: RetryPolicy = NO_RETRY
    timeout: float | None = None
    retry_target: str | None = None
    fallback_retry_target: str | None = None
    blocking: bool = False

    def get(self, key: str, default: Value | None = None) -> Value | None:
        """An attribute of this node, or ``default``."""
        return self.attrs.get(key, default)


@dataclass(frozen=True, slots=True)
class Edge:
    """One DOT edge (several between the same two nodes stay distinct).

    ``index`` is the edge's position in source order across the whole graph.
    """

    src: str
    dst: str
    index: int
    attrs: Mapping[str, Value] = field(default_factory=lambda: EMPTY_ATTRS)
    line: int = 0
    label: str = ""
    weight: float = 0
    condition: Condition | None = None


@dataclass(frozen=True, slots=True, eq=False)
class Graph:
    """A loaded, validated, immutable turn graph.

    Built only by :func:`engine.load_graph`; compare graphs by ``source_hash``.
    ``nodes`` keeps declaration order.  ``max_steps`` and ``default_retry`` come from
    graph attributes (``max_steps=``, ``default_max_retries=``, ``retry.*``).
    """

    name: str
    path: str
    source_hash: str
    attrs: Mapping[str, Value]
    nodes: Mapping[str, Node]
    edges: tuple[Edge, ...]
    start: str
    exits: frozenset[str]
    warnings: tuple[Issue, ...] = ()
    max_steps: int | None = None
    default_retry: RetryPolicy = NO_RETRY
    subgraphs: Mapping[str, Graph] = field(default_factory=lambda: MappingProxyType({}))
    """Node id → the graph its ``graph=`` attribute names (:mod:`engine.subgraphs`)."""

    def out_edges(self, node_id: str) -> tuple[Edge, ...]:
        """Edges leaving ``node_id`` in source order (a graph query: not for hot paths)."""
        return tuple(e for e in self.edges if e.src == node_id)

    def to_networkx(self) -> nx.MultiDiGraph:
        """The normalised graph as a fresh ``networkx.MultiDiGraph``.

        Graph attributes are in ``.graph``; node and edge attributes are typed; there is
        one edge per DOT edge, in source order, keyed by its ``index``.
        """
        return build_networkx(self.attrs, self.nodes, self.edges)


def build_networkx(
    attrs: Mapping[str, Value], nodes: Mapping[str, Node], edges: tuple[Edge, ...]
) -> nx.MultiDiGraph:
    """The normalised MultiDiGraph: typed attributes, one keyed edge per DOT edge."""
    import networkx as nx  # only validation and to_networkx() need it

    graph = nx.MultiDiGraph()
    graph.graph.update(attrs)
    graph.add_nodes_from((node.id, dict(node.attrs)) for node in nodes.values())
    graph.add_edges_from((e.src, e.dst, e.index, dict(e.attrs)) for e in edges)
    return graph
