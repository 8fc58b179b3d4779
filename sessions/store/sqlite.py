"""The embedded default store: one SQLite file, WAL mode, safe across processes.

``sqlite3`` blocks, so calls run in the store's own database thread
(:class:`~sessions.store.dbthread.DBThread`), one at a time and in order, and the one
connection is never used by two threads at once.  Writes take ``BEGIN IMMEDIATE`` so two
processes on one file serialise at the start of a transaction instead of failing at
commit, and ``busy_timeout`` makes the loser wait rather than error.

The small writes of a turn (its commit, checkpoints, state) run in the event loop's own
thread instead when that delays nobody: no other callback is ready, the database thread
is idle, and the write lock is free at once (another process holding it sends the write
to the thread, which waits).  The hand-off to the thread and back costs 60-150 µs on the
team's VM, as much as the commit's own work.  The WAL is checkpointed in the database
thread, so no write runs a checkpoint in the loop.
"""

from __future__ import annotations

import gc
import hmac
import os
import sqlite3
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from operator import attrgetter
from pathlib import Path
from types import TracebackType
from typing import Any, Final, TypeVar

import anyio

from sessions.errors import (
    SessionExists,
    SessionNotFound,
    SessionTampered,
    StoreCorrupt,
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
from sessions.store.codec import (
    KIND_MESSAGE,
    KIND_SUMMARY,
    KIND_TURN,
    messages_of_bodies,
    validate_session_id,
)
from sessions.store.dbthread import DBThread, nothing_else_ready
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
from sessions.store.export import ImportLimits, already_exists, parse_doc, sign_doc
from sessions.store.lease import Clock, check_token, grant, lease_end, not_holder
from sessions.store.migrations import SCHEMA_VERSION, SQLITE
from sessions.store.signing import GENESIS, Chain, Row, Signer, Slim, load_key, verify_span

__all__ = ["SQLiteStore"]

T = TypeVar("T")
_ROW: Final = "rseq, kind, key, body, prev_mac, mac"
_HEADER: Final = b"SQLite format 3\x00"
_END: Final = 2**62  # past any rseq: "through the head"
CHECKPOINT_WRITES: Final = 64
"""Write transactions after which a background WAL checkpoint is queued (a turn's
commit writes 4-8 pages, so the log stays near SQLite's default 1,000 pages)."""
AUTOCHECKPOINT_PAGES: Final = 4000
"""SQLite's automatic checkpoint, a backstop: the background ones keep the log far below."""
REMEMBERED_MAX: Final = 4096
"""Sessions whose last written or verified state row the store keeps (see ``_swap``)."""

_SIGNED: Final = STATE_COLUMNS.split(", ")[1:15]
"""Every signed column but ``id``, and ``state_mac``: what ``_swap`` requires unchanged."""
_SET: Final = "UPDATE sessions SET " + ", ".join(f"{c}=?" for c in WRITTEN_COLUMNS)
_SAVE: Final = f"{_SET} WHERE id=?"
_SWAP: Final = f"{_SET} WHERE id=? AND version=? AND " + " AND ".join(f"{c}=?" for c in _SIGNED)
_INSERTS: Final = tuple(
    "INSERT INTO records VALUES " + ",".join(["(?,?,?,?,?,?,?)"] * n) for n in range(1, 9)
)
"""``INSERT`` statements of 1 to 8 rows (a turn writes 3 or so)."""
_NEXT_OF_KIND: Final = (
    "SELECT rseq, key FROM records WHERE session_id=? AND rseq>=? AND rseq<? AND kind=? "
    "ORDER BY rseq LIMIT 1"
)
_changed: Final[Callable[[StateRow], tuple[Any, ...]]] = attrgetter(*WRITTEN_COLUMNS)
_signed: Final[Callable[[StateRow], tuple[Any, ...]]] = attrgetter(*_SIGNED)


class SQLiteStore:
    """A :class:`~sessions.store.base.Store` in one SQLite file.

    ``synchronous`` is ``"FULL"`` by default: in WAL mode that fsyncs the log at every
    commit, so a turn reported committed survives power loss; ``"NORMAL"``
    (``sqlite:///x.db?synchronous=NORMAL``) survives a killed process but may lose the
    last commits to a power cut or an OS crash, and is offered for benchmarks and
    throwaway stores.

    ``inline_writes`` (default on; ``?inline_writes=off``) lets a turn's small writes
    run in the event loop's thread when that delays nobody (see the module's
    docstring); off, every call goes through the database thread and the loop never
    blocks on the disk, for a hand-off of 60-150 µs per write.

    Measured on the team's 2-core VM, one 2-message turn with a 7-node trace: p50
    0.25-0.28 ms with FULL in the loop's thread (0.4 ms through the database thread),
    of which the fsync of its ~5 WAL pages is 0.15-0.16 ms; 0.09 ms with NORMAL; flat
    over 10,000 turns.  Loading all of a 10,000-message session, verified: 25-29 ms.

    A turn commit reads nothing: the store remembers each session's row as it last
    wrote or verified it, and writes only if the stored row is still exactly that one
    (:meth:`_swap`); anything else takes the careful path (read, verify, fence).
    """

    def __init__(
        self,
        url: str,
        path: str | Path,
        *,
        secret: bytes | str | None = None,
        limits: ImportLimits | None = None,
        synchronous: str = "FULL",
        busy_timeout: float = 10.0,
        create: bool = True,
        inline_writes: bool = True,
        clock: Clock = time.time,
    ) -> None:
        self.url = url
        self._clock = clock
        self.path = Path(path)
        self._may_create = create
        self._secret = secret
        self._limits = limits or ImportLimits()
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise StoreError(url, f"synchronous must be FULL, NORMAL or EXTRA, not {synchronous!r}")
        self._synchronous = synchronous.upper()
        self._busy_ms = int(busy_timeout * 1000)
        self._db: DBThread | None = None
        self._inline = inline_writes
        self._busy_now = self._busy_ms  # the connection's busy timeout at the moment
        self._writes = 0  # write transactions since the last checkpoint was queued
        self._unsaved = False  # written since the last checkpoint ran
        self.checkpoints = 0
        """How many background WAL checkpoints ran (tests look at it)."""
        self._conn: sqlite3.Connection | None = None
        self._signer: Signer | None = None
        self._states: dict[str, StateRow] = {}
        """Per session, the state row as this store last wrote or verified it (never
        modified: a write changes a copy).  Only a hint: see :meth:`_swap`."""

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Create the file (and its directory) if needed, set pragmas, migrate.

        With ``create=False`` (read-only tools) a missing file raises
        :class:`~engine.errors.StoreError` ``no such store: PATH`` and nothing is made:
        no folder, no database, no key file.
        """
        if self._db is not None:
            return
        if not self._may_create and not self.path.exists():
            raise StoreError(self.url, f"no such store: {self.path}")
        self._signer = Signer(load_key(self._secret))
        self._db = DBThread(f"turngraph-sqlite:{self.path.name}")
        try:
            self._conn = await self._run(self._connect)
        except BaseException:
            db, self._db = self._db, None
            await db.stop()
            raise

    async def close(self) -> None:
        """Let pending calls finish, close the connection, end the thread.  Idempotent."""
        db, self._db = self._db, None
        if db is not None:
            # Shielded: a cancelled close still closes the file and ends the thread.
            with anyio.CancelScope(shield=True):
                try:
                    await db.run(self._disconnect)
                finally:
                    await db.stop()

    def _disconnect(self) -> None:
        self._states.clear()
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if self._unsaved:
                # SQLite checkpoints at close only as the file's last connection; with
                # another still open, what this store wrote would stay in the log, and
                # short-lived stores (one CLI run each) would grow it without end.
                with suppress(sqlite3.Error):
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        finally:
            conn.close()

    async def __aenter__(self) -> SQLiteStore:
        await self.open()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _connect(self) -> sqlite3.Connection:
        self._precheck()
        if self._may_create:
            self._create_private()
            target = str(self.path)
        else:  # mode=rw: a file deleted since open() checked is an error, not re-made
            target = f"{self.path.absolute().as_uri()}?mode=rw"
        conn = sqlite3.connect(
            target,
            isolation_level=None,
            check_same_thread=False,
            timeout=self._busy_ms / 1000,
            uri=not self._may_create,
        )
        try:
            conn.execute(f"PRAGMA busy_timeout={self._busy_ms}")
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: fsync the WAL at each commit so a committed turn is durable.
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            # Checkpoints run in the background (_checkpoint), not inside a commit;
            # SQLite's own, inside the commit, is only a backstop for a log that grew
            # anyway (writers that never reach CHECKPOINT_WRITES, a reader pinning it).
            conn.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
            conn.execute("PRAGMA foreign_keys=ON")
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _create_private(self) -> None:
        """Create a new database file readable by its owner only (it holds conversations);
        SQLite gives its -wal and -shm files the same mode."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with suppress(FileExistsError):
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))

    def _precheck(self) -> None:
        """Refuse a file that is not a SQLite database, or visibly truncated, up front."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size == 0 or self.path.is_dir():
            return
        with open(self.path, "rb") as f:
            header = f.read(100)
        if len(header) < 100 or not header.startswith(_HEADER):
            raise StoreCorrupt(self.url, f"{self.path}: not a SQLite database")
        page = int.from_bytes(header[16:18], "big")
        page = 65536 if page == 1 else page
        pages = int.from_bytes(header[28:32], "big")
        valid = header[24:28] == header[92:96]
        wal = self.path.with_name(self.path.name + "-wal")
        if (not wal.exists() or wal.stat().st_size == 0) and (
            size % page or (valid and size < pages * page)
        ):
            raise StoreCorrupt(self.url, f"{self.path}: database file is truncated")

    def _migrate(self, conn: sqlite3.Connection) -> None:
        with _tx(conn, immediate=True):
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreVersionUnsupported(
                    self.url,
                    f"{self.path}: schema version {version} is newer than this "
                    f"code supports ({SCHEMA_VERSION}); upgrade turngraph to open it",
                )
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for statement in SQLITE[step]:
                    conn.execute(statement)
            if version != SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    # ------------------------------------------------------------------ plumbing

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._db is None:
            raise StoreError(self.url, "store is not open (call open() or use 'async with')")
        return await self._db.run(self._call, fn, args)

    async def _run_write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run the small write ``fn(*args)`` here if that delays nobody, else in the thread.

        Here means in the event loop's thread, blocking it for the commit (0.1-0.3 ms):
        only when no other callback is ready, the database thread is idle and the write
        lock is free at once.  A write that finds the lock taken (another process) was
        rolled back whole and goes to the thread, which waits ``busy_timeout`` for it.
        """
        db = self._db
        if db is not None and self._inline and nothing_else_ready() and db.claim():
            try:
                done, result = self._here(fn, args)
            finally:
                db.release()
            if done:
                return result  # type: ignore[return-value]  # set when done
        return await self._run(fn, *args)

    def _here(self, fn: Callable[..., T], args: tuple[Any, ...]) -> tuple[bool, T | None]:
        """``(True, fn(*args))``, or ``(False, None)`` if the database was busy (nothing
        written: every write is one transaction, rolled back on error)."""
        conn = self._c
        if self._busy_now:
            conn.execute("PRAGMA busy_timeout=0")  # never wait for a lock in the loop
            self._busy_now = 0
        try:
            return True, fn(*args)
        except sqlite3.OperationalError as exc:
            if _busy(exc) and not conn.in_transaction:
                return False, None
            raise self._translate(exc) from exc
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        try:
            conn = self._conn
            if conn is not None and self._busy_now != self._busy_ms:
                conn.execute(f"PRAGMA busy_timeout={self._busy_ms}")
                self._busy_now = self._busy_ms
            return fn(*args)
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc

    def _translate(self, exc: sqlite3.Error) -> StoreError:
        text = str(exc)
        if _busy(exc):
            return StoreError(self.url, f"{self.path}: database is locked ({text})")
        if isinstance(exc, sqlite3.DatabaseError) and (
            "not a database" in text or "malformed" in text or "corrupt" in text
        ):
            return StoreCorrupt(self.url, f"{self.path}: {text}")
        return StoreError(self.url, f"{self.path}: {type(exc).__name__}: {text}")

    @contextmanager
    def _write(self) -> Iterator[None]:
        """A write transaction (``BEGIN IMMEDIATE``); every :data:`CHECKPOINT_WRITES`
        of them queue a background checkpoint."""
        with _tx(self._c, immediate=True):
            yield
        self._writes += 1
        self._unsaved = True
        if self._writes >= CHECKPOINT_WRITES and self._db is not None:
            self._writes = 0
            self._db.post(_weak(self._checkpoint))

    def _checkpoint(self) -> None:
        """Copy the WAL back into the database, in the database thread.

        SQLite would otherwise checkpoint inside the commit that pushes the log past
        1,000 pages, and that commit would take milliseconds; here nobody waits for it
        but a write that arrives meanwhile.  This process writes nothing during it, so
        the checkpoint catches up with the log and the next write starts the log over
        from its beginning (a log that only grows makes every fsync slower).
        ``PASSIVE`` never waits for other processes' readers or writers.
        """
        if self._conn is not None:
            self._unsaved = False  # before: a write made during it sets it again
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            self.checkpoints += 1

    @property
    def _c(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(self.url, "store is not open (call open() or use 'async with')")
        return self._conn

    @property
    def _s(self) -> Signer:
        if self._signer is None:
            raise StoreError(self.url, "store is not open (call open() or use 'async with')")
        return self._signer

    def _state(self, sid: str, *, check: bool = True) -> StateRow:
        row = self._c.execute(f"SELECT {STATE_COLUMNS} FROM sessions WHERE id=?", (sid,)).fetchone()
        if row is None:
            raise SessionNotFound(sid, "no such session")
        state = StateRow.of(row)
        return state.check(self._s, self.url) if check else state

    def _fence(self, sid: str, token: int) -> None:
        row = self._c.execute("SELECT version FROM sessions WHERE id=?", (sid,)).fetchone()
        if row is None:
            raise SessionNotFound(sid, "no such session")
        check_token(self.url, sid, token, row[0])

    def _save_state(self, st: StateRow) -> None:
        self._c.execute(_SAVE, (*_changed(st), st.id))

    def _advance(self, sid: str, token: int, change: Callable[[StateRow], list[Row]]) -> StateRow:
        """One fenced write to ``sid``: ``change`` advances its state and plans the records
        to append; both are written.  Returns the new state (for :meth:`_remember`, once
        the transaction has committed).

        Without a usable remembered row (or if :meth:`_swap` refuses it) this reads the
        row, verifies its MAC and fences it first, as every write did before the
        remembered rows existed, so every error is the one that path raises.
        """
        swapped = self._swap(sid, token, change)
        if swapped is None:
            self._forget(sid)
            st = self._state(sid).fence(self.url, token)
            rows = change(st)
            self._save_state(st)
        else:
            st, rows = swapped
        self._insert(sid, rows)
        return st

    def _swap(
        self, sid: str, token: int, change: Callable[[StateRow], list[Row]]
    ) -> tuple[StateRow, list[Row]] | None:
        """The write's fast path: no read, no MAC check of the old row.

        The store remembers each session's row as it last wrote or verified it.  A copy
        of it is changed, and the ``UPDATE`` matches only if the stored row still is
        exactly that one (every signed column and the state MAC) under ``token``: so
        nobody else wrote it since (another process, an edit behind the store's back,
        a new lease, which bumps the version), and the remembered row, verified or
        written by us, vouches for it.  The check and the write are one statement in
        the write transaction, so nothing can slip in between.

        ``None`` (nothing written) sends the caller to the careful path; so does an
        error of ``change``, which may come from a stale remembered row and is raised
        again, or not, on the row as read and verified.
        """
        old = self._states.get(sid)
        if old is None or old.version != token:
            return None
        new = old.copy()
        try:
            rows = change(new)
        except StoreError:
            return None
        args = (*_changed(new), sid, token, *_signed(old))
        return (new, rows) if self._c.execute(_SWAP, args).rowcount == 1 else None

    def _forget(self, sid: str) -> None:
        """Drop what this store remembers of ``sid`` (its row may change behind us)."""
        self._states.pop(sid, None)

    def _remember(self, st: StateRow) -> None:
        """Keep ``st`` (written or verified, and committed) as its session's latest row."""
        states = self._states
        states.pop(st.id, None)
        states[st.id] = st
        if len(states) > REMEMBERED_MAX:
            del states[next(iter(states))]  # the least recently used

    def _insert(self, sid: str, rows: list[Row]) -> None:
        if 0 < len(rows) <= len(_INSERTS):  # a turn's few rows: one statement, one step
            self._c.execute(_INSERTS[len(rows) - 1], [v for r in rows for v in (sid, *r)])
        else:
            self._c.executemany(_INSERTS[0], [(sid, *r) for r in rows])

    # ------------------------------------------------------------------ sessions

    async def create(self, meta: SessionMeta) -> SessionMeta:
        """Create a session; ``SessionExists`` if the id is taken."""
        validate_session_id(meta.id)
        return await self._run(self._create, meta)

    def _create(self, meta: SessionMeta) -> SessionMeta:
        state = StateRow.new(meta, self._s, self.url)
        with self._write():
            if self._c.execute("SELECT 1 FROM sessions WHERE id=?", (meta.id,)).fetchone():
                raise SessionExists(meta.id, "a session with this id already exists")
            state.version = self._first_version(meta.id)
            self._insert_state(state)
        self._remember(state)
        return state.to_meta(self.url)

    def _insert_state(self, st: StateRow) -> None:
        self._c.execute(
            f"INSERT INTO sessions ({STATE_COLUMNS}) VALUES ({','.join('?' * 18)})",
            st.values(),
        )

    async def exists(self, session_id: str) -> bool:
        """Whether the session exists."""
        validate_session_id(session_id)
        return await self._run(self._exists, session_id)

    def _exists(self, sid: str) -> bool:
        return self._c.execute("SELECT 1 FROM sessions WHERE id=?", (sid,)).fetchone() is not None

    async def list_sessions(self, offset: int = 0, limit: int = 100) -> tuple[SessionMeta, ...]:
        """Sessions by id, each state MAC verified; a row that fails is listed as
        ``SessionMeta(id, tampered=True)``."""
        return await self._run(self._list, offset, limit)

    def _list(self, offset: int, limit: int) -> tuple[SessionMeta, ...]:
        rows = self._c.execute(
            f"SELECT {STATE_COLUMNS} FROM sessions ORDER BY id LIMIT ? OFFSET ?", (limit, offset)
        ).fetchall()
        return tuple(listed_meta(StateRow.of(r), self._s, self.url) for r in rows)

    async def delete(self, session_id: str) -> bool:
        """Delete a session and all its records; False if it did not exist."""
        validate_session_id(session_id)
        return await self._run(self._delete, session_id)

    def _delete(self, sid: str) -> bool:
        self._forget(sid)
        with self._write():
            return self._wipe(sid)

    # ------------------------------------------------------------------ leases

    async def acquire(self, session_id: str, owner: str, ttl: float) -> int:
        """Take or renew the lease; ``SessionBusy`` if another owner's lease is live."""
        validate_session_id(session_id)
        return await self._run(self._acquire, session_id, owner, ttl)

    def _acquire(self, sid: str, owner: str, ttl: float) -> int:
        with self._write():
            row = self._c.execute(
                "SELECT version, owner, lease_expires FROM sessions WHERE id=?", (sid,)
            ).fetchone()
            if row is None:
                raise SessionNotFound(sid, "no such session")
            version, expires = grant(sid, row[0], row[1], row[2], owner, ttl, self._clock())
            self._c.execute(
                "UPDATE sessions SET version=?, owner=?, lease_expires=? WHERE id=?",
                (version, owner, expires, sid),
            )
            return int(version)

    async def renew(self, session_id: str, owner: str, token: int, ttl: float) -> None:
        """Extend the lease; ``Fenced`` if ``token`` is stale."""
        validate_session_id(session_id)
        await self._run(self._renew, session_id, owner, token, ttl)

    def _renew(self, sid: str, owner: str, token: int, ttl: float) -> None:
        with self._write():
            n = self._c.execute(
                "UPDATE sessions SET lease_expires=? WHERE id=? AND version=? AND owner=?",
                (lease_end(self._clock, ttl), sid, token, owner),
            ).rowcount
            if n == 0:
                self._fence(sid, token)
                raise not_holder(self.url, sid, token)

    async def release(self, session_id: str, owner: str, token: int) -> None:
        """Give the lease up; its token goes stale.  No error if already lost."""
        validate_session_id(session_id)
        await self._run(self._release, session_id, owner, token)

    def _release(self, sid: str, owner: str, token: int) -> None:
        self._forget(sid)  # its token is stale now: no write will match it
        with self._write():
            self._c.execute(
                "UPDATE sessions SET owner=NULL, lease_expires=0, version=version+1 "
                "WHERE id=? AND version=? AND owner=?",
                (sid, token, owner),
            )

    # ------------------------------------------------------------------ writes

    async def append_turn(self, session_id: str, commit: TurnCommit, *, token: int) -> None:
        """Append one turn in one transaction; ``Fenced`` (nothing written) if stale."""
        validate_session_id(session_id)
        await self._run_write(self._append_turn, session_id, commit, token)

    def _append_turn(self, sid: str, commit: TurnCommit, token: int) -> None:
        def change(st: StateRow) -> list[Row]:
            return plan_turn(st, commit, self._s, self.url, now=time.time())

        with self._write():
            st = self._advance(sid, token, change)
            # A turn's commit ends its checkpoint, whoever saved it: a save does not
            # change the session row, so nothing here could prove there is none.
            self._c.execute("DELETE FROM checkpoints WHERE session_id=?", (sid,))
        self._remember(st)

    async def append_summary(
        self, session_id: str, summary: Message, upto_seq: int, *, token: int
    ) -> None:
        """Append a compaction summary covering messages ``<= upto_seq``."""
        validate_session_id(session_id)
        await self._run_write(self._append_summary, session_id, summary, upto_seq, token)

    def _append_summary(self, sid: str, summary: Message, upto: int, token: int) -> None:
        def change(st: StateRow) -> list[Row]:
            return plan_summary(st, summary, upto, self._s, self.url, now=time.time())

        with self._write():
            st = self._advance(sid, token, change)
        self._remember(st)

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
        session row is verified, changed and re-signed; no record is appended."""
        validate_session_id(session_id)
        values = (working_memory, goals, cognitive_mode)
        await self._run_write(self._update_state, session_id, values, token)

    def _update_state(self, sid: str, values: tuple[Any, Any, Any], token: int) -> None:
        wm, goals, mode = values

        def change(st: StateRow) -> list[Row]:
            now = time.time()
            plan_state(
                st, self._s, self.url, working_memory=wm, goals=goals, cognitive_mode=mode, now=now
            )
            return []

        with self._write():
            st = self._advance(sid, token, change)
        self._remember(st)

    async def save_checkpoint(self, session_id: str, cp: Checkpoint, *, token: int) -> None:
        """Save (replace) the in-flight turn's checkpoint."""
        validate_session_id(session_id)
        body, mac = checkpoint_body(session_id, cp, self._s, self.url)
        await self._run_write(self._save_checkpoint, session_id, body, mac, token)

    def _save_checkpoint(self, sid: str, body: str, mac: bytes, token: int) -> None:
        with self._write():
            self._fence(sid, token)
            self._c.execute("INSERT OR REPLACE INTO checkpoints VALUES (?,?,?)", (sid, body, mac))

    async def clear_checkpoint(self, session_id: str, *, token: int) -> None:
        """Drop the checkpoint (the turn was abandoned)."""
        validate_session_id(session_id)
        await self._run_write(self._clear_checkpoint, session_id, token)

    def _clear_checkpoint(self, sid: str, token: int) -> None:
        with self._write():
            self._fence(sid, token)
            self._c.execute("DELETE FROM checkpoints WHERE session_id=?", (sid,))

    # ------------------------------------------------------------------ reads

    async def load(self, session_id: str, *, recent: int = 50) -> LoadedSession:
        """Metadata, the last ``recent`` messages, latest summary and checkpoint, verified."""
        validate_session_id(session_id)
        return await self._run(self._load, session_id, recent)

    def _load(self, sid: str, recent: int) -> LoadedSession:
        with _tx(self._c, immediate=False):
            st = self._state(sid)
            msgs = self._tail(st, max(0, min(recent, st.message_count)))
            summary = self._summary(st)
            row = self._c.execute(
                "SELECT body, mac FROM checkpoints WHERE session_id=?", (sid,)
            ).fetchone()
        cp = None if row is None else open_checkpoint(sid, row[0], row[1], self._s, self.url)
        self._remember(st)
        return LoadedSession(st.to_meta(self.url), msgs, summary, cp)

    def _rseq_of(self, st: StateRow, kind: str, key: int) -> int:
        """The ``rseq`` of the message with ``seq == key`` or the turn record of turn
        ``key`` (``kind``), found without an index.

        Both keys grow with ``rseq`` and each record holds one, so record ``r`` of
        ``kind`` with key ``k`` puts key ``key`` at least ``key - k`` records later (or
        ``k - key`` earlier).  A probe reads the first record of ``kind`` at or after
        a position; the next probe is placed by the session's records-per-key ratio
        (interpolation), every other one halves the range, so a session of any shape
        costs at most twice a binary search, and a usual one a handful of probes.
        """
        if kind == KIND_MESSAGE:
            first, count = 0, st.message_count  # keys 0 .. count-1
        else:
            first, count = 1, st.turn_count  # turns 1 .. count
        if not first <= key < first + count:
            raise SessionTampered(self.url, st.id, -1, f"{kind} {key} is missing")
        # Counting alone bounds it: ``key - first`` keys before, ``last - key`` after.
        lo, hi = key - first, st.record_count - (first + count - 1 - key)  # [lo, hi)
        ratio = st.record_count / count
        guess, step = int(key * ratio), 0
        probe = self._c.execute
        while lo < hi:
            mid = min(max(guess, lo), hi - 1) if step % 2 == 0 else (lo + hi) // 2
            step += 1
            row = probe(_NEXT_OF_KIND, (st.id, mid, hi, kind)).fetchone()
            if row is None:  # nothing of ``kind`` in [mid, hi)
                hi = mid
                continue
            r, k = row
            if type(r) is not int or type(k) is not int:  # edited behind the store
                raise SessionTampered(self.url, st.id, -1, f"{kind} record {r!r} key {k!r}")
            if k == key:
                return r
            if k < key:
                lo = max(lo, r + (key - k))
                guess = r + round((key - k) * ratio)
            else:  # nothing of ``kind`` in [mid, r), and ``k - key`` of them before r
                hi = min(mid, r - (k - key) + 1)
                guess = r - round((k - key) * ratio)
        raise SessionTampered(self.url, st.id, -1, f"{kind} {key} is missing")

    def _tail(self, st: StateRow, count: int) -> tuple[Message, ...]:
        """The last ``count`` messages, verified from the first of them to the head."""
        start = st.message_count - count
        # With no messages wanted, still check the head record.
        first = self._rseq_of(st, KIND_MESSAGE, start) if count else max(0, st.record_count - 1)
        with _gc_paused():
            msgs = self._bulk_messages(st, first, start) if count else None
            if msgs is None:
                data = self._chain(st, first, None)
                msgs = messages_of(data, self.url, st.id, start) if count else ()
        if len(msgs) != count:
            raise SessionTampered(self.url, st.id, -1, "messages are missing before the head")
        return msgs

    def _bulk_messages(
        self, st: StateRow, first: int, first_seq: int
    ) -> tuple[Message, ...] | None:
        """The messages from record ``first`` through the head, verified, the fast way.

        Bodies are read as bytes and checked by :meth:`Signer.bodies_to_head`, then
        decoded in one call (:func:`~sessions.store.codec.messages_of_bodies`).  ``None``
        if anything does not verify or decode: the caller's careful path then reads the
        span again and raises the error that names the problem.
        """
        rows = self._c.execute(
            "SELECT kind, CAST(body AS BLOB), mac FROM records "
            "WHERE session_id=? AND rseq BETWEEN ? AND ? ORDER BY rseq",
            (st.id, first, _END),
        ).fetchall()
        prev = GENESIS if first == 0 else self._prev_mac(st.id, first)
        if prev is None:
            return None
        head = (st.record_count, st.head_mac)
        bodies = self._s.bodies_to_head(rows, first, prev, head, KIND_MESSAGE)
        return None if bodies is None else messages_of_bodies(bodies, first_seq)

    def _summary(self, st: StateRow) -> Message | None:
        row = self._c.execute(
            # The kind is written out: only then can SQLite use the partial index.
            f"SELECT {_ROW} FROM records WHERE session_id=? AND kind='{KIND_SUMMARY}' "
            "ORDER BY key DESC LIMIT 1",
            (st.id,),
        ).fetchone()
        return latest_summary(row, st, self._s, self.url)

    def _span(self, st: StateRow, kind: str, lo: int, hi: int) -> Chain:
        """Verified chain data from record ``kind lo`` through ``kind hi`` (inclusive)."""
        first, last = self._rseq_of(st, kind, lo), self._rseq_of(st, kind, hi)
        return self._chain(st, first, None if last == st.record_count - 1 else last)

    def _chain(self, st: StateRow, first: int, last: int | None) -> Chain:
        """Verified records ``first..last`` (``None``: through the session's head).

        Reads only ``kind, body, mac`` and checks them in :meth:`Signer.check_chain`'s
        tight loop; on any doubt, reads the full rows again and lets
        :func:`verify_span` name the first bad record.  The ``prev_mac`` column is read
        for the first record only: every later link is proven by recomputing its MAC
        from the previous record's, which that column merely repeats.
        """
        args = (st.id, first, _END if last is None else last)
        where = "WHERE session_id=? AND rseq BETWEEN ? AND ? ORDER BY rseq"
        rows = self._c.execute(f"SELECT kind, body, mac FROM records {where}", args).fetchall()
        prev = GENESIS if first == 0 else self._prev_mac(st.id, first)
        ok = prev is not None and self._s.check_chain(st.id, rows, first, prev)
        if ok and (last is not None or self._at_head(st, first, rows, prev)):
            return rows
        full = self._c.execute(f"SELECT {_ROW} FROM records {where}", args).fetchall()
        head = (st.record_count, st.head_mac) if last is None else None
        return verify_span(
            self._s, self.url, st.id, full, first=first, prev=None if first else GENESIS, head=head
        )

    def _prev_mac(self, sid: str, rseq: int) -> bytes | None:
        row = self._c.execute(
            "SELECT prev_mac FROM records WHERE session_id=? AND rseq=?", (sid, rseq)
        ).fetchone()
        return None if row is None or not row[0] else bytes(row[0])

    @staticmethod
    def _at_head(st: StateRow, first: int, rows: list[Slim], prev: bytes | None) -> bool:
        """Whether verified ``rows`` from ``first`` end exactly at the session's head."""
        last = rows[-1][2] if rows else prev
        n = first + len(rows)
        return last is not None and n == st.record_count and hmac.compare_digest(last, st.head_mac)

    async def messages(
        self, session_id: str, offset: int = 0, limit: int = 100
    ) -> tuple[Message, ...]:
        """Messages ``offset <= seq < offset + limit``, verified."""
        validate_session_id(session_id)
        return await self._run(self._messages, session_id, max(0, offset), max(0, limit))

    def _messages(self, sid: str, offset: int, limit: int) -> tuple[Message, ...]:
        with _tx(self._c, immediate=False):
            st = self._state(sid)
            end = min(offset + limit, st.message_count)
            if offset >= end:
                return ()
            data = self._span(st, KIND_MESSAGE, offset, end - 1)
        return messages_of(data, self.url, sid, offset)

    async def turns(
        self, session_id: str, offset: int = 0, limit: int = 100
    ) -> tuple[TurnRecord, ...]:
        """Turn records ``offset+1 ... offset+limit``, verified."""
        validate_session_id(session_id)
        return await self._run(self._turns, session_id, max(0, offset), max(0, limit))

    def _turns(self, sid: str, offset: int, limit: int) -> tuple[TurnRecord, ...]:
        with _tx(self._c, immediate=False):
            st = self._state(sid)
            end = min(offset + limit, st.turn_count)
            if offset >= end:
                return ()
            data = self._span(st, KIND_TURN, offset + 1, end)
        return turns_of(data, self.url, sid, offset + 1)

    async def verify(self, session_id: str) -> int:
        """Verify the whole chain, the session state and the checkpoint."""
        validate_session_id(session_id)
        return await self._run(self._verify, session_id)

    def _verify(self, sid: str) -> int:
        with _tx(self._c, immediate=False):
            st, data, _ = self._whole(sid)
        split_chain(data, self.url, sid)
        return st.record_count

    def _whole(self, sid: str) -> tuple[StateRow, Chain, Checkpoint | None]:
        st = self._state(sid)
        data = self._chain(st, 0, None)
        row = self._c.execute(
            "SELECT body, mac FROM checkpoints WHERE session_id=?", (sid,)
        ).fetchone()
        cp = None if row is None else open_checkpoint(sid, row[0], row[1], self._s, self.url)
        return st, data, cp

    # ------------------------------------------------------------------ export

    async def export(self, session_id: str) -> dict[str, Any]:
        """The signed export document of the whole session (verified as it is read)."""
        validate_session_id(session_id)
        return await self._run(self._export, session_id)

    def _export(self, sid: str) -> dict[str, Any]:
        with _tx(self._c, immediate=False):
            st, data, cp = self._whole(sid)
        return sign_doc(st.to_meta(self.url), split_chain(data, self.url, sid), cp, self._s)

    async def import_(self, doc: Mapping[str, Any], *, replace: bool = False) -> SessionMeta:
        """Verify ``doc`` completely, then store it in one transaction, re-chained."""
        return await self._run(self._import, doc, replace)

    def _import(self, doc: Mapping[str, Any], replace: bool) -> SessionMeta:
        plan = parse_doc(doc, self._s, self._limits, self.url)
        sid = plan.meta.id
        self._forget(sid)
        with self._write():
            row = self._c.execute("SELECT version FROM sessions WHERE id=?", (sid,)).fetchone()
            if row is not None and not replace:
                raise already_exists(self.url, sid)
            if row is not None:
                self._wipe(sid)
            # Replacing bumps the version past the old one: its owner is fenced out.
            first = self._first_version(sid) if row is None else row[0] + 1
            state, rows = plan_import(plan, self._s, first)
            self._insert_state(state)
            self._insert(sid, rows)
            if plan.checkpoint is not None:
                body, mac = checkpoint_body(sid, plan.checkpoint, self._s, self.url)
                self._c.execute("INSERT INTO checkpoints VALUES (?,?,?)", (sid, body, mac))
        return state.to_meta(self.url)

    def _first_version(self, sid: str) -> int:
        """The version a session made under ``sid`` starts at: past any it had before."""
        row = self._c.execute("SELECT version FROM fences WHERE id=?", (sid,)).fetchone()
        return 0 if row is None else int(row[0]) + 1

    def _wipe(self, sid: str) -> bool:
        # Keep the last version: a session made again under this id starts above it,
        # so a stale owner's token can never match the new session's.
        self._c.execute(
            "INSERT INTO fences SELECT id, version FROM sessions WHERE id=? "
            "ON CONFLICT(id) DO UPDATE SET version=max(version, excluded.version)",
            (sid,),
        )
        self._c.execute("DELETE FROM records WHERE session_id=?", (sid,))
        self._c.execute("DELETE FROM checkpoints WHERE session_id=?", (sid,))
        return self._c.execute("DELETE FROM sessions WHERE id=?", (sid,)).rowcount > 0


def _busy(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` is SQLite's "database is locked" / "busy" (another writer)."""
    text = str(exc)
    return "locked" in text or "busy" in text


def _weak(method: Callable[[], None]) -> Callable[[], None]:
    """``method``, called through a weak reference (a thread must not keep its store alive)."""
    ref = weakref.WeakMethod(method)

    def call() -> None:
        bound = ref()
        if bound is not None:
            bound()

    return call


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a load builds its rows, dicts and messages.

    A 10,000-message load makes some 40,000 container objects, all alive until it
    returns: the collections they trigger find no garbage, yet the full ones walk the
    whole heap (measured: a tenth of such a load's time in a process holding 20,000
    turns' objects, more as the heap grows).  Collection resumes after (unless it was
    off already); only cycles other threads make meanwhile wait those milliseconds.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@contextmanager
def _tx(conn: sqlite3.Connection, *, immediate: bool) -> Iterator[None]:
    """One transaction: ``BEGIN IMMEDIATE`` for writes (take the write lock up front)."""
    conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        # Never leave the shared connection inside a failed transaction.
        if conn.in_transaction:
            conn.rollback()
        raise
