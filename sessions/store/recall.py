"""Recall memory kept by the store: what every backend shares.

A turn's ``update_memory`` does not write to the database itself when its memory is
the store's (:class:`StoreMemory`, ``deferred``): it adds the items to the context key
``memory.pending``, the session puts them into the turn's
:class:`~sessions.store.base.TurnCommit` (``memory``), and the store writes them in the
turn's own transaction.  A failed turn commits no memory, a resumed checkpoint still
carries what its first nodes remembered, and another process recalls it at once.

The backends:

* ``memory:`` keeps :class:`~handlers.adapters.memory.KeywordMemory` in the process.
* SQLite (:mod:`sessions.store.sqlite_memory`) ranks with FTS5's BM25 in the same file.
* PostgreSQL (:mod:`sessions.store.pg_memory`) ranks with ``ts_rank`` over a GIN index.

Both SQL backends rank (SQLite: :func:`bm25`; PostgreSQL: ``ts_rank``) the newest
:data:`RECALL_WINDOW` items that share a keyword with the query (recall is
recency-biased on purpose, like ``KeywordMemory``: the cost of one recall stays
bounded however much a session or agent remembers).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any, Final, Protocol, runtime_checkable

from engine.errors import AdapterError
from engine.messages import MemoryItem

__all__ = [
    "PENDING_KEY",
    "QUERY_WORDS",
    "RECALL_WINDOW",
    "MemoryRow",
    "RecallStore",
    "StoreMemory",
    "best",
    "bm25",
    "item_of",
    "pending_items",
    "query_words",
    "row_of",
    "scope_token",
    "tokens",
]

PENDING_KEY: Final = "memory.pending"
"""The context key where ``update_memory`` leaves what the turn's commit remembers
(``handlers.memory.PENDING``; spelled out so that importing a store loads no handler)."""
RECALL_WINDOW: Final = 64
"""How many of the newest matching items a SQL backend ranks for one recall."""
QUERY_WORDS: Final = 128
"""The most distinct words a recall looks for (the query's first ones): a pasted
document as the query would otherwise make one ``OR`` of thousands of terms, which
PostgreSQL refuses (stack depth) and which costs a scan per word on either backend."""

MemoryRow = tuple[str, str, str]
"""A remembered item as the SQL stores keep it: ``(kind, text, meta as JSON)``."""


@runtime_checkable
class RecallStore(Protocol):
    """A store that keeps recall memory (every store turngraph ships)."""

    url: str

    async def recall_memory(
        self, query: str, *, session_id: str, agent_id: str | None = None, limit: int = 5
    ) -> tuple[MemoryItem, ...]:
        """Up to ``limit`` items relevant to ``query``, best first: ``session_id``'s, or
        with ``agent_id`` every session of that agent's."""
        ...

    async def remember_memory(self, session_id: str, items: Sequence[MemoryItem]) -> None:
        """Remember ``items`` for ``session_id`` at once, in a transaction of their own
        (outside a turn; a turn's memory rides its commit)."""
        ...


class StoreMemory:
    """The :class:`~handlers.adapters.memory.Memory` adapter over a store's recall memory.

    ``deferred`` tells ``update_memory`` to leave its items in the turn's commit
    (``memory.pending``) instead of calling :meth:`remember`; ``agent_scope`` tells
    ``recall scope=agent`` that :meth:`recall` takes ``agent_id``.
    """

    __slots__ = ("store",)
    deferred: Final = True
    agent_scope: Final = True

    def __init__(self, store: RecallStore) -> None:
        self.store = store

    def recall(
        self, query: str, *, session_id: str, limit: int = 5, agent_id: str | None = None
    ) -> Coroutine[Any, Any, Sequence[MemoryItem]]:
        """Items relevant to ``query`` from the session's memory (or the agent's).

        Returns the store's own awaitable: no coroutine of its own on every turn's path.
        """
        return self.store.recall_memory(
            query, session_id=session_id, agent_id=agent_id, limit=limit
        )

    async def remember(self, items: Sequence[MemoryItem], *, session_id: str) -> None:
        """Store ``items`` now, outside any turn."""
        await self.store.remember_memory(session_id, items)


def scope_token(kind: str, value: str) -> str:
    """The word that tags an item with its session (``kind`` ``s``) or agent (``a``)
    in a full-text index: a hash, so no id can look like (or break) a query word."""
    return kind + hashlib.blake2b(value.encode(), digest_size=8).hexdigest()


def query_words(query: str) -> tuple[str, ...]:
    """The words a recall looks for: the query's keywords, split at apostrophes the
    way both full-text tokenisers split them (``don't`` is ``don`` and ``t``), at most
    :data:`QUERY_WORDS` of them."""
    from handlers.adapters.memory import distinct_keywords  # cached: no handler at import

    words: dict[str, None] = {}
    for word in distinct_keywords(query):
        for part in word.split("'"):
            if part:
                words[part] = None
        if len(words) >= QUERY_WORDS:
            break
    return tuple(words)[:QUERY_WORDS]


def row_of(item: MemoryItem) -> MemoryRow:
    """``item`` as stored: kind, text, and its ``meta`` as JSON (``score`` is not kept)."""
    return item.kind, item.text, json.dumps(dict(item.meta), separators=(",", ":"))


def item_of(kind: str, text: str, meta: str, score: float) -> MemoryItem:
    """A stored row back as a :class:`MemoryItem` with ``score``."""
    return MemoryItem(text, kind, score, json.loads(meta))


def pending_items(value: object) -> tuple[MemoryItem, ...]:
    """The items of a context's ``memory.pending`` (dicts, JSON-safe so a checkpoint
    keeps them) as :class:`MemoryItem`; anything else there is an error."""
    if not value:
        return ()
    if not isinstance(value, list | tuple):
        raise AdapterError(
            "memory", f"{PENDING_KEY} must be a list of items, not {type(value).__name__}"
        )
    return tuple(map(_pending_item, value))


def _pending_item(value: object) -> MemoryItem:
    if type(value) is dict and type(value.get("text")) is str:  # update_memory's own
        meta = value.get("meta") or {}
        return MemoryItem(value["text"], value.get("kind") or "exchange", 0.0, meta)
    if isinstance(value, MemoryItem):
        return value
    if not isinstance(value, Mapping) or not isinstance(value.get("text"), str):
        raise AdapterError("memory", f"{PENDING_KEY} items need a 'text' string, not {value!r:.80}")
    meta = value.get("meta") or {}
    return MemoryItem(value["text"], str(value.get("kind") or "exchange"), 0.0, dict(meta))


_TOKEN: Final = re.compile(r"[^\W_]+")
K1: Final = 1.2
B: Final = 0.75


def tokens(text: str) -> list[str]:
    """``text``'s words as FTS5's ``unicode61`` tokeniser splits them, lowercased."""
    return _TOKEN.findall(text.lower())


@lru_cache(maxsize=4096)
def _cached_tokens(text: str) -> tuple[str, ...]:
    """:func:`tokens`, remembered: recalls keep ranking a scope's newest items, so the
    same texts come back from one recall to the next."""
    return tuple(_TOKEN.findall(text.lower()))


def bm25(
    words: Sequence[str], docs: Mapping[str, int], total: int, avg_len: float
) -> Callable[[str], float]:
    """Okapi BM25 for the query ``words`` (FTS5's formula: k1 1.2, b 0.75, an IDF of at
    least 1e-6): a function scoring one text.  ``docs`` counts the items holding each
    word, ``total`` the items, ``avg_len`` their mean length in words.

    The IDFs are worked out once per query; per text, one tokenising pass and a count
    per query word (``tuple.count``, in C: a ``Counter`` per text costs more); the
    tokens of the last 4,096 texts are kept.
    """
    weights = [
        (word, max(math.log((total - docs.get(word, 0) + 0.5) / (docs.get(word, 0) + 0.5)), 1e-6))
        for word in words
    ]
    lengthen = K1 * B / (avg_len or 1.0)
    base = K1 * (1 - B)

    def score(text: str) -> float:
        found = _cached_tokens(text)
        norm = base + lengthen * len(found)
        total_score = 0.0
        for word, idf in weights:
            tf = found.count(word)
            if tf:
                total_score += idf * tf * (K1 + 1) / (tf + norm)
        return total_score

    return score


def best(candidates: Iterable[tuple[int, float]], limit: int) -> list[tuple[int, float]]:
    """The ``limit`` best ``(id, score)`` pairs: highest score, then the newest id."""
    return sorted(candidates, key=lambda c: (-c[1], -c[0]))[:limit]
