"""Versioned schemas of the SQL stores, applied automatically when a store opens.

``SQLITE[n]`` / ``POSTGRES[n]`` are the statements taking a store from version ``n-1``
to ``n``.  SQLite keeps its version in ``PRAGMA user_version``; PostgreSQL in the
one-row table ``turngraph_schema``.  A store whose version is newer than
:data:`SCHEMA_VERSION` was written by newer code and is refused, never downgraded.

Tables (both backends):

``sessions``      one row per session: metadata, counters, chain head, state MAC, lease.
``records``       the append-only HMAC chain: messages, turn records and summaries,
                  keyed ``(session_id, rseq)``.  A message's ``key`` is its ``seq``, a
                  turn record's its number: both grow with ``rseq``.  PostgreSQL
                  indexes ``(session_id, kind, key)``; SQLite (from version 2) finds a
                  message or turn by binary search over ``rseq`` instead, and indexes
                  summaries alone.  SQLite from version 5 keeps records in a rowid
                  table (appended at its end) with a unique index on
                  ``(session_id, rseq)``: see ``SQLITE[5]``.
                  From version 6 both backends index ``sessions`` by ``(agent_id,
                  id)``, ``(type, id)`` and ``(agent_id, type, id)``: a listing filtered
                  by agent, type or both, in id order from a keyset cursor, is one range
                  scan of an index (:func:`sessions.store.durable.matched_sql`).
``checkpoints``   at most one in-flight turn per session (replaced, then deleted).
``fences``        (version 3) the last version of each deleted session id: a session
                  made again under that id starts above it, so no lease token is ever
                  issued twice for one id and a stale owner stays fenced out.
``memory``        (version 4) recall memory: one row per remembered item (session,
                  agent, kind, text, meta as JSON), written in its turn's transaction.
                  PostgreSQL indexes it with a generated ``tsvector`` and GIN.  SQLite
                  writes a turn's items to ``memory_queue`` (one small page in the
                  commit) and moves them into ``memory`` and the FTS5 index
                  ``memory_fts`` in a transaction of their own before the next recall
                  (:mod:`sessions.store.sqlite_memory`); ``memory_terms`` (items per
                  word) and ``memory_stats`` (items, words) are BM25's statistics.
                  Stores of version 3 held no durable memory (it lived in the
                  process): migrating adds the empty tables, and their sessions and
                  chains are untouched.

The text inside ``body`` columns is versioned apart from the schema: each record body
names the canonical JSON format that wrote it (:mod:`sessions.store.codec`), so format
1 and format 2 records live side by side in one chain and no migration rewrites them.
"""

from __future__ import annotations

from typing import Final

__all__ = ["POSTGRES", "SCHEMA_VERSION", "SQLITE", "SQLITE_READABLE", "SQLITE_VERSION"]

SCHEMA_VERSION: Final = 6
"""PostgreSQL's schema version (version 5 is SQLite's alone: no statement here)."""

SQLITE_VERSION: Final = 6
"""SQLite's schema version (``PRAGMA user_version``)."""

SQLITE_READABLE: Final = 4
"""The oldest SQLite schema a read-only open reads as it is (version 5 changed only
how ``records`` is stored, version 6 added indexes: the columns are those of 4)."""

_SESSION_INDEXES: Final = (
    "CREATE INDEX sessions_by_agent ON sessions (agent_id, id)",
    "CREATE INDEX sessions_by_type ON sessions (type, id)",
    "CREATE INDEX sessions_by_agent_type ON sessions (agent_id, type, id)",
)
"""Version 6, both backends: a listing by agent, type or both pages in id order over one
index range instead of examining a bounded window of every session per request.  The
three columns never change once a session is made, so a turn's update of its row
writes no entry of these indexes (SQLite skips an index whose columns the ``UPDATE``
does not set; PostgreSQL keeps such updates heap-only where the page has room)."""

_SQLITE_MEMORY: Final = (
    "id INTEGER PRIMARY KEY, session_id TEXT NOT NULL, agent_id TEXT NOT NULL, "
    "kind TEXT NOT NULL, text TEXT NOT NULL, meta TEXT NOT NULL"
)
"""The columns of SQLite's ``memory`` and of its ``memory_queue`` (the same rows)."""

