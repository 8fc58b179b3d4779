"""The shared store: PostgreSQL through psycopg 3 (async) and a connection pool.

Many workers on many machines may share one database: a session is plain rows, hosted
by whichever process holds its lease.  Writes lock the session row
(``SELECT ... FOR UPDATE``), check the fencing token, append and update in one
transaction; multi-statement reads run ``REPEATABLE READ`` so a concurrent append can
never make a consistent chain look truncated.

Turn commits have a fast path: the store remembers the session row it last wrote (and
the row version's ``xmin``), so the next turn of that session needs no read.  Its write
is one statement whose fenced ``UPDATE`` matches only that exact row version with the
caller's token; the records and the checkpoint delete hang off the ``UPDATE``'s result.
Concurrent turns of different sessions share that statement and its transaction (group
commit, :class:`_GroupCommit`): the server parses, commits and flushes WAL once for
the group instead of once a turn.  A turn whose row does not match writes nothing and
takes the locked, verified path, which raises the precise error.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final

import anyio
import anyio.to_thread
import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from sessions.errors import (
    Fenced,
    SessionExists,
    SessionNotFound,
    SessionTampered,
    StoreError,
    StoreVersionUnsupported,
)
from sessions.store.base import (
    Checkpoint,
    LoadedSession,
    Message,
    SessionMeta,
    TurnCommit,
    TurnRecord,
)
from sessions.store.codec import KIND_MESSAGE, KIND_SUMMARY, KIND_TURN, validate_session_id
from sessions.store.durable import (
    STATE_COLUMNS,
    WRITTEN_COLUMNS,
    StateRow,
    checkpoint_body,
    latest_summary,
    listed_meta,
    messages_of,
    open_checkpoint,
    plan_import,
    plan_state,
    plan_summary,
    plan_turn,
    split_chain,
    turns_of,
)
from sessions.store.export import ImportLimits, Parts, already_exists, parse_doc, sign_doc
from sessions.store.lease import Clock, check_token, grant, lease_end, not_holder
from sessions.store.migrations import POSTGRES, SCHEMA_VERSION
from sessions.store.signing import GENESIS, Chain, Row, Signer, load_key, verify_span

__all__ = ["PostgresStore"]

Conn = psycopg.AsyncConnection[Any]
_ROW: Final = "rseq, kind, key, body, prev_mac, mac"
_MIGRATION_LOCK: Final = 0x7475726E  # "turn": serialises schema creation across processes
_GROUP_MAX: Final = 256  # turns in one group commit: bounds one statement's size
_WRITTEN_MAX: Final = 10_000  # sessions whose last written row is remembered


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

_GROUP_SQL: Final = (
    "WITH v AS (SELECT * FROM unnest(%b::text[], %b::bigint[], %b::text[], %b::bytea[], "
    "%b::float8[], %b::integer[], %b::integer[], %b::integer[], %b::bytea[], %b::text[], "
    "%b::text[], %b::text[], %b::integer[], %b::bytea[]) AS v(id, token, old_xmin, old_mac, "
    "updated_at, turn_count, message_count, record_count, head_mac, working_memory, goals, "
    "cognitive_mode, summary_upto, state_mac)), "
    "upd AS (UPDATE sessions s SET updated_at=v.updated_at, turn_count=v.turn_count, "
    "message_count=v.message_count, record_count=v.record_count, head_mac=v.head_mac, "
    "working_memory=v.working_memory, goals=v.goals, cognitive_mode=v.cognitive_mode, "
    "summary_upto=v.summary_upto, state_mac=v.state_mac FROM v WHERE s.id=v.id "
    "AND s.version=v.token AND s.xmin=v.old_xmin::xid AND s.state_mac=v.old_mac "
    "RETURNING s.id, s.xmin::text), "
    "ins AS (INSERT INTO records SELECT r.* FROM unnest(%b::text[], %b::integer[], "
    "%b::text[], %b::integer[], %b::text[], %b::bytea[], %b::bytea[]) "
    "AS r(session_id, rseq, kind, key, body, prev_mac, mac) "
    "WHERE r.session_id IN (SELECT id FROM upd)), "
    "del AS (DELETE FROM checkpoints WHERE session_id IN (SELECT id FROM upd)) "
    "SELECT id, xmin FROM upd"
)
"""The group commit: turns of different sessions, each fenced on its own.

