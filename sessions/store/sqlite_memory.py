"""The SQLite store's recall memory: FTS5 with BM25 ranking, in the store's own file.

A turn's items are written to ``memory_queue`` in the turn's transaction
(:func:`queue`): one small table appended to, so remembering adds a page or so to the
commit instead of the several an FTS5 insert writes.  Before a recall,
:func:`index_pending` moves queued items into ``memory`` and ``memory_fts`` in one
transaction of their own, so a recall always sees every committed item.  A crash
between the two loses nothing: the queue is only emptied by the transaction that
indexed it.  That transaction runs with ``synchronous=NORMAL`` (no fsync of its own):
the index is derived data, and if a crash drops it, its items are still in the queue.

Each FTS5 row holds the item's words twice, each prefixed by a hashed scope word
(:func:`~sessions.store.recall.scope_token`): ``s<session hash>x<word>`` and
``a<agent hash>x<word>``.  A recall then looks up only its scope's own words, newest
first (``"s…xcat" OR "s…xdog"``): no AND with a scope term holding all of a session's
items, which costs three times as much at 100,000 items.  :func:`recall` ranks what it
finds by BM25 in Python, from statistics kept in ``memory_terms`` and ``memory_stats``
as items are indexed: FTS5's own ``bm25()`` would count, on every recall, every item
holding each query word.  Plain functions over a :mod:`sqlite3` connection, run in the
store's database thread.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Sequence
from typing import Final

from engine.messages import MemoryItem
from sessions.errors import SessionNotFound
from sessions.store.recall import (
    RECALL_WINDOW,
    best,
    bm25,
    item_of,
    query_words,
    row_of,
    scope_token,
    tokens,
)
from sessions.store.sqlite_open import tx

__all__ = ["index_pending", "queue", "recall", "remember", "remembered", "wipe"]

_QUEUE: Final = "INSERT INTO memory_queue (session_id, agent_id, kind, text, meta) VALUES "
_MATCH: Final = (
    "SELECT rowid FROM memory_fts WHERE memory_fts MATCH ? "
    f"ORDER BY rowid DESC LIMIT {RECALL_WINDOW}"
)
"""The newest items of the scope holding any query word (FTS5 walks its doclists from
the newest end and stops there)."""


def queue(conn: sqlite3.Connection, sid: str, agent_id: str, items: Sequence[MemoryItem]) -> None:
    """Queue ``items`` for ``sid`` inside the caller's (the turn's) transaction."""
    values = [v for item in items for v in (sid, agent_id, *row_of(item))]
    conn.execute(_QUEUE + ",".join(["(?,?,?,?,?)"] * len(items)), values)


def _indexed(sid: str, agent_id: str, text: str) -> str:
    """What FTS5 indexes for an item: its words under the session's and the agent's
    prefixes (hex digits, then ``x``: one token for ``unicode61``)."""
    words = tokens(text)
    s, a = scope_token("s", sid) + "x", scope_token("a", agent_id) + "x"
    return " ".join([*(s + w for w in words), *(a + w for w in words)])


def index_pending(conn: sqlite3.Connection) -> int:
    """Index every queued item (from any process); how many.  Its own transaction."""
    if conn.execute("SELECT 1 FROM memory_queue LIMIT 1").fetchone() is None:
        return 0
    level = conn.execute("PRAGMA synchronous").fetchone()[0]
    conn.execute("PRAGMA synchronous=NORMAL")  # see the module's docstring
    try:
        with tx(conn, immediate=True):
            rows = conn.execute(
                "SELECT session_id, agent_id, kind, text, meta FROM memory_queue ORDER BY id"
            ).fetchall()
            for sid, agent_id, kind, text, meta in rows:
                cur = conn.execute(
                    "INSERT INTO memory (session_id, agent_id, kind, text, meta) "
                    "VALUES (?,?,?,?,?)",
                    (sid, agent_id, kind, text, meta),
                )
                conn.execute(
                    "INSERT INTO memory_fts (rowid, words) VALUES (?,?)",
                    (cur.lastrowid, _indexed(sid, agent_id, text)),
                )
            _count(conn, [r[3] for r in rows], 1)
            conn.execute("DELETE FROM memory_queue")
    finally:
        conn.execute(f"PRAGMA synchronous={int(level)}")
    return len(rows)


def _count(conn: sqlite3.Connection, texts: Sequence[str], sign: int) -> None:
    """Add (``sign`` 1) or take away (-1) ``texts`` in BM25's statistics."""
    docs: Counter[str] = Counter()
    length = 0
    for text in texts:
        words = tokens(text)
        length += len(words)
        docs.update(set(words))
    conn.executemany(
        "INSERT INTO memory_terms VALUES (?,?) "
        "ON CONFLICT(term) DO UPDATE SET docs = docs + excluded.docs",
        [(word, sign * n) for word, n in docs.items()],
    )
    conn.execute(
        "UPDATE memory_stats SET docs = docs + ?, tokens = tokens + ?",
        (sign * len(texts), sign * length),
    )


