"""The shared store: PostgreSQL through psycopg 3 (async) and a connection pool.

Many workers on many machines may share one database: a session is plain rows, hosted
by whichever process holds its lease.  Writes lock the session row
(``SELECT ... FOR UPDATE``), check the fencing token, append and update in one
transaction; reads (:mod:`sessions.store.pg_read`) run ``REPEATABLE READ``.  The pools,
the schema and shared statements are :mod:`sessions.store.pg_db`'s.

Turn commits have a fast path (:mod:`sessions.store.pg_group`): the store remembers
the session row it last wrote (and the row version's ``xmin``), so the next turn of
that session needs no read, and concurrent turns of different sessions share one
statement and one transaction (group commit).  A turn whose row does not match writes
nothing and takes the locked, verified path here, which raises the precise error.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Final

import anyio.to_thread

from engine.messages import MemoryItem
from sessions.errors import (
    CommitUnknown,
    Fenced,
    SessionExists,
    SessionNotFound,
    StoreError,
    StoreKeyMissing,
)
from sessions.store.base import (
    Checkpoint,
    Listed,
    LoadedSession,
    Message,
    SessionMatch,
    SessionMeta,
    TurnCommit,
    TurnRecord,
    keyset_page,
)
from sessions.store.codec import validate_session_id
from sessions.store.durable import (
    StateRow,
    checkpoint_body,
    listed_meta,
    matched_sql,
    plan_import,
    plan_state,
    plan_summary,
    plan_turn,
    scanned_to,
)
from sessions.store.export import ImportLimits, already_exists, parse_doc
from sessions.store.lease import Clock, check_token, grant, lease_end, not_holder
from sessions.store.pg_db import (
    Conn,
    PgDatabase,
    connection_lost,
    first_version,
    insert_records,
    insert_state,
    one,
    store_identity,
    wipe,
)
from sessions.store.pg_group import GroupWriter, WrittenRows
from sessions.store.pg_memory import (
    INSERT_SQL,
    memory_params,
    recall_sql,
    recalled,
    ts_query,
    turn_sql,
)
from sessions.store.pg_read import PgReader
from sessions.store.redact import redact_url
from sessions.store.signing import Row, Signer, load_key
from sessions.store.witness import Witness, witness_path

__all__ = ["PostgresStore"]

# A turn's whole write is one statement, so one round trip (client CPU per commit is
# mostly per round trip: psycopg's wait and the event loop's reader bookkeeping): the
# records, the checkpoint the turn supersedes, and the fenced state UPDATE whose rowcount
# is checked before COMMIT.  The record columns go as arrays in binary (%b): psycopg's
# text array dumper escapes element by element with regexes, several times slower.
_STATE_UPDATE: Final = (
    "UPDATE sessions SET updated_at=%s, turn_count=%s, message_count=%s, record_count=%s, "
    "head_mac=%s, working_memory=%s, goals=%s, cognitive_mode=%s, summary_upto=%s, "
    "state_mac=%s WHERE id=%s AND version=%s"
)
"""The fenced session-row update; :func:`_state_params` gives its parameters."""

_TURN_SQL: Final = (
    "WITH ins AS (INSERT INTO records SELECT %s, * FROM unnest("
    "%b::integer[], %b::text[], %b::integer[], %b::text[], %b::bytea[], %b::bytea[])), "
    "del AS (DELETE FROM checkpoints WHERE session_id=%s) "
    + _STATE_UPDATE
    + " RETURNING xmin::text"
)
_TURN_MEMORY_SQL: Final = turn_sql(_TURN_SQL, _STATE_UPDATE)
""":data:`_TURN_SQL` that also remembers the turn's recall memory."""
_NOT_OPEN: Final = "store is not open (call open() or use 'async with')"


