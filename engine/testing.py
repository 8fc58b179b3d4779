"""Helpers for testing pipelines and handlers: a recording observer, scripted handlers,
and a tiny graph builder that needs no DOT.

These ship with the package so users can test their own handlers the way we test ours.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from engine.events import Event
from engine.graph import Condition, Edge, Graph, Node
from engine.outcome import Outcome

__all__ = ["RecordingObserver", "ScriptedHandler", "build_graph"]


class RecordingObserver:
    """An observer that keeps every event, for assertions."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def kinds(self) -> list[str]:
        """Event class names in order (``["RunStarted", "NodeStarted", ...]``)."""
        return [type(e).__name__ for e in self.events]

    def of_type(self, cls: type[Any]) -> list[Any]:
        """The events that are instances of ``cls``."""
        return [e for e in self.events if isinstance(e, cls)]


class ScriptedHandler:
    """A handler that plays back a script: each call returns (or raises) the next item.

    The last item repeats once the script runs out.  ``calls`` counts invocations and
    ``seen`` keeps a snapshot of the context each call saw.
    """

    def __init__(self, *script: Outcome | Mapping[str, Any] | BaseException | None) -> None:
        self.script = list(script) or [None]
        self.calls = 0
        self.seen: list[dict[str, Any]] = []

    async def __call__(self, node: Node, context: Mapping[str, Any]) -> Any:
        item = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        self.seen.append(dict(context))
        if isinstance(item, BaseException):
            raise item
        return item


def build_graph(
    chain: Sequence[str],
    *,
    extra_edges: Iterable[tuple[str, str, Mapping[str, Any]]] = (),
    nodes: Mapping[str, Mapping[str, Any]] | None = None,
    exits: Iterable[str] | None = None,
    max_steps: int | None = None,
) -> Graph:
    """A Graph without DOT: a chain of node ids, plus extra edges and node fields.

    Each extra edge is ``(src, dst, options)`` with optional ``label``, ``weight`` and
    ``condition`` (a ``Condition`` or a ``(source, test)`` pair).  ``nodes`` maps a node
    id to :class:`Node` field overrides (``handler``, ``retry``, ``timeout``...); a node's
    handler defaults to its id.  The exits default to the chain's last node.  No
    validation happens here: it is for testing the runner, not the loader.
    """
    spec = dict(nodes or {})
    ids: list[str] = list(dict.fromkeys([*chain, *[x for s, d, _ in extra_edges for x in (s, d)]]))
    built = {i: Node(**{"id": i, "handler": i, **spec.get(i, {})}) for i in ids}
    edges: list[Edge] = [Edge(a, b, k) for k, (a, b) in enumerate(itertools.pairwise(chain))]
    for src, dst, opts in extra_edges:
        cond = opts.get("condition")
        if isinstance(cond, tuple):
            cond = Condition(*cond)
        edges.append(
            Edge(
                src,
                dst,
                len(edges),
                label=str(opts.get("label", "")),
                weight=int(opts.get("weight", 0)),
                condition=cond,
            )
        )
    return Graph(
        name="test",
        path="<test>",
        source_hash=f"test-{id(built)}",
        attrs=MappingProxyType({}),
        nodes=MappingProxyType(built),
        edges=tuple(edges),
        start=chain[0],
        exits=frozenset(exits if exits is not None else [chain[-1]]),
        max_steps=max_steps,
    )