def recall(
    conn: sqlite3.Connection, query: str, sid: str, agent_id: str | None, limit: int
) -> tuple[MemoryItem, ...]:
    """Up to ``limit`` items for ``query`` in ``sid``'s memory (or ``agent_id``'s),
    best BM25 score first among the newest :data:`RECALL_WINDOW` matches."""
    words = query_words(query)
    if not words or limit <= 0:
        return ()
    index_pending(conn)
    scope = scope_token("s", sid) if agent_id is None else scope_token("a", agent_id)
    match = " OR ".join(f'"{scope}x{w}"' for w in words)  # words are [a-z0-9]+: safe
    ids = [r[0] for r in conn.execute(_MATCH, (match,))]
    if not ids:
        return ()
    rows = conn.execute(
        f"SELECT id, session_id, agent_id, kind, text, meta FROM memory "
        f"WHERE id IN ({','.join('?' * len(ids))})",
        ids,
    ).fetchall()
    # The hashed scope word could in theory collide: the row's own ids decide.
    rows = [r for r in rows if (r[1] == sid if agent_id is None else r[2] == agent_id)]
    total, length = conn.execute("SELECT docs, tokens FROM memory_stats").fetchone()
    marks = ",".join("?" * len(words))
    docs = dict(conn.execute(f"SELECT term, docs FROM memory_terms WHERE term IN ({marks})", words))
    score = bm25(words, docs, total, length / total if total else 1.0)
    ranked = best(((r[0], score(r[4])) for r in rows), limit)
    by_id = {r[0]: r for r in rows}
    return tuple(item_of(by_id[i][3], by_id[i][4], by_id[i][5], s) for i, s in ranked)


def remembered(conn: sqlite3.Connection, sid: str) -> tuple[MemoryItem, ...]:
    """Everything ``sid`` remembered, oldest first (indexed, then still queued)."""
    rows = conn.execute(
        "SELECT kind, text, meta FROM memory WHERE session_id=? ORDER BY id", (sid,)
    ).fetchall()
    rows += conn.execute(
        "SELECT kind, text, meta FROM memory_queue WHERE session_id=? ORDER BY id", (sid,)
    ).fetchall()
    return tuple(item_of(kind, text, meta, 0.0) for kind, text, meta in rows)


def remember(conn: sqlite3.Connection, sid: str, items: Sequence[MemoryItem]) -> None:
    """Remember ``items`` for ``sid`` outside a turn (its own transaction)."""
    if not items:
        return
    with tx(conn, immediate=True):
        row = conn.execute("SELECT agent_id FROM sessions WHERE id=?", (sid,)).fetchone()
        if row is None:
            raise SessionNotFound(sid, "no such session")
        queue(conn, sid, str(row[0]), items)


def wipe(conn: sqlite3.Connection, sid: str) -> None:
    """Forget everything ``sid`` remembered, inside the caller's transaction."""
    conn.execute("DELETE FROM memory_queue WHERE session_id=?", (sid,))
    rows = conn.execute(
        "SELECT id, agent_id, text FROM memory WHERE session_id=?", (sid,)
    ).fetchall()
    _count(conn, [text for _, _, text in rows], -1)
    # A contentless FTS5 table forgets a row given the very values it indexed.
    conn.executemany(
        "INSERT INTO memory_fts (memory_fts, rowid, words) VALUES ('delete', ?, ?)",
        [(i, _indexed(sid, agent_id, text)) for i, agent_id, text in rows],
    )
    conn.execute("DELETE FROM memory WHERE session_id=?", (sid,))