SQLITE: Final[dict[int, tuple[str, ...]]] = {
    1: (
        """CREATE TABLE sessions (
            id TEXT PRIMARY KEY,
            agent_id TEXT NOT NULL,
            type TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            turn_count INTEGER NOT NULL,
            message_count INTEGER NOT NULL,
            record_count INTEGER NOT NULL,
            head_mac BLOB NOT NULL,
            config TEXT NOT NULL,
            working_memory TEXT NOT NULL,
            goals TEXT NOT NULL,
            cognitive_mode TEXT NOT NULL,
            summary_upto INTEGER NOT NULL,
            state_mac BLOB NOT NULL,
            version INTEGER NOT NULL DEFAULT 0,
            owner TEXT,
            lease_expires REAL NOT NULL DEFAULT 0
        ) WITHOUT ROWID""",
        """CREATE TABLE records (
            session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
            rseq INTEGER NOT NULL,
            kind TEXT NOT NULL,
            key INTEGER NOT NULL,
            body TEXT NOT NULL,
            prev_mac BLOB NOT NULL,
            mac BLOB NOT NULL,
            PRIMARY KEY (session_id, rseq)
        ) WITHOUT ROWID""",
        "CREATE UNIQUE INDEX records_by_key ON records (session_id, kind, key)",
        """CREATE TABLE checkpoints (
            session_id TEXT PRIMARY KEY REFERENCES sessions(id) ON DELETE CASCADE,
            body TEXT NOT NULL,
            mac BLOB NOT NULL
        ) WITHOUT ROWID""",
    ),
    # Version 2: every turn's commit wrote two pages of this index (its messages' and
    # its turn record's entries sit apart), a fifth of the commit's log writes.
    2: (
        "DROP INDEX records_by_key",
        "CREATE UNIQUE INDEX records_summaries ON records (session_id, key) WHERE kind = 'summary'",
    ),
    3: ("CREATE TABLE fences (id TEXT PRIMARY KEY, version INTEGER NOT NULL) WITHOUT ROWID",),
    4: (
        f"CREATE TABLE memory ({_SQLITE_MEMORY})",
        "CREATE INDEX memory_by_session ON memory (session_id)",
        f"CREATE TABLE memory_queue ({_SQLITE_MEMORY})",
        # Contentless (the text is in ``memory``), no column sizes: FTS5 only finds the
        # matches; BM25's statistics are kept apart (its bm25() would count every
        # match of every query word on each recall).
        "CREATE VIRTUAL TABLE memory_fts USING fts5(words, content='', columnsize=0)",
        "CREATE TABLE memory_terms (term TEXT PRIMARY KEY, docs INTEGER NOT NULL) WITHOUT ROWID",
        """CREATE TABLE memory_stats (
            id INTEGER PRIMARY KEY CHECK (id = 0),
            docs INTEGER NOT NULL,
            tokens INTEGER NOT NULL
        )""",
        "INSERT INTO memory_stats VALUES (0, 0, 0)",
    ),
    # Version 5: records in a rowid table, appended at its end, found through an index
    # of (session_id, rseq).  Clustered by session (a table without rowid) every turn
    # of a group commit inserted its rows in a page of its own session, in the middle
    # of the tree: a batch of 50 turns wrote some 50 such pages and split many, and its
    # insert and commit cost several times more than appending rows to the table's
    # last pages plus one small index entry each.  The records are copied as they are
    # (bodies and MACs unchanged: every chain verifies as before).
    5: (
        """CREATE TABLE records_v5 (
            session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
            rseq INTEGER NOT NULL,
            kind TEXT NOT NULL,
            key INTEGER NOT NULL,
            body TEXT NOT NULL,
            prev_mac BLOB NOT NULL,
            mac BLOB NOT NULL
        )""",
        "INSERT INTO records_v5 SELECT * FROM records ORDER BY session_id, rseq",
        "DROP TABLE records",
        "ALTER TABLE records_v5 RENAME TO records",
        "CREATE UNIQUE INDEX records_by_seq ON records (session_id, rseq)",
        "CREATE UNIQUE INDEX records_summaries ON records (session_id, key) WHERE kind = 'summary'",
    ),
    6: _SESSION_INDEXES,
}

POSTGRES: Final[dict[int, tuple[str, ...]]] = {
    1: (
        """CREATE TABLE sessions (
            id TEXT PRIMARY KEY,
            agent_id TEXT NOT NULL,
            type TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            turn_count INTEGER NOT NULL,
            message_count INTEGER NOT NULL,
            record_count INTEGER NOT NULL,
            head_mac BYTEA NOT NULL,
            config TEXT NOT NULL,
            working_memory TEXT NOT NULL,
            goals TEXT NOT NULL,
            cognitive_mode TEXT NOT NULL,
            summary_upto INTEGER NOT NULL,
            state_mac BYTEA NOT NULL,
            version BIGINT NOT NULL DEFAULT 0,
            owner TEXT,
            lease_expires DOUBLE PRECISION NOT NULL DEFAULT 0
        )""",
        """CREATE TABLE records (
            session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
            rseq INTEGER NOT NULL,
            kind TEXT NOT NULL,
            key INTEGER NOT NULL,
            body TEXT NOT NULL,
            prev_mac BYTEA NOT NULL,
            mac BYTEA NOT NULL,
            PRIMARY KEY (session_id, rseq)
        )""",
        "CREATE UNIQUE INDEX records_by_key ON records (session_id, kind, key)",
        """CREATE TABLE checkpoints (
            session_id TEXT PRIMARY KEY REFERENCES sessions(id) ON DELETE CASCADE,
            body TEXT NOT NULL,
            mac BYTEA NOT NULL
        )""",
    ),
    2: (),  # SQLite's index change only: PostgreSQL keeps (session_id, kind, key)
    3: ("CREATE TABLE fences (id TEXT PRIMARY KEY, version BIGINT NOT NULL)",),
    4: (
        """CREATE TABLE memory (
            id BIGSERIAL PRIMARY KEY,
            session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
            agent_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            text TEXT NOT NULL,
            meta TEXT NOT NULL,
            tsv tsvector GENERATED ALWAYS AS (to_tsvector('simple', text)) STORED
        )""",
        "CREATE INDEX memory_tsv ON memory USING GIN (tsv)",
        "CREATE INDEX memory_by_session ON memory (session_id, id)",
        "CREATE INDEX memory_by_agent ON memory (agent_id, id)",
    ),
    5: (),  # SQLite's records table change only: PostgreSQL's records keep their key
    6: _SESSION_INDEXES,
}
