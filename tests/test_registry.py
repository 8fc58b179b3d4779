"""The handler registry: structural no-ops built in, declarations kept at registration."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from engine import Engine, Node, load_graph
from engine.registry import STRUCTURAL, HandlerRegistry


async def test_a_new_registry_runs_a_custom_graph_without_boilerplate() -> None:
    """``start``, ``exit``, ``done`` and ``conditional`` are known no-ops: a graph of
    one custom handler needs nothing else registered."""
    registry = HandlerRegistry()

    @registry.handler("shout")
    def shout(node: Node, context: Mapping[str, Any]) -> Mapping[str, Any]:
        return {"reply": str(context["session.input"]).upper()}

    text = "digraph { start -> route -> shout -> done; route [shape=diamond] }"
    graph = load_graph(text, registry=registry)
    result = await Engine(registry).run(graph, {"session.input": "hey"})
    assert result.ok and result.context["reply"] == "HEY"
    assert [r.handler for r in result.trace] == ["start", "conditional", "shout", "done"]
    exits = load_graph("digraph { start -> x -> exit }", registry={"start", "x", "exit"})
    assert exits.exits == frozenset({"exit"})
    assert {"start", "exit", "done", "conditional"} <= registry.names()
    assert registry.get("start").declaration is STRUCTURAL


async def test_a_structural_default_is_replaced_without_replace_true() -> None:
    """Registering ``start`` the first time replaces the no-op; a second time is the
    usual duplicate error."""
    registry = HandlerRegistry()
    seen: list[str] = []
    registry.register("start", lambda node, ctx: seen.append(node.id))
    graph = load_graph("digraph { start -> done }", registry=registry)
    assert (await Engine(registry).run(graph)).ok and seen == ["start"]
    with pytest.raises(ValueError, match="already registered"):
        registry.register("start", lambda node, ctx: None)
    copy = registry.copy()
    with pytest.raises(ValueError, match="already registered"):
        copy.register("start", lambda node, ctx: None)
    copy.register("done", lambda node, ctx: None)  # still a default in the copy


def test_the_structural_no_op_changes_nothing() -> None:
    """The built-in no-op returns None (success, no updates) and is a plain function."""
    spec = HandlerRegistry().get("exit")
    assert not spec.is_async and not spec.blocking
    assert spec.fn(Node("exit", "exit"), {"a": 1}) is None