A turn's row is updated only if it still has the caller's token *and* is the very row
version this store wrote last (``xmin``, and its state MAC): any other write since
(another owner, a lease change, an edit by hand) makes it match nothing, so the store
never re-signs a row it has not verified.  Only the sessions the ``UPDATE`` returned
get their records inserted and checkpoint deleted: a turn that does not match writes
nothing and cannot affect the others.  The group's connections wait at most 100 ms for
a row lock held elsewhere (:func:`_set_up_group_connection`), so one busy session
cannot hold up the group for long.
"""


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


@dataclass(slots=True, eq=False)
class _Turn:
    """One turn waiting for the group commit.

    ``state`` is the session row after the turn (planned from the row this store wrote
    last, whose ``xmin`` and state MAC are ``old_xmin`` / ``old_mac``).  ``done`` is
    None while pending, then True (committed, the row's new version is ``xmin``) or
    False (nothing written: the caller takes the locked path).  ``lead`` marks the
    caller that runs the next group.
    """

    state: StateRow
    rows: list[Row]
    token: int
    old_xmin: str
    old_mac: bytes
    wake: anyio.Event = field(default_factory=anyio.Event)
    """Set when the turn is finished or its caller is given the lead."""
    finished: anyio.Event = field(default_factory=anyio.Event)
    """Set when the turn is finished (a leader whose turn another leader took waits)."""
    done: bool | None = None
    xmin: str = ""
    lead: bool = False


def _group_params(group: list[_Turn]) -> tuple[Any, ...]:
    """:data:`_GROUP_SQL`'s parameters: the sessions' columns, then the records'."""
    states = [(t.state, t.token, t.old_xmin, t.old_mac) for t in group]
    rows = [(t.state.id, *r) for t in group for r in t.rows]
    return (
        [st.id for st, *_ in states],
        [token for _, token, _, _ in states],
        [xmin for _, _, xmin, _ in states],
        [mac for *_, mac in states],
        *([getattr(st, name) for st, *_ in states] for name in WRITTEN_COLUMNS),
        *(list(col) for col in zip(*rows, strict=True)),
    )


class _GroupCommit:
    """Turns of different sessions committed together, without a background task.

    A caller whose turn is queued while fewer than ``max_groups`` groups are running
    leads: it takes the queue (at most ``max_size`` turns, one per session) and runs it
    as one statement; the others wait.  A leader that finishes hands the lead to the
    first turn still queued, so nobody waits for a timer and a lone turn goes at once.
    A caller cancelled while queued leaves the queue (nothing written); a leader
    cancelled while its group runs cancels the statement, and the group's other turns
    are refused (not lost): their callers retry them on the locked path.
    """

    def __init__(
        self, run: Callable[[list[_Turn]], Awaitable[None]], max_groups: int, max_size: int
    ) -> None:
        self._run = run
        self._max_groups = max_groups
        self._max_size = max_size
        self._queue: deque[_Turn] = deque()
        self._leaders = 0

    @property
    def enabled(self) -> bool:
        """Whether turns may be grouped at all (``max_groups`` > 0)."""
        return self._max_groups > 0

    @property
    def size(self) -> int:
        """How many groups may run at once."""
        return self._max_groups

    async def commit(self, turn: _Turn) -> bool:
        """Queue ``turn`` and wait until it is written (True) or refused (False)."""
        self._queue.append(turn)
        if self._leaders < self._max_groups:
            self._leaders += 1
            turn.lead = True
        else:
            try:
                await turn.wake.wait()
            except BaseException:
                self._abandon(turn)
                raise
        if turn.lead:
            try:
                await self._lead(turn)
            finally:
                self._leaders -= 1
                self._promote()
        return bool(turn.done)

    async def _lead(self, turn: _Turn) -> None:
        """Run groups until ``turn`` is finished (or wait if another leader has it)."""
        while turn.done is None:
            if turn in self._queue:
                await self._run_group()
            else:  # in another leader's group
                await turn.finished.wait()

    def _abandon(self, turn: _Turn) -> None:
        """A queued caller was cancelled: drop its turn; pass on a lead it was given."""
        if turn.done is None and turn in self._queue:
            self._queue.remove(turn)
        if turn.lead:
            self._leaders -= 1
            self._promote()

    def _promote(self) -> None:
        """Give the lead to queued turns while fewer than ``max_groups`` groups run."""
        for turn in self._queue:
            if self._leaders >= self._max_groups:
                return
            if not turn.lead:
                turn.lead = True
                self._leaders += 1
                turn.wake.set()

    def _take(self) -> list[_Turn]:
        """The next group: queued turns in order, at most one per session."""
        group: list[_Turn] = []
        seen: set[str] = set()
        later: deque[_Turn] = deque()
        while self._queue and len(group) < self._max_size:
            turn = self._queue.popleft()
            if turn.state.id in seen:
                later.append(turn)
            else:
                seen.add(turn.state.id)
                group.append(turn)
        self._queue.extendleft(reversed(later))
        return group

    async def _run_group(self) -> None:
        group = self._take()
        try:
            await self._run(group)
        finally:
            for turn in group:
                if turn.done is None:
                    turn.done = False
                turn.wake.set()
                turn.finished.set()


def _redact(url: str) -> str:
    from sessions.store import redact_url

    return redact_url(url)


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
    ) -> None:
        """``group_commits`` is how many turn groups may run at once (0: every turn
        takes the locked path, one transaction each); ``clock`` measures leases."""
        self.url = _redact(url)
        self._clock = clock
        self._conninfo = url
        self._secret = secret
        self._limits = limits or ImportLimits()
        self._max = max_connections
        self._timeout = connect_timeout
        self._may_create = create
        self._pool: AsyncConnectionPool | None = None
        self._group_pool: AsyncConnectionPool | None = None
        """The group commits' own connections: they never wait long for a row lock."""
        self._signer: Signer | None = None
        self._written: dict[str, tuple[StateRow, str]] = {}
        """Per session: the row this store wrote last, and that row version's xmin."""
        self._group = _GroupCommit(self._write_group, group_commits, _GROUP_MAX)

    # ------------------------------------------------------------------ lifecycle

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
        if self._pool is not None:
            return
        await self._probe()
        self._signer = Signer(load_key(self._secret))
        self._pool = await self._open_pool(self._max)
        try:
            if self._group.enabled:
                self._group_pool = await self._open_pool(self._group.size, _set_up_group_connection)
            await self._migrate()
        except BaseException:
            await self.close()
            raise

    async def _open_pool(
        self, size: int, configure: Callable[[Conn], Awaitable[None]] | None = None
    ) -> AsyncConnectionPool:
        """An open pool of autocommit connections; failure is a StoreError."""
        pool = AsyncConnectionPool(
            self._conninfo,
            min_size=1,
            max_size=size,
            open=False,
            kwargs={"autocommit": True},
            timeout=self._timeout,
            configure=configure,
        )
        try:
            await pool.open(wait=True, timeout=self._timeout)
        except Exception as exc:
            await pool.close()
            raise StoreError(self.url, f"cannot connect to PostgreSQL: {exc}") from exc
        return pool

    async def _probe(self) -> None:
        """One direct connection, closed at once; failure is a one-reason StoreError."""
        extra: dict[str, Any] = {}
        if "connect_timeout" not in conninfo_to_dict(self._conninfo):
            extra["connect_timeout"] = max(2, math.ceil(self._timeout))  # libpq: >= 2 s
        try:
            conn = await psycopg.AsyncConnection.connect(self._conninfo, **extra)
        except psycopg.Error as exc:
            reason = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            raise StoreError(self.url, f"cannot connect to PostgreSQL: {reason}") from exc
        await conn.close()

    async def close(self) -> None:
        """Close the pools.  Idempotent."""
        pools = (self._pool, self._group_pool)
        self._pool = self._group_pool = None
        for pool in pools:
            if pool is not None:
                await pool.close()

    async def __aenter__(self) -> PostgresStore:
        await self.open()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _migrate(self) -> None:
        async with self._tx() as c:
            await c.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            if not self._may_create:
                found = await _one(c, "SELECT to_regclass('turngraph_schema')", ())
                if found is None or found[0] is None:
                    raise StoreError(
                        self.url, "no such store: this database has no turngraph tables"
                    )
            await c.execute("CREATE TABLE IF NOT EXISTS turngraph_schema (version INTEGER)")
            row = await _one(c, "SELECT max(version) FROM turngraph_schema", ())
            version = int(row[0] or 0) if row else 0
            if version > SCHEMA_VERSION:
                raise StoreVersionUnsupported(
                    self.url,
                    f"schema version {version} is newer than this code supports "
                    f"({SCHEMA_VERSION}); upgrade turngraph to open it",
                )
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for statement in POSTGRES[step]:
                    await c.execute(statement)
            if version != SCHEMA_VERSION:
                await c.execute("DELETE FROM turngraph_schema")
                await c.execute("INSERT INTO turngraph_schema VALUES (%s)", (SCHEMA_VERSION,))

    # ------------------------------------------------------------------ plumbing

    @asynccontextmanager
    async def _tx(self, *, read: bool = False) -> AsyncIterator[Conn]:
        """One transaction on a pooled connection; psycopg errors become StoreError."""
        if self._pool is None:
            raise StoreError(self.url, "store is not open (call open() or use 'async with')")
        try:
            async with self._pool.connection() as conn, conn.transaction():
                if read:
                    await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                yield conn
        except psycopg.Error as exc:
            raise StoreError(self.url, f"{type(exc).__name__}: {exc}") from exc

    @property
    def _s(self) -> Signer:
        if self._signer is None:
            raise StoreError(self.url, "store is not open (call open() or use 'async with')")
        return self._signer

    async def _state(self, c: Conn, sid: str, *, lock: bool = False) -> StateRow:
        sql = f"SELECT {STATE_COLUMNS} FROM sessions WHERE id=%s" + (" FOR UPDATE" if lock else "")
        row = await _one(c, sql, (sid,))
        if row is None:
            raise SessionNotFound(sid, "no such session")
        return StateRow.of(row).check(self._s, self.url)

    async def _fence(self, c: Conn, sid: str, token: int) -> None:
        row = await _one(c, "SELECT version FROM sessions WHERE id=%s FOR UPDATE", (sid,))
        if row is None:
            raise SessionNotFound(sid, "no such session")
        check_token(self.url, sid, token, int(row[0]))

    async def _save_state(self, c: Conn, st: StateRow, token: int) -> str:
        """The fenced UPDATE; returns the new row version's xmin."""
        cur = await c.execute(_STATE_UPDATE + " RETURNING xmin::text", _state_params(st, token))
        row = await cur.fetchone()
        if row is None:
            raise Fenced(self.url, st.id, token, st.version)
        return str(row[0])

    def _remember(self, st: StateRow, xmin: str) -> None:
        """Keep ``st`` as the row written last (committed as row version ``xmin``)."""
        written = self._written
        written.pop(st.id, None)
        if len(written) >= _WRITTEN_MAX:
            del written[next(iter(written))]  # the least recently written
        written[st.id] = (st, xmin)

    def _forget(self, sid: str) -> None:
        """The session's row may change under another writer: take the locked path."""
        self._written.pop(sid, None)

    async def _insert(self, c: Conn, sid: str, rows: list[Row]) -> None:
        async with c.cursor() as cur:
            await cur.executemany(
                "INSERT INTO records VALUES (%s,%s,%s,%s,%s,%s,%s)", [(sid, *r) for r in rows]
            )

    async def _insert_state(self, c: Conn, st: StateRow) -> None:
        await c.execute(
            f"INSERT INTO sessions ({STATE_COLUMNS}) VALUES ({','.join(['%s'] * 18)})",
            st.values(),
        )

    # ------------------------------------------------------------------ sessions

    async def create(self, meta: SessionMeta) -> SessionMeta:
        """Create a session; ``SessionExists`` if the id is taken."""
        validate_session_id(meta.id)
        state = StateRow.new(meta, self._s, self.url)
        async with self._tx() as c:
            if await _one(c, "SELECT 1 FROM sessions WHERE id=%s", (meta.id,)):
                raise SessionExists(meta.id, "a session with this id already exists")
            state.version = await _first_version(c, meta.id)
            await self._insert_state(c, state)
        return state.to_meta(self.url)

    async def exists(self, session_id: str) -> bool:
        """Whether the session exists."""
        validate_session_id(session_id)
        async with self._tx() as c:
            return await _one(c, "SELECT 1 FROM sessions WHERE id=%s", (session_id,)) is not None

    async def list_sessions(self, offset: int = 0, limit: int = 100) -> tuple[SessionMeta, ...]:
        """Sessions by id, each state MAC verified; a row that fails is listed as
        ``SessionMeta(id, tampered=True)``."""
        async with self._tx() as c:
            cur = await c.execute(
                f"SELECT {STATE_COLUMNS} FROM sessions ORDER BY id LIMIT %s OFFSET %s",
                (max(0, limit), max(0, offset)),
            )
            rows = await cur.fetchall()
        return tuple(listed_meta(StateRow.of(r), self._s, self.url) for r in rows)

    async def delete(self, session_id: str) -> bool:
        """Delete a session and all its records; False if it did not exist."""
        validate_session_id(session_id)
        self._forget(session_id)
        async with self._tx() as c:
            return await _wipe(c, session_id)

    # ------------------------------------------------------------------ leases

    async def acquire(self, session_id: str, owner: str, ttl: float) -> int:
        """Take or renew the lease; ``SessionBusy`` if another owner's lease is live."""
        validate_session_id(session_id)
        self._forget(session_id)
        async with self._tx() as c:
            row = await _one(
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
        self._forget(session_id)  # the row gets a new version
        async with self._tx() as c:
            cur = await c.execute(
                "UPDATE sessions SET lease_expires=%s WHERE id=%s AND version=%s AND owner=%s",
                (lease_end(self._clock, ttl), session_id, token, owner),
            )
            if cur.rowcount == 0:
                await self._fence(c, session_id, token)
                raise not_holder(self.url, session_id, token)

    async def release(self, session_id: str, owner: str, token: int) -> None:
        """Give the lease up; its token goes stale.  No error if already lost."""
        validate_session_id(session_id)
        self._forget(session_id)
        async with self._tx() as c:
            await c.execute(
                "UPDATE sessions SET owner=NULL, lease_expires=0, version=version+1 "
                "WHERE id=%s AND version=%s AND owner=%s",
                (session_id, token, owner),
            )

    # ------------------------------------------------------------------ writes

    async def append_turn(self, session_id: str, commit: TurnCommit, *, token: int) -> None:
        """Append one turn in one transaction; ``Fenced`` (nothing written) if stale.

        The session's next turn after one this store wrote goes through the group
        commit (no read; see :data:`_GROUP_SQL`); any other, or one the group refused,
        takes the locked path, which verifies the row and raises the precise error.
        """
        validate_session_id(session_id)
        turn = self._plan_fast(session_id, commit, token)
        if turn is not None and await self._group.commit(turn):
            return
        await self._append_locked(session_id, commit, token, None if turn is None else turn.state)

    def _plan_fast(self, sid: str, commit: TurnCommit, token: int) -> _Turn | None:
        """The turn planned on the row this store wrote last, if it can go fast."""
        written = self._written.get(sid)
        if written is None or written[0].version != token or not self._group.enabled:
            return None
        old, xmin = written
        st = old.copy()  # plan_turn advances the row it is given
        try:
            rows = plan_turn(st, commit, self._s, self.url, now=time.time())
        except StoreError:  # the locked path decides, on the stored row
            self._forget(sid)
            return None
        return _Turn(st, rows, token, xmin, old.state_mac)

    async def _append_locked(
        self, sid: str, commit: TurnCommit, token: int, tried: StateRow | None
    ) -> None:
        """Lock and verify the row, check the token, then one write (4 round trips).

        ``tried`` is the row a refused group commit would have written: if the stored
        row is exactly that (the group's statement committed but its answer was lost,
        e.g. to a cancelled leader), the turn is already written and is not appended
        again.
        """
        async with self._tx() as c:
            st = (await self._state(c, sid, lock=True)).fence(self.url, token)
            if tried is not None and st.state_mac == tried.state_mac:
                return
            rows = plan_turn(st, commit, self._s, self.url, now=time.time())
            cur = await c.execute(_TURN_SQL, _turn_params(st, rows, token))
            row = await cur.fetchone()
            if row is None:
                raise Fenced(self.url, sid, token, st.version)
        self._remember(st, str(row[0]))

    async def _write_group(self, group: list[_Turn]) -> None:
        """One statement (one transaction) for ``group``; mark the turns it wrote.

        A failed statement wrote nothing: its turns are left unmarked and retry one by
        one on the locked path, where only the turn at fault fails.
        """
        if self._group_pool is None:
            return
        try:
            async with self._group_pool.connection() as conn:
                cur = await conn.execute(_GROUP_SQL, _group_params(group))
                written: dict[str, str] = dict(await cur.fetchall())
        except psycopg.Error:
            written = {}
        for turn in group:
            xmin = written.get(turn.state.id)
            if xmin is None:
                self._forget(turn.state.id)
            else:
                turn.done, turn.xmin = True, str(xmin)
                self._remember(turn.state, turn.xmin)

    async def append_summary(
        self, session_id: str, summary: Message, upto_seq: int, *, token: int
    ) -> None:
        """Append a compaction summary covering messages ``<= upto_seq``."""
        validate_session_id(session_id)
        async with self._tx() as c:
            st = (await self._state(c, session_id, lock=True)).fence(self.url, token)
            rows = plan_summary(st, summary, upto_seq, self._s, self.url, now=time.time())
            await self._insert(c, session_id, rows)
            xmin = await self._save_state(c, st, token)
        self._remember(st, xmin)

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
        async with self._tx() as c:
            st = (await self._state(c, session_id, lock=True)).fence(self.url, token)
            plan_state(
                st,
                self._s,
                self.url,
                working_memory=working_memory,
                goals=goals,
                cognitive_mode=cognitive_mode,
                now=time.time(),
            )
            xmin = await self._save_state(c, st, token)
        self._remember(st, xmin)

    async def save_checkpoint(self, session_id: str, cp: Checkpoint, *, token: int) -> None:
        """Save (replace) the in-flight turn's checkpoint."""
        validate_session_id(session_id)
        body, mac = checkpoint_body(session_id, cp, self._s, self.url)
        async with self._tx() as c:
            await self._fence(c, session_id, token)
            await c.execute(
                "INSERT INTO checkpoints VALUES (%s,%s,%s) ON CONFLICT (session_id) "
                "DO UPDATE SET body=EXCLUDED.body, mac=EXCLUDED.mac",
                (session_id, body, mac),
            )

    async def clear_checkpoint(self, session_id: str, *, token: int) -> None:
        """Drop the checkpoint (the turn was abandoned)."""
        validate_session_id(session_id)
        async with self._tx() as c:
            await self._fence(c, session_id, token)
            await c.execute("DELETE FROM checkpoints WHERE session_id=%s", (session_id,))

    # ------------------------------------------------------------------ reads

    async def load(self, session_id: str, *, recent: int = 50) -> LoadedSession:
        """Metadata, the last ``recent`` messages, latest summary and checkpoint, verified."""
        validate_session_id(session_id)
        async with self._tx(read=True) as c:
            st = await self._state(c, session_id)
            msgs = await self._tail(c, st, max(0, min(recent, st.message_count)))
            summary = await self._summary(c, st)
            cp = await self._checkpoint(c, session_id)
        return LoadedSession(st.to_meta(self.url), msgs, summary, cp)

    async def _checkpoint(self, c: Conn, sid: str) -> Checkpoint | None:
        row = await _one(c, "SELECT body, mac FROM checkpoints WHERE session_id=%s", (sid,))
        return None if row is None else open_checkpoint(sid, row[0], row[1], self._s, self.url)

    async def _rseq_of(self, c: Conn, st: StateRow, kind: str, key: int) -> int:
        row = await _one(
            c,
            "SELECT rseq FROM records WHERE session_id=%s AND kind=%s AND key=%s",
            (st.id, kind, key),
        )
        if row is None:
            raise SessionTampered(self.url, st.id, -1, f"{kind} {key} is missing")
        return int(row[0])

    async def _rows(self, c: Conn, sid: str, first: int, last: int | None) -> list[Row]:
        if last is None:
            sql = f"SELECT {_ROW} FROM records WHERE session_id=%s AND rseq>=%s ORDER BY rseq"
            cur = await c.execute(sql, (sid, first))
        else:
            sql = (
                f"SELECT {_ROW} FROM records WHERE session_id=%s AND rseq BETWEEN %s AND %s "
                "ORDER BY rseq"
            )
            cur = await c.execute(sql, (sid, first, last))
        return await cur.fetchall()

    async def _tail(self, c: Conn, st: StateRow, count: int) -> tuple[Message, ...]:
        """The last ``count`` messages, verified from the first of them to the head."""
        start = st.message_count - count
        if count:
            first = await self._rseq_of(c, st, KIND_MESSAGE, start)
        else:  # still check the head record
            first = max(0, st.record_count - 1)
        rows = await self._rows(c, st.id, first, None)
        data = verify_span(
            self._s,
            self.url,
            st.id,
            rows,
            first=first,
            prev=None if first else GENESIS,
            head=(st.record_count, st.head_mac),
        )
        msgs = messages_of(data, self.url, st.id, start) if count else ()
        if len(msgs) != count:
            raise SessionTampered(self.url, st.id, -1, "messages are missing before the head")
        return msgs

    async def _summary(self, c: Conn, st: StateRow) -> Message | None:
        row = await _one(
            c,
            f"SELECT {_ROW} FROM records WHERE session_id=%s AND kind=%s ORDER BY key DESC LIMIT 1",
            (st.id, KIND_SUMMARY),
        )
        return latest_summary(row, st, self._s, self.url)

    async def _span(self, c: Conn, st: StateRow, kind: str, lo: int, hi: int) -> Chain:
        first = await self._rseq_of(c, st, kind, lo)
        last = await self._rseq_of(c, st, kind, hi)
        rows = await self._rows(c, st.id, first, last)
        head = (st.record_count, st.head_mac) if last == st.record_count - 1 else None
        return verify_span(
            self._s, self.url, st.id, rows, first=first, prev=None if first else GENESIS, head=head
        )

    async def messages(
        self, session_id: str, offset: int = 0, limit: int = 100
    ) -> tuple[Message, ...]:
        """Messages ``offset <= seq < offset + limit``, verified."""
        validate_session_id(session_id)
        offset, limit = max(0, offset), max(0, limit)
        async with self._tx(read=True) as c:
            st = await self._state(c, session_id)
            end = min(offset + limit, st.message_count)
            if offset >= end:
                return ()
            data = await self._span(c, st, KIND_MESSAGE, offset, end - 1)
        return messages_of(data, self.url, session_id, offset)

    async def turns(
        self, session_id: str, offset: int = 0, limit: int = 100
    ) -> tuple[TurnRecord, ...]:
        """Turn records ``offset+1 ... offset+limit``, verified."""
        validate_session_id(session_id)
        offset, limit = max(0, offset), max(0, limit)
        async with self._tx(read=True) as c:
            st = await self._state(c, session_id)
            end = min(offset + limit, st.turn_count)
            if offset >= end:
                return ()
            data = await self._span(c, st, KIND_TURN, offset + 1, end)
        return turns_of(data, self.url, session_id, offset + 1)

    async def _whole(self, sid: str) -> tuple[StateRow, Parts, Checkpoint | None]:
        """The whole session, verified in a worker thread (long chains are CPU work)."""
        async with self._tx(read=True) as c:
            st = await self._state(c, sid)
            rows = await self._rows(c, sid, 0, None)
            cp = await self._checkpoint(c, sid)
        return st, await anyio.to_thread.run_sync(self._check_whole, st, rows), cp

    def _check_whole(self, st: StateRow, rows: list[Row]) -> Parts:
        chain = verify_span(
            self._s,
            self.url,
            st.id,
            rows,
            first=0,
            prev=GENESIS,
            head=(st.record_count, st.head_mac),
        )
        return split_chain(chain, self.url, st.id)

    async def verify(self, session_id: str) -> int:
        """Verify the whole chain, the session state and the checkpoint."""
        validate_session_id(session_id)
        st, _, _ = await self._whole(session_id)
        return st.record_count

    # ------------------------------------------------------------------ export

    async def export(self, session_id: str) -> dict[str, Any]:
        """The signed export document of the whole session (verified as it is read)."""
        validate_session_id(session_id)
        st, parts, cp = await self._whole(session_id)
        return await anyio.to_thread.run_sync(sign_doc, st.to_meta(self.url), parts, cp, self._s)

    async def import_(self, doc: Mapping[str, Any], *, replace: bool = False) -> SessionMeta:
        """Verify ``doc`` completely, then store it in one transaction, re-chained."""
        # Checking a large document is CPU work: keep it off the event loop.
        plan = await anyio.to_thread.run_sync(parse_doc, doc, self._s, self._limits, self.url)
        sid = plan.meta.id
        self._forget(sid)
        async with self._tx() as c:
            row = await _one(c, "SELECT version FROM sessions WHERE id=%s FOR UPDATE", (sid,))
            if row is not None and not replace:
                raise already_exists(self.url, sid)
            if row is not None:
                await _wipe(c, sid)
            # Replacing bumps the version past the old one: its owner is fenced out.
            first = await _first_version(c, sid) if row is None else int(row[0]) + 1
            state, rows = plan_import(plan, self._s, first)
            await self._insert_state(c, state)
            await self._insert(c, sid, rows)
            if plan.checkpoint is not None:
                body, mac = checkpoint_body(sid, plan.checkpoint, self._s, self.url)
                await c.execute("INSERT INTO checkpoints VALUES (%s,%s,%s)", (sid, body, mac))
        return state.to_meta(self.url)


async def _set_up_group_connection(conn: Conn) -> None:
    """Group commit connections give up on a row lock held elsewhere after 100 ms: the
    group then fails, writing nothing, and its turns go one by one on the locked path,
    so one busy session waits alone instead of holding up the group.

    They also keep one generic plan of :data:`_GROUP_SQL` (the same plan suits every
    group size) instead of planning it again on every execution.
    """
    await conn.execute("SET lock_timeout = 100")
    await conn.execute("SET plan_cache_mode = force_generic_plan")


async def _one(c: Conn, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
    cur = await c.execute(sql, params)
    return await cur.fetchone()


async def _first_version(c: Conn, sid: str) -> int:
    """The version a session made under ``sid`` starts at: past any it had before."""
    row = await _one(c, "SELECT version FROM fences WHERE id=%s", (sid,))
    return 0 if row is None else int(row[0]) + 1


async def _wipe(c: Conn, sid: str) -> bool:
    # Keep the last version: a session made again under this id starts above it, so a
    # stale owner's token can never match the new session's.
    await c.execute(
        "INSERT INTO fences SELECT id, version FROM sessions WHERE id=%s "
        "ON CONFLICT (id) DO UPDATE SET version = GREATEST(fences.version, EXCLUDED.version)",
        (sid,),
    )
    await c.execute("DELETE FROM records WHERE session_id=%s", (sid,))
    await c.execute("DELETE FROM checkpoints WHERE session_id=%s", (sid,))
    cur = await c.execute("DELETE FROM sessions WHERE id=%s", (sid,))
    return cur.rowcount > 0
