"""The PostgreSQL store's recall memory: full-text search over a GIN index.

``memory`` rows carry a generated ``tsvector`` (the ``simple`` configuration: no
stemming, no language guess, the same words the query looks for).  A turn's items are
one more common table expression of the turn's single statement (:func:`turn_sql`,
:func:`group_sql`), so they commit with the turn or not at all; a recall ranks the
newest :data:`~sessions.store.recall.RECALL_WINDOW` matches with ``ts_rank``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from engine.messages import MemoryItem
from sessions.store.recall import RECALL_WINDOW, item_of, query_words, row_of

__all__ = [
    "INSERT_SQL",
    "MEMORY_CTE",
    "group_sql",
    "memory_params",
    "recall_sql",
    "recalled",
    "remembered",
    "ts_query",
    "turn_sql",
]

MEMORY_CTE: Final = (
    "mem AS (INSERT INTO memory (session_id, agent_id, kind, text, meta) "
    "SELECT m.session_id, m.agent_id, m.kind, m.text, m.meta FROM unnest("
    "%b::text[], %b::text[], %b::text[], %b::text[], %b::text[]) WITH ORDINALITY "
    "AS m(session_id, agent_id, kind, text, meta, n){where} ORDER BY m.n)"
)
"""Insert the items of :func:`memory_params` (``{where}`` filters the sessions)."""


def turn_sql(turn: str, state_update: str) -> str:
    """The locked path's turn statement ``turn`` (``WITH ... <state_update> ...``) with
    the memory insert added before its final ``UPDATE``."""
    head, _, tail = turn.partition(state_update)
    return f"{head.rstrip()}, {MEMORY_CTE.format(where='')} {state_update}{tail}"


def group_sql(group: str) -> str:
    """The group commit ``group`` with the memory insert of the sessions it updated."""
    head, sep, tail = group.rpartition(" SELECT id, xmin FROM upd")
    where = " WHERE m.session_id IN (SELECT id FROM upd)"
    return f"{head}, {MEMORY_CTE.format(where=where)}{sep}{tail}"


def memory_params(turns: Sequence[tuple[str, str, Sequence[MemoryItem]]]) -> tuple[Any, ...]:
    """:data:`MEMORY_CTE`'s parameters for ``(session_id, agent_id, items)`` triples."""
    rows = [(sid, agent, *row_of(item)) for sid, agent, items in turns for item in items]
    return tuple(list(col) for col in zip(*rows, strict=True)) if rows else ([],) * 5


INSERT_SQL: Final = (
    "INSERT INTO memory (session_id, agent_id, kind, text, meta) "
    "SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::text[])"
)
"""Remember items outside a turn (:func:`memory_params`)."""


async def remembered(c: Any, sid: str) -> tuple[MemoryItem, ...]:
    """Everything ``sid`` remembered, oldest first."""
    cur = await c.execute(
        "SELECT kind, text, meta FROM memory WHERE session_id=%s ORDER BY id", (sid,)
    )
    return tuple(item_of(kind, text, meta, 0.0) for kind, text, meta in await cur.fetchall())


def recall_sql(agent: bool) -> str:
    """A recall's statement: the newest matches of the scope, best ``ts_rank`` first."""
    column = "agent_id" if agent else "session_id"
    return (
        "WITH q AS (SELECT to_tsquery('simple', %s) AS q), "
        "c AS (SELECT m.id, m.kind, m.text, m.meta, ts_rank(m.tsv, q.q) AS r FROM memory m, q "
        f"WHERE m.{column} = %s AND m.tsv @@ q.q ORDER BY m.id DESC LIMIT {RECALL_WINDOW}) "
        "SELECT kind, text, meta, r FROM c ORDER BY r DESC, id DESC LIMIT %s"
    )


def ts_query(query: str) -> str | None:
    """``query``'s words as a ``to_tsquery`` text (any of them), or ``None``: no words.
    The words are ``[a-z0-9]+`` (:func:`~sessions.store.recall.query_words`), safe."""
    words = query_words(query)
    return " | ".join(words) if words else None


def recalled(rows: Sequence[tuple[Any, ...]]) -> tuple[MemoryItem, ...]:
    """A recall's rows as items, their rank as the score."""
    return tuple(item_of(kind, text, meta, float(rank)) for kind, text, meta, rank in rows)
