"""The ``recall`` node's ``scope`` and ``update_memory``'s deferred items."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest

from engine.errors import AdapterError
from engine.graph import Node, Value
from engine.messages import MemoryItem
from handlers.adapters.memory import KeywordMemory
from handlers.memory import Recall, UpdateMemory


def node(handler: str, **attrs: Value) -> Node:
    return Node(id=handler, handler=handler, attrs=MappingProxyType(attrs))


CTX: dict[str, Any] = {"session.input": "gannets dive", "session.id": "s", "session.agent_id": "a"}


class Deferred(KeywordMemory):
    """A memory that, like the store's, lets the turn's commit write its items."""

    deferred = True
    agent_scope = True

    async def recall(
        self, query: str, *, session_id: str, limit: int = 5, agent_id: str | None = None
    ) -> tuple[MemoryItem, ...]:
        return (MemoryItem(f"{session_id}/{agent_id}"),)


async def test_scope_agent_needs_a_memory_that_knows_agents() -> None:
    """A plain adapter keeps sessions apart: ``scope=agent`` fails clearly."""
    with pytest.raises(AdapterError, match="scope=agent needs a store's memory"):
        await Recall(KeywordMemory())(node("recall", scope="agent"), CTX)


async def test_scope_agent_passes_the_agent() -> None:
    out = await Recall(Deferred())(node("recall", scope="agent"), CTX)
    assert [i.text for i in out.updates["recall.items"]] == ["s/a"]
    out = await Recall(Deferred())(node("recall"), CTX)
    assert [i.text for i in out.updates["recall.items"]] == ["s/None"]


async def test_a_bad_scope_names_the_node() -> None:
    with pytest.raises(ValueError, match="node 'recall': scope must be session or agent"):
        await Recall(KeywordMemory())(node("recall", scope="world"), CTX)


async def test_update_memory_defers_to_the_turns_commit() -> None:
    """With a deferred memory nothing is written; the item is in ``memory.pending``
    (JSON-safe, added to what earlier nodes left there)."""
    memory = Deferred()
    ctx = {**CTX, "reply": "ok", "memory.pending": ({"text": "earlier", "meta": {}},)}
    out = await UpdateMemory(memory)(node("update_memory"), ctx)
    assert out.updates["memory.pending"] == (
        {"text": "earlier", "meta": {}},
        {"text": "gannets dive", "kind": "exchange", "meta": {"turn": 0, "reply": "ok"}},
    )
    assert memory.count("s") == 0