def _state_params(st: StateRow, token: int) -> tuple[Any, ...]:
    """:data:`_STATE_UPDATE`'s parameters, the fencing token last."""
    return (
        st.updated_at,
        st.turn_count,
        st.message_count,
        st.record_count,
        st.head_mac,
        st.working_memory,
        st.goals,
        st.cognitive_mode,
        st.summary_upto,
        st.state_mac,
        st.id,
        token,
    )


def _turn_params(st: StateRow, rows: list[Row], token: int) -> tuple[Any, ...]:
    """:data:`_TURN_SQL`'s parameters: the rows as six column arrays, then the state."""
    rseq, kind, key, body, prev_mac, mac = (list(col) for col in zip(*rows, strict=True))
    return (st.id, rseq, kind, key, body, prev_mac, mac, st.id, *_state_params(st, token))


def _turn_statement(
    st: StateRow, rows: list[Row], token: int, commit: TurnCommit
) -> tuple[str, tuple[Any, ...]]:
    """The locked path's statement and parameters, with the turn's memory if any."""
    params = _turn_params(st, rows, token)
    if not commit.memory:
        return _TURN_SQL, params
    remembered = memory_params([(st.id, st.agent_id, commit.memory)])
    return _TURN_MEMORY_SQL, (*params[:8], *remembered, *params[8:])


async def _fence(c: Conn, url: str, sid: str, token: int) -> None:
    """Lock the session row and check ``token`` against its version."""
    row = await one(c, "SELECT version FROM sessions WHERE id=%s FOR UPDATE", (sid,))
    if row is None:
        raise SessionNotFound(sid, "no such session")
    check_token(url, sid, token, int(row[0]))


async def _save_state(c: Conn, url: str, st: StateRow, token: int) -> str:
    """The fenced UPDATE; returns the new row version's xmin."""
    cur = await c.execute(_STATE_UPDATE + " RETURNING xmin::text", _state_params(st, token))
    row = await cur.fetchone()
    if row is None:
        raise Fenced(url, st.id, token, st.version)
    return str(row[0])


async def _append_locked(
    db: PgDatabase,
    reads: PgReader,
    written: WrittenRows,
    sid: str,
    commit: TurnCommit,
    token: int,
    tried: StateRow | None,
) -> None:
    """:func:`_write_locked`, once more on a fresh connection if the first broke.

    A broken connection leaves the outcome unknown: the server may have committed
    before its answer was lost.  The second attempt tells: it reads the row under
    its lock, and finds either the row the first attempt planned (committed: the
    turn is done, not written twice) or the row before it (not committed: written
    now).  Dead pooled connections are replaced first.
    """
    planned: list[StateRow] = []
    try:
        await _write_locked(db, reads, written, sid, commit, token, tried, planned)
    except StoreError as exc:
        if not connection_lost(exc):
            raise
    else:
        return
    again = planned[-1] if planned else tried
    try:
        await db.recover()
        await _write_locked(db, reads, written, sid, commit, token, again, [])
    except StoreError as exc:
        if not connection_lost(exc):
            raise
        raise CommitUnknown(
            reads.url,
            f"session {sid!r}: the connection broke while turn {commit.record.turn} "
            f"committed, and again while finding out whether it was stored ({exc.reason})",
        ) from exc


async def _write_locked(
    db: PgDatabase,
    reads: PgReader,
    written: WrittenRows,
    sid: str,
    commit: TurnCommit,
    token: int,
    tried: StateRow | None,
    planned: list[StateRow],
) -> None:
    """Lock and verify the row, check the token, then one write (4 round trips).

    ``tried`` is a row an earlier attempt would have written (a refused group
    commit, a connection that broke): if the stored row is exactly that, the turn
    is already written and is not appended again.  The row this attempt plans is
    put in ``planned`` before it is sent.
    """
    url = reads.url
    async with db.tx() as c:
        st = (await reads.state(c, sid, lock=True)).fence(url, token)
        if tried is not None and st.state_mac == tried.state_mac:
            return
        rows = plan_turn(st, commit, reads.signer, url, now=time.time())
        planned.append(st)
        cur = await c.execute(*_turn_statement(st, rows, token, commit))
        row = await cur.fetchone()
        if row is None:
            raise Fenced(url, sid, token, st.version)
    written.remember(st, str(row[0]))


