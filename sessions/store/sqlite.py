"""The embedded default store: one SQLite file, WAL mode, safe across processes.

:class:`SQLiteStore` is the async face; the work is done synchronously by
:class:`~sessions.store.sqlite_core.SQLiteCore` (writes, leases) and
:class:`~sessions.store.sqlite_read.SQLiteReader` (verified reads) over one
:mod:`sqlite3` connection, opened by :mod:`sessions.store.sqlite_open`.

``sqlite3`` blocks, so calls run in the store's own database thread
(:class:`~sessions.store.dbthread.DBThread`), one at a time and in order, and the one
connection is never used by two threads at once.  Writes take ``BEGIN IMMEDIATE`` so two
processes on one file serialise at the start of a transaction instead of failing at
commit, and ``busy_timeout`` makes the loser wait rather than error.

The small writes of a turn (its commit, checkpoints, state) run in the event loop's own
thread instead (``inline_writes``, on by default) when the store knows of no other work
of its own: after yielding once to the loop (the tasks ready then run first), its
database thread is idle and the write lock is free at once (another process holding
it sends the write to the thread, which waits).  The hand-off to the thread and back
costs two thread wake-ups, as much as the commit's own work.  The price: work that
becomes ready while such a write runs waits for it (its fsync included).  The WAL is
checkpointed in the database thread, so no write runs a checkpoint in the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import anyio
import anyio.lowlevel

from engine.messages import MemoryItem
from sessions.errors import StoreError, StorePathInvalid
from sessions.store.base import (
    Checkpoint,
    LoadedSession,
    Message,
    SessionMatch,
    SessionMeta,
    TurnCommit,
    TurnRecord,
)
from sessions.store.codec import validate_session_id
from sessions.store.dbthread import DBThread
from sessions.store.durable import checkpoint_body
from sessions.store.export import ImportLimits
from sessions.store.lease import Clock
from sessions.store.signing import Signer, data_dir, load_key
from sessions.store.sqlite_batch import write_group
from sessions.store.sqlite_core import SQLiteCore
from sessions.store.sqlite_group import Committer, GroupCommit, QueuedTurn
from sessions.store.sqlite_memory import recall, remember
from sessions.store.sqlite_open import Opened, connect, translate
from sessions.store.sqlite_wait import SLICE_MS, WaitingConnection, busy, set_busy
from sessions.store.witness import Witness, witness_path

__all__ = ["SQLiteStore", "check_sqlite_folder"]

T = TypeVar("T")


def _connect(
    url: str,
    path: Path,
    create: bool,
    synchronous: str,
    busy_ms: int,
    opened: Opened,
    stop: Callable[[], bool],
) -> sqlite3.Connection:
    """Open the file (in the database thread), SQLite's errors as typed store errors.

    While another process holds the lock, it tries again (each try is whole: a
    migration rolled back, the connection closed) until ``busy_ms`` have passed or
    ``stop()`` says so (nobody waits for the open any more).
    """
    deadline = time.monotonic() + busy_ms / 1000
    while True:
        wait_ms = max(0, min(SLICE_MS, int((deadline - time.monotonic()) * 1000)))
        try:
            conn = connect(
                url, path, create=create, synchronous=synchronous, busy_ms=wait_ms, opened=opened
            )
            try:
                set_busy(conn, busy_ms)
            except BaseException:
                conn.close()
                raise
            return conn
        except sqlite3.Error as exc:
            if not busy(exc) or stop() or time.monotonic() >= deadline:
                raise translate(url, path, exc) from exc


class SQLiteStore:
    """A :class:`~sessions.store.base.Store` in one SQLite file.

    ``synchronous`` is ``"FULL"`` by default: in WAL mode that fsyncs the log at every
    commit, so a turn reported committed survives power loss; ``"NORMAL"``
    (``sqlite:///x.db?synchronous=NORMAL``) survives a killed process but may lose the
    last commits to a power cut or an OS crash, and is offered for benchmarks and
    throwaway stores.

    ``inline_writes`` (default on; ``?inline_writes=off``) lets a turn's small writes
    run in the event loop's thread when the store has no other work pending (see the
    module's docstring); off, every call goes through the database thread and the loop
    never blocks on the disk, for two thread wake-ups per write.  ``clock`` measures
    leases (tests pass a :class:`~sessions.store.lease.ManualClock`).

    ``group_commit`` (default on; ``?group_commit=off``) lets turns of different
    sessions that are ready together share one transaction and one fsync
    (:mod:`sessions.store.sqlite_group`); off, each turn commits alone.

    ``witness`` (default on; ``?witness=off`` or ``TURNGRAPH_WITNESS=off``) keeps each
    session's chain head outside the database, beside the key
    (:mod:`sessions.store.witness`), so a load of a session rolled back to an earlier
    signed state raises :class:`~engine.errors.RolledBack`.

    A turn commit reads nothing: the store remembers each session's row as it last
    wrote or verified it, and writes only if the stored row is still exactly that one
    (:meth:`SQLiteCore._swap`); anything else takes the careful path (read, verify,
    fence).
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
        group_commit: bool = True,
        clock: Clock = time.time,
        witness: bool = True,
    ) -> None:
        self.url = url
        self.path = Path(path)
        self._may_create = create
        self._secret = secret
        self._limits = limits or ImportLimits()
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise StoreError(url, f"synchronous must be FULL, NORMAL or EXTRA, not {synchronous!r}")
        self._synchronous = synchronous.upper()
        self._busy_ms = int(busy_timeout * 1000)
        self._inline = inline_writes
        # Not a partial holding this store: the group is this store's (see GroupCommit).
        self._group = GroupCommit(write_group) if group_commit else None
        # Commits a batch begun in the loop's thread (None: batches commit in the loop).
        self._committer: Committer | None = None
        # The session whose turn alone was the last batch (None: several; "": none yet).
        self._lone: str | None = ""
        self._clock = clock
        self._db: DBThread | None = None
        self._core: SQLiteCore | None = None
        self._use_witness = witness
        self._witness: Witness | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def is_open(self) -> bool:
        """Whether :meth:`open` has run (and :meth:`close` has not)."""
        return self._db is not None

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
        if self._may_create:
            check_sqlite_folder(self.url, self.path)
        existing = self.path.is_file() and self.path.stat().st_size > 0
        signer = Signer(load_key(self._secret, existing_store=self.url if existing else None))
        db = self._db = DBThread(f"turngraph-sqlite:{self.path.name}")
        opening: dict[str, sqlite3.Connection] = {}  # the latest try's, set in the thread
        try:
            conn = await db.run(
                _connect, self.url, self.path, self._may_create, self._synchronous,
                self._busy_ms, functools.partial(opening.__setitem__, "conn"),
                db.interrupted,
            )  # fmt: skip
            if isinstance(conn, WaitingConnection):
                conn.should_stop = db.interrupted  # a call cancelled at close stops waiting
            witness = self._open_witness()
        except BaseException:
            self._db = None
            # Cancelled (Ctrl-C) while the open waits for another process's lock: cut
            # the wait short (SQLite rolls the migration back whole), else ending the
            # thread would wait out the busy timeout.
            db.interrupt_abandoned(lambda: _interrupt(opening.values()))
            with anyio.CancelScope(shield=True):  # the thread has ended when open raises
                await db.stop()
            raise
        self._core = SQLiteCore(
            self.url, self.path, conn, signer, busy_ms=self._busy_ms, clock=self._clock,
            limits=self._limits, post=db.post, witness=witness,
        )  # fmt: skip
        if self._group is not None and self._synchronous != "NORMAL":
            self._committer = Committer(f"turngraph-commit:{self.path.name}")

    def _open_witness(self) -> Witness | None:
        """The rollback witness of this file (keyed by its absolute path), if enabled."""
        if not self._use_witness:
            return None
        witness = Witness(witness_path(f"sqlite:{self.path.resolve()}"), self.url)
        witness.open()
        self._witness = witness
        return witness

    async def close(self) -> None:
        """Let pending calls finish, close the connection, end the thread.  Idempotent.

        A call whose caller was cancelled while it ran (Ctrl-C while it waits for
        another process's lock, say) is interrupted instead: nobody waits for it, and
        SQLite rolls its statement and transaction back whole.  Calls queued after it
        and calls somebody still waits for are never interrupted.
        """
        db, self._db = self._db, None
        core, self._core = self._core, None
        committer, self._committer = self._committer, None
        if committer is not None:
            committer.stop()  # after the commits already asked for
        if db is not None:
            # Shielded: a cancelled close still closes the file and ends the thread.
            with anyio.CancelScope(shield=True):
                try:
                    if core is not None:
                        db.interrupt_abandoned(lambda: _interrupt([core.conn]))
                        await db.run(core.close)
                finally:
                    await db.stop()
                    if self._witness is not None:
                        self._witness.close()
                        self._witness = None

    async def __aenter__(self) -> SQLiteStore:
        await self.open()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------ plumbing

    @property
    def _c(self) -> SQLiteCore:
        if self._core is None:
            raise StoreError(self.url, "store is not open (call open() or use 'async with')")
        return self._core

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` (a method of the core) in the database thread, in order."""
        core, db = self._c, self._db
        assert db is not None  # open together with the core
        return await db.run(core.call, fn, args)

    async def _run_write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run the small write ``fn(*args)`` here if the store has nothing else pending,
        else in the thread.

        Here means in the event loop's thread, blocking it for the commit.  First the
        write yields to the loop once, so the tasks already ready to run go before it
        and it delays none of them.  Then it runs here only if the database thread is
        idle (nothing of this store's queued or running there: going first would
        overtake it) and the write lock is free at once.  A write that finds the lock
        taken (another process) was rolled back whole and goes to the thread, which
        waits ``busy_timeout`` for it.
        """
        if self._inline:
            await anyio.lowlevel.checkpoint()
            core, db = self._c, self._db  # after the yield: the store may have closed
            if db is not None and db.claim():
                try:
                    done, result = core.try_inline(fn, args)
                finally:
                    db.release()
                if done:
                    return result  # type: ignore[return-value]  # set when done
        return await self._run(fn, *args)

    # ------------------------------------------------------------------ sessions

    async def create(self, meta: SessionMeta) -> SessionMeta:
        """Create a session; ``SessionExists`` if the id is taken."""
        validate_session_id(meta.id)
        return await self._run(self._c.create, meta)

    async def exists(self, session_id: str) -> bool:
        """Whether the session exists."""
        validate_session_id(session_id)
        return await self._run(self._c.exists, session_id)

    async def list_sessions(
        self, offset: int = 0, limit: int = 100, *, match: SessionMatch | None = None
    ) -> tuple[SessionMeta, ...]:
        """Sessions by id, each state MAC verified; a row that fails is listed as
        ``SessionMeta(id, tampered=True)``.  ``match``: see :meth:`Store.list_sessions`."""
        return await self._run(self._c.list_sessions, offset, limit, match)

    async def delete(self, session_id: str) -> bool:
        """Delete a session and all its records; False if it did not exist."""
        validate_session_id(session_id)
        return await self._run(self._c.delete, session_id)

    # ------------------------------------------------------------------ leases

    async def acquire(self, session_id: str, owner: str, ttl: float) -> int:
        """Take or renew the lease; ``SessionBusy`` if another owner's lease is live."""
        validate_session_id(session_id)
        return await self._run(self._c.acquire, session_id, owner, ttl)

    async def renew(self, session_id: str, owner: str, token: int, ttl: float) -> None:
        """Extend the lease; ``Fenced`` if ``token`` is stale."""
        validate_session_id(session_id)
        await self._run(self._c.renew, session_id, owner, token, ttl)

    async def release(self, session_id: str, owner: str, token: int) -> None:
        """Give the lease up; its token goes stale.  No error if already lost."""
        validate_session_id(session_id)
        await self._run(self._c.release, session_id, owner, token)

    # ------------------------------------------------------------------ writes

    async def append_turn(self, session_id: str, commit: TurnCommit, *, token: int) -> None:
        """Append one turn; ``Fenced`` (nothing written) if stale.

        With group commit, turns of other sessions queued meanwhile share its
        transaction (:mod:`sessions.store.sqlite_group`); it returns once that has
        committed (made durable by an fsync, unless ``synchronous=NORMAL``).  Group
        commit needs asyncio; on another event loop (trio) each turn commits alone.
        """
        validate_session_id(session_id)
        now = time.time()
        if self._group is None or not _on_asyncio():
            await self._run_write(self._c.append_turn, session_id, commit, token, now)
        else:
            await self._group.commit(self, QueuedTurn(session_id, commit, token, now))

    async def append_summary(
        self, session_id: str, summary: Message, upto_seq: int, *, token: int
    ) -> None:
        """Append a compaction summary covering messages ``<= upto_seq``."""
        validate_session_id(session_id)
        now = time.time()
        await self._run_write(self._c.append_summary, session_id, summary, upto_seq, token, now)

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
        await self._run_write(self._c.update_state, session_id, values, token, time.time())

    async def save_checkpoint(self, session_id: str, cp: Checkpoint, *, token: int) -> None:
        """Save (replace) the in-flight turn's checkpoint."""
        validate_session_id(session_id)
        core = self._c
        body, mac = checkpoint_body(session_id, cp, core.signer, self.url)
        await self._run_write(core.save_checkpoint, session_id, body, mac, token)

    async def clear_checkpoint(self, session_id: str, *, token: int) -> None:
        """Drop the checkpoint (the turn was abandoned)."""
        validate_session_id(session_id)
        await self._run_write(self._c.clear_checkpoint, session_id, token)

    # ------------------------------------------------------------------ reads

    async def load(self, session_id: str, *, recent: int = 50) -> LoadedSession:
        """Metadata, the last ``recent`` messages, latest summary and checkpoint, verified."""
        validate_session_id(session_id)
        return await self._run(self._c.load, session_id, recent)

    async def messages(
        self, session_id: str, offset: int = 0, limit: int = 100
    ) -> tuple[Message, ...]:
        """Messages ``offset <= seq < offset + limit``, verified."""
        validate_session_id(session_id)
        return await self._run(self._c.reads.messages, session_id, max(0, offset), max(0, limit))

    async def turns(
        self, session_id: str, offset: int = 0, limit: int = 100
    ) -> tuple[TurnRecord, ...]:
        """Turn records ``offset+1 ... offset+limit``, verified."""
        validate_session_id(session_id)
        return await self._run(self._c.reads.turns, session_id, max(0, offset), max(0, limit))

    async def verify(self, session_id: str) -> int:
        """Verify the whole chain, the session state and the checkpoint."""
        validate_session_id(session_id)
        return await self._run(self._c.reads.verify, session_id)

    # ------------------------------------------------------------------ recall memory

    async def recall_memory(
        self, query: str, *, session_id: str, agent_id: str | None = None, limit: int = 5
    ) -> tuple[MemoryItem, ...]:
        """Up to ``limit`` remembered items for ``query``, best BM25 rank first: the
        session's, or with ``agent_id`` all that agent's sessions' (see
        :mod:`sessions.store.sqlite_memory`)."""
        validate_session_id(session_id)
        # Like a turn's small writes, run here when the database thread is idle (it
        # may index queued items first: a write, rolled back whole if the lock is busy).
        return await self._run_write(recall, self._c.conn, query, session_id, agent_id, limit)

    async def remember_memory(self, session_id: str, items: Sequence[MemoryItem]) -> None:
        """Remember ``items`` for the session now, outside a turn (own transaction)."""
        validate_session_id(session_id)
        await self._run(remember, self._c.conn, session_id, tuple(items))

    # ------------------------------------------------------------------ export

    async def export(self, session_id: str) -> dict[str, Any]:
        """The signed export document of the whole session (verified as it is read)."""
        validate_session_id(session_id)
        return await self._run(self._c.reads.export, session_id)

    async def import_(self, doc: Mapping[str, Any], *, replace: bool = False) -> SessionMeta:
        """Verify ``doc`` completely, then store it in one transaction, re-chained."""
        return await self._run(self._c.import_, doc, replace)


def check_sqlite_folder(url: str, path: Path) -> None:
    """Refuse a store file whose folder does not exist, or is not a folder.

    Only the data directory (the default store's home) is created when missing; a
    mistyped ``--store`` path must not silently grow a directory tree.
    """
    folder = path.parent
    if folder.is_dir():
        return
    # Checked first, the data directory included: under a file it cannot be made either.
    for above in (folder, *folder.parents):
        if above.exists() and not above.is_dir():
            raise StorePathInvalid(
                url, f"{above} is a file, not a folder: {path} cannot be created under it"
            )
    if folder.absolute() == data_dir().absolute() and not folder.exists():
        return  # the data directory: made on first use
    raise StorePathInvalid(url, f"folder {folder} does not exist (create it first)")


def _interrupt(conns: Iterable[sqlite3.Connection]) -> None:
    """Interrupt the statement running on each connection, from any thread (one closed
    meanwhile has nothing left to interrupt).  A wait for a lock ends on
    :meth:`DBThread.interrupted` instead (SQLite's does not end on ``interrupt()``)."""
    for conn in conns:
        with contextlib.suppress(sqlite3.ProgrammingError):
            conn.interrupt()


def _on_asyncio() -> bool:
    """Whether the running event loop is asyncio's (group commit calls into it from
    other threads)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
