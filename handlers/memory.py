"""``recall`` and ``update_memory``: the memory adapter on either side of the model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.graph import Node
from engine.messages import MemoryItem
from engine.outcome import Outcome
from handlers._common import NodeSettings, attr_int, input_text
from handlers.adapters.memory import Memory, distinct_keywords

__all__ = ["Recall", "UpdateMemory"]


def _session_id(context: Mapping[str, Any]) -> str:
    return str(context.get("session.id") or "default")


class Recall:
    """Sets ``recall.items``: up to ``limit`` (default 5) memory items relevant to the
    input, best first (empty for an empty input)."""

    __slots__ = ("_limit", "memory")

    def __init__(self, memory: Memory) -> None:
        self.memory = memory
        self._limit = NodeSettings(lambda node: attr_int(node, "limit", 5))

    async def __call__(self, node: Node, context: Mapping[str, Any]) -> Outcome:
        query = input_text(context)
        limit = self._limit(node)
        if not query or not limit:
            return Outcome("success", {"recall.items": ()})
        items = await self.memory.recall(query, session_id=_session_id(context), limit=limit)
        return Outcome("success", {"recall.items": items if type(items) is tuple else tuple(items)})


class UpdateMemory:
    """Remembers the exchange as one ``exchange`` item (``text``: the input; ``meta``:
    ``turn`` and ``reply``), and sets ``memory.working`` to ``{"last_intent": ...,
    "topic": ...}`` (the topic is the input's first ``topic_words`` keywords, default 3).

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
        item = MemoryItem(text, "exchange", meta={"turn": turn, "reply": reply})
        await self.memory.remember([item], session_id=_session_id(context))
        topic = " ".join(distinct_keywords(text)[: self._topic_words(node)])
        working = {"last_intent": str(context.get("intent") or "chat"), "topic": topic}
        return Outcome("success", {"memory.working": working, "memory.stored": 1})
