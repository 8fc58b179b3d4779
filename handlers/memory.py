"""``recall`` and ``update_memory``: the memory adapter on either side of the model.

With a store's memory (a ``deferred`` adapter, see :mod:`sessions.store.recall`),
``update_memory`` adds its item to the context's ``memory.pending`` instead of writing
it: the session commits it with the turn, in the turn's transaction, so a failed turn
remembers nothing.  Any other adapter is written to at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from engine.errors import AdapterError
from engine.graph import Node
from engine.messages import MemoryItem
from engine.outcome import Outcome
from handlers._common import NodeSettings, attr_int, attr_str, input_text
from handlers.adapters.memory import Memory, distinct_keywords

__all__ = ["Recall", "UpdateMemory"]


SCOPES = ("session", "agent")
"""What ``recall scope=`` may say: this session's memory, or every session's of its agent."""
PENDING = "memory.pending"
"""Where ``update_memory`` leaves the turn's items for a deferred (store) memory."""


def _session_id(context: Mapping[str, Any]) -> str:
    return str(context.get("session.id") or "default")


def _scope(node: Node) -> str:
    scope = attr_str(node, "scope", "session")
    if scope not in SCOPES:
        raise ValueError(f"node {node.id!r}: scope must be session or agent, not {scope!r}")
    return scope


class Recall:
    """Sets ``recall.items``: up to ``limit`` (default 5) memory items relevant to the
    input, best first (empty for an empty input)."""

    __slots__ = ("_limit", "_scope", "memory")

    def __init__(self, memory: Memory) -> None:
        self.memory = memory
        self._limit = NodeSettings(lambda node: attr_int(node, "limit", 5))
        self._scope = NodeSettings(_scope)

    async def __call__(self, node: Node, context: Mapping[str, Any]) -> Outcome:
        query = input_text(context)
        limit = self._limit(node)
        if not query or not limit:
            return Outcome("success", {"recall.items": ()})
        sid = _session_id(context)
        if self._scope(node) == "agent":
            items = await self._agent_recall(query, sid, context, limit)
        else:
            items = await self.memory.recall(query, session_id=sid, limit=limit)
        return Outcome("success", {"recall.items": items if type(items) is tuple else tuple(items)})

    async def _agent_recall(
        self, query: str, sid: str, context: Mapping[str, Any], limit: int
    ) -> Sequence[MemoryItem]:
        """Recall across the agent's sessions: only a memory that knows agents can."""
        memory = self.memory
        if not getattr(memory, "agent_scope", False):
            raise AdapterError(
                type(memory).__name__,
                "scope=agent needs a store's memory (SessionManager's default); "
                "this memory adapter keeps sessions apart",
            )
        agent = str(context.get("session.agent_id") or "default")
        return await memory.recall(  # type: ignore[call-arg]  # agent_scope: takes agent_id
            query, session_id=sid, limit=limit, agent_id=agent
        )


class UpdateMemory:
    """Remembers the exchange as one ``exchange`` item (``text``: the input; ``meta``:
    ``turn`` and ``reply``), and sets ``memory.working`` to ``{"last_intent": ...,
    "topic": ...}`` (the topic is the input's first ``topic_words`` keywords, default 3).

    With a store's memory the item waits in ``memory.pending`` for the turn's commit.
    The item holds the very strings the session's history holds, so remembering a
    conversation adds index entries, not a second copy of its text.  Blocked or empty
    input is not remembered (status ``skipped``).
    """

    __slots__ = ("_topic_words", "memory")

    def __init__(self, memory: Memory) -> None:
        self.memory = memory
        self._topic_words = NodeSettings(lambda node: attr_int(node, "topic_words", 3))

    async def __call__(self, node: Node, context: Mapping[str, Any]) -> Outcome:
        text = input_text(context)
        if not text or context.get("input.blocked"):
            return Outcome("skipped", {"memory.stored": 0})
        reply = str(context.get("reply") or "")
        turn = int(context.get("session.turn_count") or 0)
        topic = " ".join(distinct_keywords(text)[: self._topic_words(node)])
        working = {"last_intent": str(context.get("intent") or "chat"), "topic": topic}
        updates: dict[str, Any] = {"memory.working": working, "memory.stored": 1}
        meta = {"turn": turn, "reply": reply}
        if getattr(self.memory, "deferred", False):
            # JSON-safe, so a checkpoint taken after this node keeps it for a resume.
            entry = {"text": text, "kind": "exchange", "meta": meta}
            updates[PENDING] = (*context.get(PENDING, ()), entry)
        else:
            item = MemoryItem(text, "exchange", meta=meta)
            await self.memory.remember([item], session_id=_session_id(context))
        return Outcome("success", updates)
