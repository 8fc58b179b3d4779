"""How :class:`~sessions.store.sqlite.SQLiteStore` writes one group-commit batch
(:mod:`sessions.store.sqlite_group` decides when).

In order of preference:

* a lone turn of the session that alone has been writing, in the loop's thread with
  its own fsync, as :meth:`~sessions.store.sqlite.SQLiteStore.append_turn` always did;
* in the loop's thread without an fsync, then the fsync of the write-ahead log in the
  store's :class:`~sessions.store.sqlite_group.Syncer` thread, the loop free meanwhile;
* in the database thread with the store's own ``synchronous`` (the loop may not use
  the connection now: the thread has work queued, or another process holds the lock).

``synchronous=NORMAL`` followed by an fsync of the log is what ``FULL`` does inside the
commit: in WAL mode SQLite's commit writes the transaction's frames to the log, and
``FULL`` then fsyncs the log before returning.  Everything else (the log header synced
when the log restarts, the log synced before each checkpoint) is the same at both
levels.  So a turn acknowledged after an fsync of the log that began after its commit
is as durable as with ``FULL``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sessions.errors import StoreError
from sessions.store.sqlite_core import BatchTurn, SQLiteCore
from sessions.store.sqlite_group import QueuedTurn

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
    if lone is False and store._inline and db.claim():  # None: the lock is taken
        try:
            done, out = core.try_inline(_write_unsynced, (core, turns, store._synchronous))
        finally:
            db.release()
        if done and out is not None:
            return _after_commit(store, batch, out)
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


def _write_unsynced(
    core: SQLiteCore, turns: Sequence[BatchTurn], level: str
) -> list[Exception | None]:
    """:meth:`SQLiteCore.write_batch`, committed without an fsync (the caller fsyncs the
    log); the connection's level is ``level`` again after it."""
    conn = core.conn
    if level == "NORMAL":
        return core.write_batch(turns)
    conn.execute("PRAGMA synchronous=NORMAL")
    try:
        return core.write_batch(turns)
    finally:
        conn.execute(f"PRAGMA synchronous={level}")


def _after_commit(store: SQLiteStore, batch: list[QueuedTurn], out: list[Exception | None]) -> bool:
    """The batch committed without an fsync: refused turns are finished now (nothing of
    them was written), the others once the log's fsync has ended."""
    group, syncer = store._group, store._syncer
    assert group is not None
    waiting = False
    for t, error in zip(batch, out, strict=True):
        if error is not None:
            t.finish(error)
        elif syncer is None:  # synchronous=NORMAL: durable as far as that level promises
            t.finish(None)
        else:
            waiting = True
    if not waiting:
        return True
    assert syncer is not None
    syncer.sync(functools.partial(_synced, store, batch))
    return False


def _synced(store: SQLiteStore, batch: list[QueuedTurn], error: BaseException | None) -> None:
    """In the loop: the fsync covering ``batch`` ended (``error``: it failed)."""
    group = store._group
    assert group is not None
    if error is not None:
        error = StoreError(store.url, f"fsync of the write-ahead log failed: {error}")
        core = store._core
        for t in batch:  # committed but maybe not on disk: the next write reads them again
            if core is not None:
                core.remembered.forget(t.sid)
    group.settle(batch, None, error)


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
        loop.call_soon_threadsafe(group.settle, batch, errors, error)
