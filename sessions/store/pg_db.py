"""A PostgreSQL store's connections: the probe, the pools, transactions, the schema.

:class:`PgDatabase` owns two pools of autocommit connections: the main one, where
every transaction of the store runs (:meth:`PgDatabase.tx`), and the group commits'
own (:mod:`sessions.store.pg_group`), whose connections never wait long for a row
lock.  The small helpers at the end are statements several parts of the store share.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any, Final

import anyio
import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from sessions.errors import StoreError, StoreLocked, StoreReadOnly, StoreVersionUnsupported
from sessions.store.durable import STATE_COLUMNS, StateRow
from sessions.store.migrations import POSTGRES, SCHEMA_VERSION
from sessions.store.pg_group import set_up_group_connection
from sessions.store.redact import scrub
from sessions.store.signing import Row

__all__ = [
    "Conn",
    "PgDatabase",
    "connection_lost",
    "first_version",
    "insert_records",
    "insert_state",
    "one",
    "store_identity",
    "wipe",
]

Conn = psycopg.AsyncConnection[Any]
_MIGRATION_LOCK: Final = 0x7475726E  # "turn": serialises schema creation across processes
_NOT_OPEN: Final = "store is not open (call open() or use 'async with')"
# The parameters that choose which database and schema a connection reaches, unlike
# how it gets there (password, TLS, timeouts, application name), which two processes
# sharing one store may spell differently.
_WHERE: Final = ("host", "hostaddr", "port", "dbname", "user", "options")
_IN_TX: ContextVar[bool] = ContextVar("turngraph_pg_in_tx", default=False)
"""Set while this task runs a transaction: a nested one takes no second place in the
queue (it could wait for places that all wait for it)."""


class PgDatabase:
    """The pools of one store; ``url`` (password removed) names it in errors."""

    def __init__(
        self,
        url: str,
        conninfo: str,
        *,
        max_connections: int,
        timeout: float,
        create: bool,
        lock_timeout: float = 10.0,
    ) -> None:
        self.url, self._conninfo = url, conninfo
        self._max, self._timeout, self._may_create = max_connections, timeout, create
        self._lock_ms = max(1, round(lock_timeout * 1000))
        self.pool: AsyncConnectionPool | None = None
        self.group_pool: AsyncConnectionPool | None = None
        self._places: anyio.Semaphore | None = None
        """One place per main-pool connection (see the module): the queue."""

    async def open(self, group_connections: int, *, before: Callable[[], None]) -> None:
        """Probe the server, open the pools, create or migrate the schema.

        The first connection is made directly, bounded by the timeout (a
        ``connect_timeout`` in the URL wins), so an unreachable server fails at once
        with the real reason as one :class:`~engine.errors.StoreError`, instead of the
        pool retrying and logging until its own timeout.  ``before`` runs once the
        server has answered, before any pool opens (the store loads its key there).
        """
        await self._probe()
        before()
        self._places = anyio.Semaphore(self._max)
        self.pool = await self._open_pool(self._max, self._set_up)
        try:
            if group_connections:
                self.group_pool = await self._open_pool(group_connections, set_up_group_connection)
            async with self.tx() as c:
                await _migrate(self.url, c, create=self._may_create)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the pools.  Idempotent."""
        pools = (self.pool, self.group_pool)
        self.pool = self.group_pool = None
        for pool in pools:
            if pool is not None:
                await pool.close()

    async def _set_up(self, conn: Conn) -> None:
        """A main-pool connection waits at most ``lock_timeout`` for a row lock."""
        await conn.execute(f"SET lock_timeout = {self._lock_ms}")

    async def recover(self) -> None:
        """Replace the pooled connections that died (the server restarted, a proxy or
        an administrator cut them) before the next transaction borrows one."""
        try:
            for pool in (self.pool, self.group_pool):
                if pool is not None:
                    await pool.check()
        except psycopg.Error as exc:
            raise StoreError(self.url, f"{type(exc).__name__}: {exc}") from exc

    @asynccontextmanager
    async def tx(self, *, read: bool = False) -> AsyncIterator[Conn]:
        """One transaction on a pooled connection (``read``: ``REPEATABLE READ``, so a
        concurrent append cannot make a chain look truncated); psycopg errors become
        StoreError."""
        if self.pool is None:
            raise StoreError(self.url, _NOT_OPEN)
        try:
            async with self._place(), self._pool().connection() as conn, conn.transaction():
                if read:
                    await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                yield conn
        except psycopg.errors.LockNotAvailable as exc:
            raise StoreLocked(
                self.url, f"gave up waiting {self._lock_ms} ms for a row lock (lock_timeout)"
            ) from exc
        except (psycopg.errors.ReadOnlySqlTransaction, psycopg.errors.InsufficientPrivilege) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise StoreReadOnly(self.url, f"read-only: writes are refused ({reason})") from exc
        except psycopg.Error as exc:
            raise StoreError(self.url, f"{type(exc).__name__}: {exc}") from exc

    def _pool(self) -> AsyncConnectionPool:
        """The main pool, read once a place is held: the store may have closed while
        this call queued (its waiters then fail as on a closed store)."""
        if self.pool is None:
            raise StoreError(self.url, _NOT_OPEN)
        return self.pool

    @asynccontextmanager
    async def _place(self) -> AsyncIterator[None]:
        """Wait, without a deadline, for a place among the pool's connections (a
        nested transaction of this task uses its outer one's place)."""
        if _IN_TX.get() or self._places is None:
            yield
            return
        async with self._places:
            token = _IN_TX.set(True)
            try:
                yield
            finally:
                _IN_TX.reset(token)

    def group_connection(self) -> Any:
        """A connection of the group commits' pool (an async context manager)."""
        if self.group_pool is None:
            raise StoreError(self.url, _NOT_OPEN)
        return self.group_pool.connection()

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
            reason = scrub(str(exc), self._conninfo)
            raise StoreError(self.url, f"cannot connect to PostgreSQL: {reason}") from None
        return pool

    async def _probe(self) -> None:
        """One direct connection, closed at once; failure is a one-reason StoreError."""
        extra: dict[str, Any] = {}
        try:
            if "connect_timeout" not in conninfo_to_dict(self._conninfo):
                extra["connect_timeout"] = max(2, math.ceil(self._timeout))  # libpq: >= 2 s
            conn = await psycopg.AsyncConnection.connect(self._conninfo, **extra)
        except psycopg.Error as exc:
            # `from None`: the driver's text may quote the connection string it rejected
            reason = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            reason = scrub(reason, self._conninfo)
            raise StoreError(self.url, f"cannot connect to PostgreSQL: {reason}") from None
        await conn.close()


