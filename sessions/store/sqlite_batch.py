"""How :class:`~sessions.store.sqlite.SQLiteStore` writes one group-commit batch
(:mod:`sessions.store.sqlite_group` decides when).

In order of preference:

* a lone turn of the session that alone has been writing, in the loop's thread with
  its own commit, as :meth:`~sessions.store.sqlite.SQLiteStore.append_turn` always did;
* its statements in the loop's thread, its ``COMMIT`` (log write and fsync) in the
  store's :class:`~sessions.store.sqlite_group.Committer` thread, the loop free
  meanwhile; the connection stays claimed from ``BEGIN`` to the end of the commit;
* in the database thread (the loop may not use the connection now: the thread has work
  queued, or another process holds the lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from sessions.errors import CommitUnknown, StoreError
from sessions.store.durable import StateRow
from sessions.store.sqlite_core import BatchTurn, SQLiteCore, batch_rows, count_write
from sessions.store.sqlite_group import Committer, QueuedTurn
from sessions.store.sqlite_open import translate

if TYPE_CHECKING:
    from sessions.store.sqlite import SQLiteStore

__all__ = ["write_group"]


def write_group(store: SQLiteStore, batch: list[QueuedTurn]) -> bool:
    """Write ``batch`` (see the module); ``True`` if every turn of it is finished,
    ``False`` if the store's group will be settled once it ends."""
    lone = _write_lone(store, batch)
    if lone:
        return True
    core, db = store._core, store._db
    if core is None or db is None:
        error = StoreError(store.url, "store is not open (call open() or use 'async with')")
        for t in batch:
            t.finish(error)
        return True
    turns = [(t.sid, t.commit, t.token, t.now) for t in batch]
    committer = store._committer
    if lone is False and store._inline and db.claim():  # None: the lock is taken
        try:
            done, out = core.try_inline(_write_open, (core, turns, committer is not None))
        except BaseException:
            db.release()
            raise
        if not done or out is None:
            db.release()
        elif committer is None:  # committed here (synchronous=NORMAL: no fsync to wait for)
            db.release()
            for t, refused in zip(batch, out[1], strict=True):
                t.finish(refused)
            return True
        else:
            return _commit_there(store, committer, batch, out, db.release)
    loop = asyncio.get_running_loop()
    db.post(functools.partial(_write_in_thread, store, core, loop, batch, turns))
    return False


def _write_lone(store: SQLiteStore, batch: list[QueuedTurn]) -> bool | None:
    """Write a lone turn in this thread, as :meth:`SQLiteStore.append_turn` always did,
    when one session alone has been writing and the database thread is idle: ``True``
    if written, ``False`` if not tried, ``None`` if the write lock was taken (another
    process: nothing written, and the database thread waits for it).

    A lone turn of another session than the last batch's goes on: other sessions are
    at work, and blocking the loop for its fsync would stop them from preparing the
    next batch meanwhile.
    """
    last, lone = store._lone, batch[0].sid if len(batch) == 1 else None
    store._lone = lone
    core, db = store._core, store._db
    if lone is None or last not in ("", lone) or not store._inline or core is None:
        return False
    if db is None or not db.claim():
        return False
    t = batch[0]
    try:
        done, _ = core.try_inline(core.append_turn, (t.sid, t.commit, t.token, t.now))
    except Exception as exc:
        done = True
        t.finish(exc)
    else:
        if done:
            t.finish(None)
    finally:
        db.release()
    return done or None


def _write_open(
    core: SQLiteCore, turns: Sequence[BatchTurn], leave_open: bool
) -> tuple[list[StateRow], list[Exception | None]]:
    """Write the batch in a transaction, committed unless ``leave_open`` (then the
    caller commits it); the rows written and each turn's error (see
    :meth:`SQLiteCore.write_batch`).  Nothing is left open if it raises."""
    if not leave_open:
        rows = core.write_batch(turns)
        return [], rows
    conn = core.conn
    conn.execute("BEGIN IMMEDIATE")
    try:
        return batch_rows(core, turns)
    except BaseException:
        if conn.in_transaction:
            conn.rollback()
        raise


def _commit_there(
    store: SQLiteStore,
    committer: Committer,
    batch: list[QueuedTurn],
    out: tuple[list[StateRow], list[Exception | None]],
    release: Callable[[], None],
) -> bool:
    """The batch's statements ran: refused turns are finished now (nothing of them was
    written), the others once the committer has committed (``release`` then frees the
    connection)."""
    rows, errors = out
    for t, error in zip(batch, errors, strict=True):
        if error is not None:
            t.finish(error)
    core = store._core
    assert core is not None
    if not rows:  # every turn refused: nothing to commit
        try:
            core.conn.rollback()
        finally:
            release()
        return True
    done = functools.partial(_committed, store, batch, rows, release)
    committer.commit(core.conn, release, done)
    return False


def _committed(
    store: SQLiteStore,
    batch: list[QueuedTurn],
    rows: list[StateRow],
    release: Callable[[], None],
    error: Exception | None,
) -> None:
    """In the loop: the commit of ``batch`` ended (``error``: it failed, nothing of the
    batch was written).  The connection is still claimed: the new heads reach the
    remembered rows and the rollback witness before anything queued behind the commit
    (a delete of one of these sessions) runs, or the witness would keep a head of a
    session deleted after it, and report it rolled back."""
    group, core = store._group, store._core
    assert group is not None
    failed: BaseException | None = None
    try:
        if error is not None:
            failed = _failure(store, error)
            if core is not None:
                for t in batch:
                    core.remembered.forget(t.sid)
        elif core is not None:
            count_write(core)
            core.remembered.remember_all(rows)
    finally:  # whatever happened above, the batch ends (its callers must not hang)
        release()
        group.settle(store, batch, None, failed)


def _write_in_thread(
    store: SQLiteStore,
    core: SQLiteCore,
    loop: asyncio.AbstractEventLoop,
    batch: list[QueuedTurn],
    turns: list[BatchTurn],
) -> None:
    """In the database thread: write the batch with the store's own fsync, then settle
    it in the loop."""
    group = store._group
    assert group is not None
    errors: list[Exception | None] | None = None
    error: BaseException | None = None
    try:
        if len(turns) == 1:  # a lone turn as append_turn always wrote it
            core.call(core.append_turn, turns[0])
            errors = [None]
        else:
            errors = core.call(core.write_batch, (turns,))
    except BaseException as exc:  # delivered to the batch's callers
        error = exc
    with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
        loop.call_soon_threadsafe(group.settle, store, batch, errors, error)


def _failure(store: SQLiteStore, error: Exception) -> StoreError:
    """The error a batch's callers get when its commit raised ``error``: SQLite's
    translated (nothing was written), anything else :class:`CommitUnknown` (it may
    have been raised after the commit ended)."""
    if isinstance(error, sqlite3.Error):
        return translate(store.url, store.path, error)
    unknown = CommitUnknown(store.url, f"{store.path}: the commit ended with {error!r}")
    unknown.__cause__ = error
    return unknown
