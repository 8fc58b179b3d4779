"""The SQLite store's synchronous core: every operation of the store contract as a
plain method over one :mod:`sqlite3` connection.

:class:`SQLiteCore` never awaits; the async face
(:class:`~sessions.store.sqlite.SQLiteStore`) decides in which thread each call runs
and hands it here, one call at a time.  Reads are delegated to
:class:`~sessions.store.sqlite_read.SQLiteReader`; what is written is planned by
:mod:`sessions.store.durable` and the lease rules are :mod:`sessions.store.lease`'s.
"""

from __future__ import annotations

import sqlite3
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from operator import attrgetter
from pathlib import Path
from typing import Any, Final, TypeVar

from sessions.errors import SessionExists, SessionNotFound, StoreError
from sessions.store.base import (
    Checkpoint,
    LoadedSession,
    Message,
    SessionMatch,
    SessionMeta,
    TurnCommit,
)
from sessions.store.durable import (
    STATE_COLUMNS,
    WRITTEN_COLUMNS,
    StateRow,
    checkpoint_body,
    plan_import,
    plan_state,
    plan_summary,
    plan_turn,
)
from sessions.store.export import ImportLimits, already_exists, parse_doc
from sessions.store.lease import Clock, check_token, grant, lease_end, not_holder
from sessions.store.signing import Row, Signer
from sessions.store.sqlite_memory import queue as queue_memory
from sessions.store.sqlite_memory import wipe as wipe_memory
from sessions.store.sqlite_open import busy, translate, tx
from sessions.store.sqlite_read import SQLiteReader
from sessions.store.sqlite_wait import set_busy
from sessions.store.witness import Witness

__all__ = [
    "CHECKPOINT_WRITES",
    "REMEMBERED_MAX",
    "BatchTurn",
    "RememberedRows",
    "SQLiteCore",
    "batch_rows",
    "count_write",
]

T = TypeVar("T")
BatchTurn = tuple[str, TurnCommit, int, float]
"""One turn of :meth:`SQLiteCore.write_batch`: session id, commit, token, time."""
CHECKPOINT_WRITES: Final = 64
"""Write transactions after which a background WAL checkpoint is queued (a turn's
commit writes 4-8 pages, so the log stays near SQLite's default 1,000 pages)."""
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
_END_CHECKPOINT: Final = "DELETE FROM checkpoints WHERE session_id=?"
_changed: Final[Callable[[StateRow], tuple[Any, ...]]] = attrgetter(*WRITTEN_COLUMNS)
_signed: Final[Callable[[StateRow], tuple[Any, ...]]] = attrgetter(*_SIGNED)


class RememberedRows:
    """Per session, the state row as the store last wrote or verified it, the most
    recently used :data:`REMEMBERED_MAX` of them (rows are never modified: a write
    changes a copy).  Only a hint: see :meth:`SQLiteCore._swap`."""

    def __init__(self, witness: Witness | None = None) -> None:
        self.rows: dict[str, StateRow] = {}
        self.witness = witness

    def remember(self, st: StateRow) -> None:
        """Keep ``st`` (written or verified, and committed) as its session's latest row,
        and tell the rollback witness its head."""
        if self.witness is not None:
            self.witness.seen(st.id, st.record_count, st.head_mac)
        rows = self.rows
        rows.pop(st.id, None)
        rows[st.id] = st
        if len(rows) > REMEMBERED_MAX:
            del rows[next(iter(rows))]  # the least recently used

    def remember_all(self, states: Sequence[StateRow]) -> None:
        """:meth:`remember` each of ``states`` (one write to the witness for all)."""
        if self.witness is not None:
            self.witness.seen_all((st.id, st.record_count, st.head_mac) for st in states)
        rows = self.rows
        for st in states:
            rows.pop(st.id, None)
            rows[st.id] = st
        while len(rows) > REMEMBERED_MAX:
            del rows[next(iter(rows))]  # the least recently used

    def forget(self, sid: str) -> None:
        """Drop what is remembered of ``sid`` (its row may change behind us)."""
        self.rows.pop(sid, None)