def store_identity(conninfo: str) -> str:
    """The name of the store ``conninfo`` reaches (its rollback witness is kept under it):
    the same however the password is given (``user:pw@``, ``?password=``, none and
    ``PGPASSWORD``) and whatever else the URL adds, so that every process of this machine
    checks and advances one witness.  It holds no password."""
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.Error:  # open() refuses it with the driver's reason
        params = {}
    where = " ".join(f"{k}={params[k]}" for k in _WHERE if params.get(k) is not None)
    return f"postgresql: {where}"


async def _migrate(url: str, c: Conn, *, create: bool) -> None:
    """Create or migrate the schema in transaction ``c``; refuse a newer one.  Without
    ``create`` a database without turngraph's tables is ``no such store``."""
    await c.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
    found = await one(c, "SELECT to_regclass('turngraph_schema')", ())
    if found is None or found[0] is None:
        if not create:
            raise StoreError(url, "no such store: this database has no turngraph tables")
        await c.execute("CREATE TABLE IF NOT EXISTS turngraph_schema (version INTEGER)")
    row = await one(c, "SELECT max(version) FROM turngraph_schema", ())
    version = int(row[0] or 0) if row else 0
    if version == SCHEMA_VERSION:
        return  # current: no DDL at all, so a read-only role or transaction can open it
    if version > SCHEMA_VERSION:
        raise StoreVersionUnsupported(
            url,
            f"schema version {version} is newer than this code supports "
            f"({SCHEMA_VERSION}); upgrade turngraph to open it",
        )
    for step in range(version + 1, SCHEMA_VERSION + 1):
        for statement in POSTGRES[step]:
            await c.execute(statement)
    if version != SCHEMA_VERSION:
        await c.execute("DELETE FROM turngraph_schema")
        await c.execute("INSERT INTO turngraph_schema VALUES (%s)", (SCHEMA_VERSION,))


def connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` (or the psycopg error it wraps) means the connection broke, so a
    transaction in flight may or may not have committed."""
    cause = exc if isinstance(exc, psycopg.Error) else exc.__cause__
    if not isinstance(cause, psycopg.OperationalError):
        return False
    state = cause.sqlstate
    # No SQLSTATE: the client lost the socket.  08: connection exceptions; 57P: the
    # server shut the session down (terminated backend, restart).
    return state is None or state.startswith(("08", "57P"))


async def one(c: Conn, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """The first row of ``sql``, or ``None``."""
    cur = await c.execute(sql, params)
    return await cur.fetchone()


async def first_version(c: Conn, sid: str) -> int:
    """The version a session made under ``sid`` starts at: past any it had before."""
    row = await one(c, "SELECT version FROM fences WHERE id=%s", (sid,))
    return 0 if row is None else int(row[0]) + 1


async def insert_records(c: Conn, sid: str, rows: list[Row]) -> None:
    """Append chain records of ``sid``."""
    async with c.cursor() as cur:
        await cur.executemany(
            "INSERT INTO records VALUES (%s,%s,%s,%s,%s,%s,%s)", [(sid, *r) for r in rows]
        )


async def insert_state(c: Conn, st: StateRow) -> None:
    """Insert a new session row."""
    await c.execute(
        f"INSERT INTO sessions ({STATE_COLUMNS}) VALUES ({','.join(['%s'] * 18)})",
        st.values(),
    )


async def wipe(c: Conn, sid: str) -> bool:
    """Delete a session and its records; False if it did not exist."""
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
