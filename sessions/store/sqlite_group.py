"""SQLite group commit: turns of different sessions ready at the same time share one
transaction, and one fsync makes all of them durable.

There is no timer and no background task.  A batch is what is waiting when the writer
is free.  A turn that finds the writer free yields to the event loop once (the turns
ready then join the queue) and writes the batch.  A batch is written in two steps:

* its transaction, in the event loop's thread, committed without an fsync
  (``synchronous=NORMAL`` for that one commit);
* then the fsync of the write-ahead log, in the store's :class:`Syncer` thread, while
  the event loop goes on: the sessions of the previous batch prepare their next turns
  meanwhile, and those form the next batch, written as soon as this fsync has ended.

Python runs one thread at a time, so the SQL stays in the loop's thread: a database
thread running statements while the loop is busy waits for the interpreter at every
statement (each releases it), which is far slower than running them in the loop.  The
fsync releases the interpreter once, for its whole length.

So that one half of the sessions at work prepares while the other half's batch is
fsynced, a batch holds at most half of them (:func:`batch_limit`); a first batch is
everything ready at once.

Each caller returns only when its turn is durable (with ``synchronous=FULL`` or
``EXTRA``: after an fsync that began after its commit) or raises that turn's own error:
:meth:`~sessions.store.sqlite_core.SQLiteCore.write_batch` writes each turn in a
savepoint, so a refused turn writes nothing and the others commit.  The fsync's end
wakes the whole batch through one call into the loop.  A batch holds at most one turn
per session and the queue is first in, first out, so a session's turns are written in
the order they were queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import anyio
import anyio.lowlevel

from sessions.store.base import TurnCommit

__all__ = ["BATCH_MAX", "BATCH_MIN", "GroupCommit", "QueuedTurn", "Syncer", "batch_limit"]

BATCH_MAX: Final = 512
"""Turns in one batch at most: bounds how long one transaction holds the write lock."""

BATCH_MIN: Final = 16
"""A batch is never limited below this: splitting fewer saves less than a commit costs."""


@dataclass(slots=True, eq=False)
class QueuedTurn:
    """One turn waiting for a group commit.

    ``done`` is set once its batch has ended, and ``error`` then holds the turn's own
    error (``None``: committed).  ``wake`` exists while its caller waits (asyncio: the
    store uses group commit on asyncio only).
    """

    sid: str
    commit: TurnCommit
    token: int
    now: float
    done: bool = False
    error: BaseException | None = None
    wake: asyncio.Future[None] | None = None

    def finish(self, error: BaseException | None) -> None:
        """Record the outcome and wake the caller."""
        self.done, self.error = True, error
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(None)


Writer = Callable[[list[QueuedTurn]], bool]
"""Writes a batch in the loop's thread.  ``True``: every turn of it is finished;
``False``: it will call :meth:`GroupCommit.settle` in the loop when the batch ends."""


def batch_limit(queued: Sequence[QueuedTurn], last: frozenset[str]) -> int:
    """How many turns the next batch may take: half of the sessions at work (those of
    the last batch and those queued), so the other half prepares while it is fsynced;
    at least :data:`BATCH_MIN`, at most :data:`BATCH_MAX`."""
    at_work = len(last.union(t.sid for t in queued))
    return min(BATCH_MAX, max(BATCH_MIN, (at_work + 1) // 2))


class GroupCommit:
    """The queue of turns and the rule for when the next batch is written (see the
    module).  ``write`` writes one batch."""

    def __init__(self, write: Writer) -> None:
        self._write = write
        self._queue: deque[QueuedTurn] = deque()
        self._busy = False
        self._last: frozenset[str] = frozenset()
        self.batches = 0
        """Batches written (tests compare it with the number of turns)."""

    async def commit(self, turn: QueuedTurn) -> None:
        """Queue ``turn`` and return once it is durable, or raise its error."""
        self._queue.append(turn)
        try:
            if not self._busy:
                self._busy = True
                try:
                    await anyio.lowlevel.checkpoint()  # the turns ready now join this batch
                finally:
                    self._next()
            if not turn.done:
                # A bare future: the cheapest wake-up (group commit runs on asyncio only).
                turn.wake = asyncio.get_running_loop().create_future()
                await turn.wake
        except BaseException:
            if not turn.done and turn in self._queue:  # nothing of it written
                self._queue.remove(turn)
            raise
        if turn.error is not None:
            raise turn.error

    def settle(
        self,
        batch: list[QueuedTurn],
        errors: Sequence[BaseException | None] | None,
        error: BaseException | None = None,
    ) -> None:
        """In the loop: the batch written by a deferred write has ended.  Its unfinished
        turns get ``error``, else their entry in ``errors`` (``None``: committed);
        then the next batch is written."""
        for i, turn in enumerate(batch):
            if not turn.done:
                turn.finish(error if error is not None or errors is None else errors[i])
        self.batches += 1
        self._next()

    def _next(self) -> None:
        """Write batches while some are waiting and each ends at once; else free the
        writer (nothing waits) or leave it busy until :meth:`settle`."""
        while batch := self._take():
            try:
                if not self._write(batch):
                    return
            except BaseException as exc:  # the whole batch failed: each caller gets it
                for turn in batch:
                    if not turn.done:
                        turn.finish(exc)
                if not isinstance(exc, Exception):
                    self._busy = False
                    raise
            self.batches += 1
        self._busy = False

    def _take(self) -> list[QueuedTurn]:
        """The next batch: queued turns in order, at most one per session, at most
        :func:`batch_limit` of them."""
        queue = self._queue
        if len(queue) <= 1:
            batch = [queue.popleft()] if queue else []
        else:
            limit = batch_limit(queue, self._last)
            batch, later, seen = list[QueuedTurn](), list[QueuedTurn](), set[str]()
            while queue and len(batch) < limit:
                turn = queue.popleft()
                if turn.sid in seen:
                    later.append(turn)
                else:
                    seen.add(turn.sid)
                    batch.append(turn)
            queue.extendleft(reversed(later))
        self._last = frozenset(t.sid for t in batch)
        return batch


class Syncer:
    """A thread that fsyncs one file on request and reports each end to the event loop
    through one call (``loop.call_soon_threadsafe``).

    The file is opened in the thread at the first request and closed when the thread
    stops.  ``fsync`` is :func:`os.fsync` (tests pass an instrumented one).
    """

    def __init__(self, name: str, path: str, fsync: Callable[[int], None] = os.fsync) -> None:
        self._jobs: queue.SimpleQueue[
            tuple[asyncio.AbstractEventLoop, Callable[[BaseException | None], None]] | None
        ] = queue.SimpleQueue()
        self.thread = threading.Thread(
            target=_sync_loop, args=(self._jobs, path, fsync), name=name, daemon=True
        )
        self.thread.start()

    def sync(self, done: Callable[[BaseException | None], None]) -> None:
        """Fsync the file, then call ``done(error)`` in the running loop (``None``: the
        fsync succeeded).  Call from the loop's thread."""
        self._jobs.put((asyncio.get_running_loop(), done))

    def stop(self) -> None:
        """End the thread once the requests made before have run."""
        self._jobs.put(None)


def _sync_loop(
    jobs: queue.SimpleQueue[
        tuple[asyncio.AbstractEventLoop, Callable[[BaseException | None], None]] | None
    ],
    path: str,
    fsync: Callable[[int], None],
) -> None:
    """The :class:`Syncer` thread's body."""
    fd = -1
    try:
        while (job := jobs.get()) is not None:
            loop, done = job
            error: BaseException | None = None
            try:
                if fd < 0:
                    fd = os.open(path, os.O_RDONLY)
                fsync(fd)
            except OSError as exc:
                error = exc
            # A closed loop raises RuntimeError: nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(done, error)
    finally:
        if fd >= 0:
            os.close(fd)
