"""Sub-graphs: a node with ``graph="other.dot"`` runs that graph as one step.

The path is relative to the parent file's directory (to the working directory for a
graph given as text).  Sub-graphs are loaded with their parent, at load time: a missing
file or a cycle of references (``a.dot`` → ``b.dot`` → ``a.dot``) is a
:class:`~engine.errors.GraphValidationError` naming the node, its file and line, and the
files of the cycle.  The child sees only what the node maps in (``inputs="a,b=c"``:
child ``a`` ← parent ``a``, child ``b`` ← parent ``c``) plus the read-only ``session.*``
turn values; only what it maps out (``outputs="reply,x=y"``: parent ``x`` ← child
``y``) comes back as the node's updates.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any, cast

import msgspec

from engine.errors import GraphError, GraphValidationError, Issue
from engine.events import Event, Observer, notify
from engine.graph import Graph, Node

__all__ = ["SUBGRAPH", "Prefixed", "attach_subgraphs", "child_context", "key_map", "outputs_of"]

SUBGRAPH = "subgraph"
"""The handler name of a node with a ``graph`` attribute (and no ``handler``)."""

Load = Callable[[str, tuple[str, ...]], Graph]


def key_map(node: Node, attr: str) -> tuple[tuple[str, str], ...]:
    """``(dest, source)`` pairs of a mapping attribute such as ``"a,b=c"``."""
    text = node.attrs.get(attr)
    if not isinstance(text, str):
        return ()
    pairs = []
    for part in text.split(","):
        dest, _, source = part.strip().partition("=")
        if dest.strip():
            pairs.append((dest.strip(), source.strip() or dest.strip()))
    return tuple(pairs)


def child_context(pairs: tuple[tuple[str, str], ...], ctx: Mapping[str, Any]) -> dict[str, Any]:
    """The child run's context: the session's turn values and the mapped inputs."""
    child = {k: v for k, v in ctx.items() if k.startswith("session.")}
    child.update((dest, ctx[source]) for dest, source in pairs if source in ctx)
    return child


def outputs_of(pairs: tuple[tuple[str, str], ...], child: Mapping[str, Any]) -> dict[str, Any]:
    """The parent's updates: the mapped outputs the child run set."""
    return {dest: child[source] for dest, source in pairs if source in child}


class Prefixed:
    """An observer that passes events on with ``prefix`` before their ``node_id``."""

    __slots__ = ("observers", "prefix")

    def __init__(self, observers: tuple[Observer, ...], prefix: str) -> None:
        self.observers = observers
        self.prefix = prefix

    def __call__(self, event: Event) -> None:
        """Rename the event's node (events without one pass unchanged)."""
        node_id = getattr(event, "node_id", None)
        if isinstance(node_id, str):
            new = self.prefix + node_id
            if isinstance(event, msgspec.Struct):
                event = msgspec.structs.replace(event, node_id=new)
            elif dataclasses.is_dataclass(event):
                event = dataclasses.replace(cast(Any, event), node_id=new)
        notify(self.observers, event)


def _issue(graph: Graph, node: Node, message: str) -> Issue:
    return Issue(
        "error", f"node {node.id!r}: {message}", graph.path, node.line, node.col, node=node.id
    )


def attach_subgraphs(graph: Graph, stack: tuple[str, ...], load: Load) -> Graph:
    """``graph`` with its sub-graphs loaded (``load(path, stack)``), or every problem raised."""
    here = os.path.abspath(graph.path) if graph.path != "<string>" else graph.path
    base = os.path.dirname(here) if here != "<string>" else os.getcwd()
    chain = (*stack, here)
    subs: dict[str, Graph] = {}
    issues: list[Issue] = []
    for node in graph.nodes.values():
        ref = node.attrs.get("graph")
        if not isinstance(ref, str):
            continue
        target = os.path.abspath(os.path.join(base, ref))
        if target in chain:
            cycle = " -> ".join((*chain[chain.index(target) :], target))
            issues.append(_issue(graph, node, f"sub-graph cycle: {cycle}"))
        elif not os.path.isfile(target):
            issues.append(_issue(graph, node, f"sub-graph file {ref!r} not found ({target})"))
        else:
            try:
                subs[node.id] = load(target, chain)
            except GraphValidationError as exc:
                first = exc.errors[0] if exc.errors else None
                issues.append(_issue(graph, node, f"sub-graph {ref!r}: {first or exc}"))
            except GraphError as exc:
                issues.append(_issue(graph, node, f"sub-graph {ref!r}: {exc}"))
    if issues:
        raise GraphValidationError(graph.path, tuple(issues))
    return replace(graph, subgraphs=MappingProxyType(subs))