class SQLiteCore:
    """The store's operations over ``conn``, synchronous; one caller at a time.

    ``post`` queues best-effort work (the background WAL checkpoint) in the database
    thread.  ``clock`` measures leases.
    """

    def __init__(
        self,
        url: str,
        path: Path,
        conn: sqlite3.Connection,
        signer: Signer,
        *,
        busy_ms: int,
        clock: Clock,
        limits: ImportLimits,
        post: Callable[[Callable[[], None]], None],
        witness: Witness | None = None,
    ) -> None:
        self.url, self.path, self.conn, self.signer = url, path, conn, signer
        self.reads = SQLiteReader(url, conn, signer, witness)
        self.remembered = RememberedRows(witness)
        self.witness = witness
        self._clock, self._limits, self._post = clock, limits, post
        self._busy_ms = self._busy_now = busy_ms  # the wanted and the current busy timeout
        self._writes = 0  # write transactions since the last checkpoint was queued
        self._unsaved = False  # written since the last checkpoint ran
        self.checkpoints = 0
        """How many background WAL checkpoints ran (tests look at it)."""
        self.deferred: list[tuple[Any, ...]] | None = None
        """Records planned but not yet inserted, while a batch writes its turns."""

    # ------------------------------------------------------------------ calls

    def call(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        """``fn(*args)`` in the database thread, waiting ``busy_timeout`` for a lock;
        SQLite's errors become the store's."""
        try:
            if self._busy_now != self._busy_ms:
                set_busy(self.conn, self._busy_ms)
                self._busy_now = self._busy_ms
            return fn(*args)
        except sqlite3.Error as exc:
            raise translate(self.url, self.path, exc) from exc

    def try_inline(self, fn: Callable[..., T], args: tuple[Any, ...]) -> tuple[bool, T | None]:
        """``(True, fn(*args))`` run here without waiting for any lock, or
        ``(False, None)`` if the database was busy (nothing written: every write is one
        transaction, rolled back on error)."""
        conn = self.conn
        if self._busy_now:
            set_busy(conn, 0)  # never wait for a lock in the loop
            self._busy_now = 0
        try:
            return True, fn(*args)
        except sqlite3.OperationalError as exc:
            if busy(exc) and not conn.in_transaction:
                return False, None
            raise translate(self.url, self.path, exc) from exc
        except sqlite3.Error as exc:
            raise translate(self.url, self.path, exc) from exc

    def close(self) -> None:
        """Checkpoint what this store wrote, then close the connection."""
        self.remembered.rows.clear()
        try:
            if self._unsaved:
                # SQLite checkpoints at close only as the file's last connection; with
                # another still open, what this store wrote would stay in the log, and
                # short-lived stores (one CLI run each) would grow it without end.
                with suppress(sqlite3.Error):
                    self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        finally:
            self.conn.close()

    def checkpoint(self) -> None:
        """Copy the WAL back into the database, in the database thread.

        SQLite would otherwise checkpoint inside the commit that pushes the log past
        1,000 pages, and that commit would take milliseconds; here nobody waits for it
        but a write that arrives meanwhile.  This process writes nothing during it, so
        the checkpoint catches up with the log and the next write starts the log over
        from its beginning (a log that only grows makes every fsync slower).
        ``PASSIVE`` never waits for other processes' readers or writers.
        """
        self._unsaved = False  # before: a write made during it sets it again
        self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        self.checkpoints += 1

    @contextmanager
    def _write(self) -> Iterator[None]:
        """A write transaction (``BEGIN IMMEDIATE``); every :data:`CHECKPOINT_WRITES`
        of them queue a background checkpoint."""
        with tx(self.conn, immediate=True):
            yield
        count_write(self)

    # ------------------------------------------------------------------ sessions

    def create(self, meta: SessionMeta) -> SessionMeta:
        """Create a session; ``SessionExists`` if the id is taken."""
        state = StateRow.new(meta, self.signer, self.url)
        with self._write():
            if self.conn.execute("SELECT 1 FROM sessions WHERE id=?", (meta.id,)).fetchone():
                raise SessionExists(meta.id, "a session with this id already exists")
            if self.witness is not None:
                self.witness.check_missing(meta.id)
            state.version = self._first_version(meta.id)
            self._insert_state(state)
        if self.witness is not None:
            self.witness.reset(meta.id)
        self.remembered.remember(state)
        return state.to_meta(self.url)

    def exists(self, sid: str) -> bool:
        """Whether the session exists."""
        return self.conn.execute("SELECT 1 FROM sessions WHERE id=?", (sid,)).fetchone() is not None

    def list_sessions(
        self, offset: int, limit: int, match: SessionMatch | None = None
    ) -> tuple[SessionMeta, ...]:
        """Sessions by id, each row's MAC checked (a failing row is listed as tampered);
        ``match``: a bounded filtered window (:meth:`Store.list_sessions`)."""
        return self.reads.listing(offset, limit, match)

    def delete(self, sid: str) -> bool:
        """Delete a session and its records, keeping its last version; False if absent."""
        self.remembered.forget(sid)
        if self.witness is not None:
            # Before the commit: a crash in between leaves a witness that knows less
            # (a weaker check), never one that misses a session still stored.
            self.witness.drop(sid)
        with self._write():
            return self._wipe(sid)

    def load(self, sid: str, recent: int) -> LoadedSession:
        """Load verified (see :meth:`SQLiteReader.load`) and remember the row."""
        loaded, st = self.reads.load(sid, recent)
        self.remembered.remember(st)
        return loaded

    # ------------------------------------------------------------------ leases

    def acquire(self, sid: str, owner: str, ttl: float) -> int:
        """Take or renew the lease (:func:`~sessions.store.lease.grant`)."""
        with self._write():
            row = self.conn.execute(
                "SELECT version, owner, lease_expires FROM sessions WHERE id=?", (sid,)
            ).fetchone()
            if row is None:
                raise SessionNotFound(sid, "no such session")
            version, expires = grant(sid, row[0], row[1], row[2], owner, ttl, self._clock())
            self.conn.execute(
                "UPDATE sessions SET version=?, owner=?, lease_expires=? WHERE id=?",
                (version, owner, expires, sid),
            )
            return int(version)

    def renew(self, sid: str, owner: str, token: int, ttl: float) -> None:
        """Extend the lease; ``Fenced`` if ``token`` is stale or not ``owner``'s."""
        with self._write():
            n = self.conn.execute(
                "UPDATE sessions SET lease_expires=? WHERE id=? AND version=? AND owner=?",
                (lease_end(self._clock, ttl), sid, token, owner),
            ).rowcount
            if n == 0:
                self._fence(sid, token)
                raise not_holder(self.url, sid, token)

    def release(self, sid: str, owner: str, token: int) -> None:
        """Give the lease up; its token goes stale.  No error if already lost."""
        self.remembered.forget(sid)  # its token is stale now: no write will match it
        with self._write():
            self.conn.execute(
                "UPDATE sessions SET owner=NULL, lease_expires=0, version=version+1 "
                "WHERE id=? AND version=? AND owner=?",
                (sid, token, owner),
            )

    # ------------------------------------------------------------------ writes

    def append_turn(self, sid: str, commit: TurnCommit, token: int, now: float) -> None:
        """Append one turn in one fenced transaction, ending any checkpoint."""
        with self._write():
            st = self.write_turn(sid, commit, token, now)
        self.remembered.remember(st)

    def write_turn(
        self, sid: str, commit: TurnCommit, token: int, now: float, *, end_checkpoint: bool = True
    ) -> StateRow:
        """Write one turn's rows inside the caller's write transaction, fenced.

        The one place a turn is written (alone by :meth:`append_turn`, in a group by
        :meth:`write_batch`).  Returns the session's new row, to remember once the
        transaction has committed.  ``end_checkpoint=False``: the caller deletes the
        session's checkpoint itself (a batch deletes all of its sessions' at once).
        """

        def change(st: StateRow) -> list[Row]:
            return plan_turn(st, commit, self.signer, self.url, now=now)

        st = self._advance(sid, token, change)
        if commit.memory:
            queue_memory(self.conn, sid, st.agent_id, commit.memory)
        if end_checkpoint:
            # A turn's commit ends its checkpoint, whoever saved it: a save does not
            # change the session row, so nothing here could prove there is none.
            self.conn.execute(_END_CHECKPOINT, (sid,))
        return st

    def write_batch(self, turns: Sequence[BatchTurn]) -> list[Exception | None]:
        """Write turns of different sessions in one transaction: one commit, one fsync.

        Returns, per turn, ``None`` (written) or the error that refused it (fenced, not
        found, data that cannot be stored), as the store's: a refused turn writes
        nothing and the others are written.  An error that ends the transaction itself
        (the commit failing) is raised: then nothing was written.

        First all turns are tried together in one savepoint (their records inserted by
        one statement); if any fails, that is undone and each turn is written in a
        savepoint of its own, so only the turns at fault are refused.
        """
        with self._write():
            rows, out = batch_rows(self, turns)
        self.remembered.remember_all(rows)
        return out

    def append_summary(self, sid: str, summary: Message, upto: int, token: int, now: float) -> None:
        """Append a compaction summary covering messages ``<= upto``."""

        def change(st: StateRow) -> list[Row]:
            return plan_summary(st, summary, upto, self.signer, self.url, now=now)

        with self._write():
            st = self._advance(sid, token, change)
        self.remembered.remember(st)

    def update_state(self, sid: str, values: tuple[Any, Any, Any], token: int, now: float) -> None:
        """Replace working memory, goals and/or mode (``None``: unchanged), re-signed."""
        wm, goals, mode = values

        def change(st: StateRow) -> list[Row]:
            plan_state(
                st, self.signer, self.url, working_memory=wm, goals=goals, cognitive_mode=mode,
                now=now,
            )  # fmt: skip
            return []

        with self._write():
            st = self._advance(sid, token, change)
        self.remembered.remember(st)

    def save_checkpoint(self, sid: str, body: str, mac: bytes, token: int) -> None:
        """Save (replace) the in-flight turn's signed checkpoint ``body``."""
        with self._write():
            self._fence(sid, token)
            self.conn.execute("INSERT OR REPLACE INTO checkpoints VALUES (?,?,?)", (sid, body, mac))

    def clear_checkpoint(self, sid: str, token: int) -> None:
        """Drop the checkpoint (the turn was abandoned)."""
        with self._write():
            self._fence(sid, token)
            self.conn.execute("DELETE FROM checkpoints WHERE session_id=?", (sid,))

    def import_(self, doc: Mapping[str, Any], replace: bool) -> SessionMeta:
        """Verify ``doc`` completely, then store it in one transaction, re-chained."""
        plan = parse_doc(doc, self.signer, self._limits, self.url)
        sid = plan.meta.id
        self.remembered.forget(sid)
        if self.witness is not None and replace:
            self.witness.drop(sid)  # before, as in delete: the new head is set after
        with self._write():
            row = self.conn.execute("SELECT version FROM sessions WHERE id=?", (sid,)).fetchone()
            if row is not None and not replace:
                raise already_exists(self.url, sid)
            if row is not None:
                self._wipe(sid)
            # Replacing bumps the version past the old one: its owner is fenced out.
            first = self._first_version(sid) if row is None else row[0] + 1
            state, rows = plan_import(plan, self.signer, first)
            self._insert_state(state)
            self._insert(sid, rows)
            if plan.checkpoint is not None:
                self._insert_checkpoint(sid, plan.checkpoint)
            if plan.memory:
                queue_memory(self.conn, sid, state.agent_id, plan.memory)
        if self.witness is not None:
            self.witness.reset(sid, state.record_count, state.head_mac)
        return state.to_meta(self.url)

    # ------------------------------------------------------------------ plumbing

    def _fence(self, sid: str, token: int) -> None:
        row = self.conn.execute("SELECT version FROM sessions WHERE id=?", (sid,)).fetchone()
        if row is None:
            raise SessionNotFound(sid, "no such session")
        check_token(self.url, sid, token, row[0])

    def _advance(self, sid: str, token: int, change: Callable[[StateRow], list[Row]]) -> StateRow:
        """One fenced write to ``sid``: ``change`` advances its state and plans the records
        to append; both are written.  Returns the new state (to remember once the
        transaction has committed).

        Without a usable remembered row (or if :meth:`_swap` refuses it) this reads the
        row, verifies its MAC and fences it first, as every write did before the
        remembered rows existed, so every error is the one that path raises.
        """
        swapped = self._swap(sid, token, change)
        if swapped is None:
            self.remembered.forget(sid)
            st = self.reads.state(sid).fence(self.url, token)
            rows = change(st)
            self.conn.execute(_SAVE, (*_changed(st), st.id))
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
        old = self.remembered.rows.get(sid)
        if old is None or old.version != token:
            return None
        new = old.copy()
        try:
            rows = change(new)
        except StoreError:
            return None
        args = (*_changed(new), sid, token, *_signed(old))
        return (new, rows) if self.conn.execute(_SWAP, args).rowcount == 1 else None

    def _insert(self, sid: str, rows: list[Row]) -> None:
        if self.deferred is not None:  # a batch inserts every turn's records at once
            self.deferred.extend((sid, *r) for r in rows)
        elif 0 < len(rows) <= len(_INSERTS):  # a turn's few rows: one statement, one step
            self.conn.execute(_INSERTS[len(rows) - 1], [v for r in rows for v in (sid, *r)])
        else:
            self.conn.executemany(_INSERTS[0], [(sid, *r) for r in rows])

    def _insert_state(self, st: StateRow) -> None:
        self.conn.execute(
            f"INSERT INTO sessions ({STATE_COLUMNS}) VALUES ({','.join('?' * 18)})",
            st.values(),
        )

    def _insert_checkpoint(self, sid: str, cp: Checkpoint) -> None:
        body, mac = checkpoint_body(sid, cp, self.signer, self.url)
        self.conn.execute("INSERT INTO checkpoints VALUES (?,?,?)", (sid, body, mac))

    def _first_version(self, sid: str) -> int:
        """The version a session made under ``sid`` starts at: past any it had before."""
        row = self.conn.execute("SELECT version FROM fences WHERE id=?", (sid,)).fetchone()
        return 0 if row is None else int(row[0]) + 1

    def _wipe(self, sid: str) -> bool:
        # Keep the last version: a session made again under this id starts above it,
        # so a stale owner's token can never match the new session's.
        self.conn.execute(
            "INSERT INTO fences SELECT id, version FROM sessions WHERE id=? "
            "ON CONFLICT(id) DO UPDATE SET version=max(version, excluded.version)",
            (sid,),
        )
        self.conn.execute("DELETE FROM records WHERE session_id=?", (sid,))
        self.conn.execute("DELETE FROM checkpoints WHERE session_id=?", (sid,))
        wipe_memory(self.conn, sid)
        return self.conn.execute("DELETE FROM sessions WHERE id=?", (sid,)).rowcount > 0


def count_write(core: SQLiteCore) -> None:
    """Count a committed write transaction; every :data:`CHECKPOINT_WRITES` of them
    queue a background checkpoint."""
    core._writes += 1
    core._unsaved = True
    if core._writes >= CHECKPOINT_WRITES:
        core._writes = 0
        core._post(_weak(core.checkpoint))


def batch_rows(
    core: SQLiteCore, turns: Sequence[BatchTurn]
) -> tuple[list[StateRow], list[Exception | None]]:
    """The body of :meth:`SQLiteCore.write_batch`, inside the caller's write
    transaction: the new rows of the sessions written (to remember once committed),
    and per turn ``None`` or the error that refused it."""
    written = _all_at_once(core, turns)
    out: list[Exception | None] = [None] * len(turns)
    if written is None:
        written, out = _one_by_one(core, turns)
    core.conn.executemany(_END_CHECKPOINT, [(st.id,) for st in written])
    return written, out


def _all_at_once(core: SQLiteCore, turns: Sequence[BatchTurn]) -> list[StateRow] | None:
    """Every turn written in one savepoint, all records in one ``executemany``; or
    ``None`` (all of it undone) if any turn failed."""
    conn, records = core.conn, list[tuple[Any, ...]]()
    conn.execute("SAVEPOINT batch")
    core.deferred = records
    try:
        written = [core.write_turn(*turn, end_checkpoint=False) for turn in turns]
        core.deferred = None
        conn.executemany(_INSERTS[0], records)
    except Exception:
        if not conn.in_transaction:
            raise  # SQLite ended the transaction: every turn is undone
        conn.execute("ROLLBACK TO batch")
        return None
    finally:
        core.deferred = None
        if conn.in_transaction:
            conn.execute("RELEASE batch")
    return written


def _one_by_one(
    core: SQLiteCore, turns: Sequence[BatchTurn]
) -> tuple[list[StateRow], list[Exception | None]]:
    """Each turn in a savepoint of its own: the rows written, and per turn its error."""
    conn, written, out = core.conn, list[StateRow](), list[Exception | None]()
    for sid, commit, token, now in turns:
        conn.execute("SAVEPOINT turn")
        try:
            written.append(core.write_turn(sid, commit, token, now, end_checkpoint=False))
            out.append(None)
        except Exception as exc:  # refused: this turn alone is undone
            if not conn.in_transaction:
                raise
            conn.execute("ROLLBACK TO turn")
            core.remembered.forget(sid)
            if isinstance(exc, sqlite3.Error):
                exc = translate(core.url, core.path, exc)
            out.append(exc)
        conn.execute("RELEASE turn")
    return written, out


def _weak(method: Callable[[], None]) -> Callable[[], None]:
    """``method``, called through a weak reference (a thread must not keep its store alive)."""
    ref = weakref.WeakMethod(method)

    def call() -> None:
        bound = ref()
        if bound is not None:
            bound()

    return call