class PostgresStore:
    """A :class:`~sessions.store.base.Store` in PostgreSQL (``postgresql://...``)."""

    def __init__(
        self,
        url: str,
        *,
        secret: bytes | str | None = None,
        limits: ImportLimits | None = None,
        max_connections: int = 10,
        connect_timeout: float = 5.0,
        create: bool = True,
        group_commits: int = 2,
        clock: Clock = time.time,
        witness: bool = False,
        lock_timeout: float = 10.0,
    ) -> None:
        """``group_commits`` is how many turn groups may run at once (0: every turn
        takes the locked path, one transaction each); ``clock`` measures leases.
        ``witness`` keeps the heads this machine committed in a rollback witness
        (:mod:`sessions.store.witness`) keyed by the database and schema the URL reaches
        (:func:`~sessions.store.pg_db.store_identity`, no password): off by
        default, because a store shared by many machines is only witnessed for the
        sessions each one wrote (``TURNGRAPH_WITNESS=on`` turns it on).
        ``lock_timeout`` (seconds) bounds a write's wait for a row lock another
        transaction holds (:class:`~sessions.errors.StoreLocked` past it)."""
        if not lock_timeout > 0:
            raise ValueError("lock_timeout must be > 0 seconds")
        self.url = redact_url(url)
        self._identity = store_identity(url)
        self._clock = clock
        self._secret = secret
        self._limits = limits or ImportLimits()
        self._db = PgDatabase(
            self.url, url, max_connections=max_connections, timeout=connect_timeout,
            create=create, lock_timeout=lock_timeout,
        )  # fmt: skip
        self._reader: PgReader | None = None
        self._use_witness = witness
        self._written = WrittenRows()
        self._group = GroupWriter(self.url, self._written, self._db.group_connection, group_commits)

    # ------------------------------------------------------------------ lifecycle

    @property
    def is_open(self) -> bool:
        """Whether :meth:`open` has run (and :meth:`close` has not)."""
        return self._db.pool is not None

    async def open(self) -> None:
        """Check the server answers, open the pool, create or migrate the schema; refuse
        a newer schema.

        The first connection is made directly, bounded by ``connect_timeout`` (seconds;
        a ``connect_timeout`` in the URL wins), so an unreachable server fails at once
        with the real reason (``Connection refused``, a timeout, a bad password) as one
        :class:`~engine.errors.StoreError`, instead of the pool retrying and logging
        until its own timeout.  With ``create=False`` a database without turngraph's
        tables is ``no such store`` and nothing is created.
        """
        if self._db.pool is not None:
            return
        await self._db.open(self._group.group.size, before=self._load_key)
        if self._reader is None:  # no key file yet: only a store without sessions may make one
            try:
                async with self._db.tx(read=True) as c:
                    used = await one(c, "SELECT 1 FROM sessions LIMIT 1", ())
                if used is not None:
                    load_key(self._secret, existing_store=self.url)  # raises StoreKeyMissing
                self._set_reader(load_key(self._secret))
            except BaseException:
                await self._db.close()
                raise

    def _load_key(self) -> None:
        try:
            key = load_key(self._secret, existing_store=self.url)
        except StoreKeyMissing:
            return  # decided in open(), once the tables can be read
        self._set_reader(key)

    def _set_reader(self, key: bytes) -> None:
        """The verified reader under ``key``, with the rollback witness if enabled."""
        witness = None
        if self._use_witness:
            witness = Witness(witness_path(self._identity), self.url)
            witness.open()
        self._reader = PgReader(self.url, self._db, Signer(key), witness)
        self._written.witness = witness

    @property
    def _witness(self) -> Witness | None:
        return None if self._reader is None else self._reader.witness

    async def close(self) -> None:
        """Close the pools.  Idempotent."""
        await self._db.close()
        if self._witness is not None:
            self._witness.close()

    async def __aenter__(self) -> PostgresStore:
        await self.open()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------ plumbing

    @property
    def _r(self) -> PgReader:
        if self._reader is None:
            raise StoreError(self.url, _NOT_OPEN)
        return self._reader

    # ------------------------------------------------------------------ sessions

    async def create(self, meta: SessionMeta) -> SessionMeta:
        """Create a session; ``SessionExists`` if the id is taken."""
        validate_session_id(meta.id)
        state = StateRow.new(meta, self._r.signer, self.url)
        async with self._db.tx() as c:
            if await one(c, "SELECT 1 FROM sessions WHERE id=%s", (meta.id,)):
                raise SessionExists(meta.id, "a session with this id already exists")
            if self._witness is not None:
                self._witness.check_missing(meta.id)
            state.version = await first_version(c, meta.id)
            await insert_state(c, state)
        if self._witness is not None:
            self._witness.reset(meta.id)
        return state.to_meta(self.url)

    async def exists(self, session_id: str) -> bool:
        """Whether the session exists."""
        validate_session_id(session_id)
        async with self._db.tx() as c:
            return await one(c, "SELECT 1 FROM sessions WHERE id=%s", (session_id,)) is not None

    async def list_sessions(
        self, offset: int = 0, limit: int = 100, *, match: SessionMatch | None = None
    ) -> tuple[SessionMeta, ...]:
        """A page of sessions, each state MAC verified; a row that fails is listed as
        ``SessionMeta(id, tampered=True)``.  See :meth:`Store.list_sessions`."""
        q = matched_sql(match or SessionMatch(), offset, limit, "%s")
        async with self._db.tx() as c:  # the page and its span from one snapshot
            found = await (await c.execute(q.rows, q.params)).fetchall()
            span = await one(c, q.span, q.window_params) if q.text else None
        metas = [listed_meta(r, self._r.signer, self.url) for r in found]
        if not q.text:
            return keyset_page(metas, max(1, limit))
        return Listed.of(metas, scanned_to(span or (0, None), limit))

    async def delete(self, session_id: str) -> bool:
        """Delete a session and all its records; False if it did not exist."""
        validate_session_id(session_id)
        self._written.forget(session_id)
        if self._witness is not None:
            # Before the commit: a crash in between leaves a witness that knows less
            # (a weaker check), never one that misses a session still stored.
            self._witness.drop(session_id)
        async with self._db.tx() as c:
            return await wipe(c, session_id)

    # ------------------------------------------------------------------ leases

    async def acquire(self, session_id: str, owner: str, ttl: float) -> int:
        """Take or renew the lease; ``SessionBusy`` if another owner's lease is live."""
        validate_session_id(session_id)
        self._written.forget(session_id)
        async with self._db.tx() as c:
            row = await one(
                c,
                "SELECT version, owner, lease_expires FROM sessions WHERE id=%s FOR UPDATE",
                (session_id,),
            )
            if row is None:
                raise SessionNotFound(session_id, "no such session")
            version, expires = grant(
                session_id, int(row[0]), row[1], float(row[2]), owner, ttl, self._clock()
            )
            await c.execute(
                "UPDATE sessions SET version=%s, owner=%s, lease_expires=%s WHERE id=%s",
                (version, owner, expires, session_id),
            )
            return version

    async def renew(self, session_id: str, owner: str, token: int, ttl: float) -> None:
        """Extend the lease; ``Fenced`` if ``token`` is stale."""
        validate_session_id(session_id)
        self._written.forget(session_id)  # the row gets a new version
        async with self._db.tx() as c:
            cur = await c.execute(
                "UPDATE sessions SET lease_expires=%s WHERE id=%s AND version=%s AND owner=%s",
                (lease_end(self._clock, ttl), session_id, token, owner),
            )
            if cur.rowcount == 0:
                await _fence(c, self.url, session_id, token)
                raise not_holder(self.url, session_id, token)

    async def release(self, session_id: str, owner: str, token: int) -> None:
        """Give the lease up; its token goes stale.  No error if already lost."""
        validate_session_id(session_id)
        self._written.forget(session_id)
        async with self._db.tx() as c:
            await c.execute(
                "UPDATE sessions SET owner=NULL, lease_expires=0, version=version+1 "
                "WHERE id=%s AND version=%s AND owner=%s",
                (session_id, token, owner),
            )

    # ------------------------------------------------------------------ writes

    async def append_turn(self, session_id: str, commit: TurnCommit, *, token: int) -> None:
        """Append one turn in one transaction; ``Fenced`` (nothing written) if stale.

        The session's next turn after one this store wrote goes through the group
        commit (no read; see :data:`~sessions.store.pg_group.GROUP_SQL`); any other, or
        one the group refused, takes the locked path, which verifies the row and raises
        the precise error.
        """
        validate_session_id(session_id)
        done, tried = await self._group.commit(session_id, commit, token, self._r.signer)
        if not done:
            await _append_locked(self._db, self._r, self._written, session_id, commit, token, tried)

    async def append_summary(
        self, session_id: str, summary: Message, upto_seq: int, *, token: int
    ) -> None:
        """Append a compaction summary covering messages ``<= upto_seq``."""
        validate_session_id(session_id)
        reads = self._r
        async with self._db.tx() as c:
            st = (await reads.state(c, session_id, lock=True)).fence(self.url, token)
            rows = plan_summary(st, summary, upto_seq, reads.signer, self.url, now=time.time())
            await insert_records(c, session_id, rows)
            xmin = await _save_state(c, self.url, st, token)
        self._written.remember(st, xmin)

    async def update_state(
        self,
        session_id: str,
        *,
        working_memory: Mapping[str, Any] | None = None,
        goals: tuple[str, ...] | None = None,
        cognitive_mode: str | None = None,
        token: int,
    ) -> None:
        """Replace working memory, goals and/or mode in one fenced transaction: the
        locked session row is verified, changed and re-signed; no record is appended."""
        validate_session_id(session_id)
        reads = self._r
        async with self._db.tx() as c:
            st = (await reads.state(c, session_id, lock=True)).fence(self.url, token)
            plan_state(
                st,
                reads.signer,
                self.url,
                working_memory=working_memory,
                goals=goals,
                cognitive_mode=cognitive_mode,
                now=time.time(),
            )
            xmin = await _save_state(c, self.url, st, token)
        self._written.remember(st, xmin)

    async def save_checkpoint(self, session_id: str, cp: Checkpoint, *, token: int) -> None:
        """Save (replace) the in-flight turn's checkpoint."""
        validate_session_id(session_id)
        body, mac = checkpoint_body(session_id, cp, self._r.signer, self.url)
        async with self._db.tx() as c:
            await _fence(c, self.url, session_id, token)
            await c.execute(
                "INSERT INTO checkpoints VALUES (%s,%s,%s) ON CONFLICT (session_id) "
                "DO UPDATE SET body=EXCLUDED.body, mac=EXCLUDED.mac",
                (session_id, body, mac),
            )

    async def clear_checkpoint(self, session_id: str, *, token: int) -> None:
        """Drop the checkpoint (the turn was abandoned)."""
        validate_session_id(session_id)
        async with self._db.tx() as c:
            await _fence(c, self.url, session_id, token)
            await c.execute("DELETE FROM checkpoints WHERE session_id=%s", (session_id,))

    # ------------------------------------------------------------------ reads

    async def load(self, session_id: str, *, recent: int = 50) -> LoadedSession:
        """Metadata, the last ``recent`` messages, latest summary and checkpoint, verified."""
        validate_session_id(session_id)
        return await self._r.load(session_id, recent)

    async def messages(
        self, session_id: str, offset: int = 0, limit: int = 100
    ) -> tuple[Message, ...]:
        """Messages ``offset <= seq < offset + limit``, verified."""
        validate_session_id(session_id)
        return await self._r.messages(session_id, max(0, offset), max(0, limit))

    async def turns(
        self, session_id: str, offset: int = 0, limit: int = 100
    ) -> tuple[TurnRecord, ...]:
        """Turn records ``offset+1 ... offset+limit``, verified."""
        validate_session_id(session_id)
        return await self._r.turns(session_id, max(0, offset), max(0, limit))

    async def verify(self, session_id: str) -> int:
        """Verify the whole chain, the session state and the checkpoint."""
        validate_session_id(session_id)
        return await self._r.verify(session_id)

    # ------------------------------------------------------------------ recall memory

    async def recall_memory(
        self, query: str, *, session_id: str, agent_id: str | None = None, limit: int = 5
    ) -> tuple[MemoryItem, ...]:
        """Up to ``limit`` remembered items for ``query``, best ``ts_rank`` first: the
        session's, or with ``agent_id`` all that agent's sessions' (see
        :mod:`sessions.store.pg_memory`)."""
        validate_session_id(session_id)
        tsq = ts_query(query)
        if tsq is None or limit <= 0:
            return ()
        scope = session_id if agent_id is None else agent_id
        async with self._db.tx() as c:
            cur = await c.execute(recall_sql(agent_id is not None), (tsq, scope, limit))
            return recalled(await cur.fetchall())

    async def remember_memory(self, session_id: str, items: Sequence[MemoryItem]) -> None:
        """Remember ``items`` for the session now, outside a turn (own transaction)."""
        validate_session_id(session_id)
        if not items:
            return
        async with self._db.tx() as c:
            row = await one(c, "SELECT agent_id FROM sessions WHERE id=%s", (session_id,))
            if row is None:
                raise SessionNotFound(session_id, "no such session")
            await c.execute(INSERT_SQL, memory_params([(session_id, str(row[0]), items)]))

    # ------------------------------------------------------------------ export

    async def export(self, session_id: str) -> dict[str, Any]:
        """The signed export document of the whole session (verified as it is read)."""
        validate_session_id(session_id)
        return await self._r.export(session_id)

    async def import_(self, doc: Mapping[str, Any], *, replace: bool = False) -> SessionMeta:
        """Verify ``doc`` completely, then store it in one transaction, re-chained."""
        signer = self._r.signer
        # Checking a large document is CPU work: keep it off the event loop.
        plan = await anyio.to_thread.run_sync(parse_doc, doc, signer, self._limits, self.url)
        sid = plan.meta.id
        self._written.forget(sid)
        if self._witness is not None and replace:
            self._witness.drop(sid)  # before, as in delete: the new head is set after
        async with self._db.tx() as c:
            row = await one(c, "SELECT version FROM sessions WHERE id=%s FOR UPDATE", (sid,))
            if row is not None and not replace:
                raise already_exists(self.url, sid)
            if row is not None:
                await wipe(c, sid)
            # Replacing bumps the version past the old one: its owner is fenced out.
            first = await first_version(c, sid) if row is None else int(row[0]) + 1
            state, rows = plan_import(plan, signer, first)
            await insert_state(c, state)
            await insert_records(c, sid, rows)
            if plan.checkpoint is not None:
                body, mac = checkpoint_body(sid, plan.checkpoint, signer, self.url)
                await c.execute("INSERT INTO checkpoints VALUES (%s,%s,%s)", (sid, body, mac))
            if plan.memory:
                params = memory_params([(sid, state.agent_id, plan.memory)])
                await c.execute(INSERT_SQL, params)
        if self._witness is not None:
            self._witness.reset(sid, state.record_count, state.head_mac)
        return state.to_meta(self.url)
