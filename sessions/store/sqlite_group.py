"""SQLite group commit: turns of different sessions ready at the same time share one
transaction, and one fsync makes all of them durable.

There is no timer and no background task.  A batch is what is waiting when the writer
is free.  A turn that finds the writer free yields to the event loop once (the turns
ready then join the queue) and writes the batch: its statements run in the event loop's
thread, and its ``COMMIT`` (with ``synchronous=FULL``: the log written and fsynced) in
the store's :class:`Committer` thread, while the loop goes on: the sessions of the
previous batch prepare their next turns meanwhile, and those form the next batch,
written as soon as this commit has ended.

Python runs one thread at a time, so the statements stay in the loop's thread: a
database thread running statements while the loop is busy waits for the interpreter
at every statement (each releases it), which is far slower than running them in the
loop.  The ``COMMIT`` releases it once, for the log write and fsync together.  The
connection stays held from the batch's first statement to its commit, so nothing else
of this store runs inside the transaction.

So that one half of the sessions at work prepares while the other half's batch
commits, a batch holds at most half of them (:func:`batch_limit`); a first batch is
everything ready at once.

Each caller returns only when the commit holding its turn has ended (with
``synchronous=FULL`` or ``EXTRA``: after its fsync) or raises that turn's own error:
:func:`~sessions.store.sqlite_core.batch_rows` writes each turn in a savepoint, so a
refused turn writes nothing and the others commit.  The commit's end wakes the whole
batch through one call into the loop.  A batch holds at most one turn per session and
the queue is first in, first out, so a session's turns are written in the order they
were queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

import anyio
import anyio.lowlevel

from sessions.store.base import TurnCommit

__all__ = ["BATCH_MAX", "BATCH_MIN", "Committer", "GroupCommit", "QueuedTurn", "batch_limit"]

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


_O = TypeVar("_O")

Writer = Callable[[_O, list[QueuedTurn]], bool]
"""Writes a batch (its second argument) for the owner given (its first) in the loop's
thread.  ``True``: every turn of it is finished; ``False``: it will call
:meth:`GroupCommit.settle` in the loop when the batch ends."""


def batch_limit(queued: Sequence[QueuedTurn], last: frozenset[str]) -> int:
    """How many turns the next batch may take: half of the sessions at work (those of
    the last batch and those queued), so the other half prepares while it is fsynced;
    at least :data:`BATCH_MIN`, at most :data:`BATCH_MAX`."""
    at_work = len(last.union(t.sid for t in queued))
    return min(BATCH_MAX, max(BATCH_MIN, (at_work + 1) // 2))


def _commit(conn: sqlite3.Connection) -> object:
    return conn.execute("COMMIT")


class GroupCommit(Generic[_O]):
    """The queue of turns and the rule for when the next batch is written (see the
    module).  ``write`` writes one batch for the owner (the store) that each call hands
    in: the group never keeps it, since the store keeps the group, and each holding the
    other would make a reference cycle (a closed store left for the cyclic garbage
    collector)."""

    def __init__(self, write: Writer[_O]) -> None:
        self._write = write
        self._queue: deque[QueuedTurn] = deque()
        self._busy = False
        self._last: frozenset[str] = frozenset()
        self.batches = 0
        """Batches written (tests compare it with the number of turns)."""

    async def commit(self, owner: _O, turn: QueuedTurn) -> None:
        """Queue ``turn`` of ``owner`` and return once it is durable, or raise its error."""
        self._queue.append(turn)
        try:
            if not self._busy:
                self._busy = True
                try:
                    await anyio.lowlevel.checkpoint()  # the turns ready now join this batch
                except BaseException:
                    # Cancelled before anything was written: its turn leaves the batch
                    # (else it would be written while its caller is told it was not).
                    if turn in self._queue:
                        self._queue.remove(turn)
                    raise
                finally:
                    self._next(owner)
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
        owner: _O,
        batch: list[QueuedTurn],
        errors: Sequence[BaseException | None] | None,
        error: BaseException | None = None,
    ) -> None:
        """In the loop: the batch written by a deferred write has ended.  Its unfinished
        turns get ``error``, else their entry in ``errors`` (``None``: committed);
        then the next batch is written, for ``owner``."""
        for i, turn in enumerate(batch):
            if not turn.done:
                turn.finish(error if error is not None or errors is None else errors[i])
        self.batches += 1
        self._next(owner)

    def _next(self, owner: _O) -> None:
        """Write batches while some are waiting and each ends at once; else free the
        writer (nothing waits) or leave it busy until :meth:`settle`."""
        while batch := self._take():
            try:
                if not self._write(owner, batch):
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


class Committer:
    """A thread that commits write transactions the event loop's thread began, and
    reports each end to the loop through one call (``loop.call_soon_threadsafe``).

    ``COMMIT`` with ``synchronous=FULL`` writes the log and fsyncs it in one call that
    releases the interpreter throughout, so the loop runs meanwhile.  ``commit`` runs
    the statement (tests pass an instrumented one).
    """

    def __init__(self, name: str, commit: Callable[[sqlite3.Connection], object] = _commit) -> None:
        self._jobs: queue.SimpleQueue[_Commit | None] = queue.SimpleQueue()
        self.thread = threading.Thread(
            target=_commit_loop, args=(self._jobs, commit), name=name, daemon=True
        )
        self.thread.start()

    def commit(
        self,
        conn: sqlite3.Connection,
        release: Callable[[], None],
        done: Callable[[Exception | None], None],
    ) -> None:
        """Commit ``conn``'s open transaction (rolled back if that fails), then call
        ``done(error)`` in the running loop (``None``: committed) with the connection
        still claimed: ``done`` calls ``release()`` once it has recorded what the
        commit made durable, so nothing else of the store (a delete waiting in the
        database thread, say) runs before that.  Call from the loop's thread."""
        self._jobs.put((conn, release, asyncio.get_running_loop(), done))

    def stop(self) -> None:
        """End the thread once the commits asked for before have run."""
        self._jobs.put(None)


_Commit = tuple[
    sqlite3.Connection,
    Callable[[], None],
    asyncio.AbstractEventLoop,
    Callable[[Exception | None], None],
]


def _commit_loop(
    jobs: queue.SimpleQueue[_Commit | None], commit: Callable[[sqlite3.Connection], object]
) -> None:
    """The :class:`Committer` thread's body."""
    while (job := jobs.get()) is not None:
        conn, release, loop, done = job
        error: Exception | None = None
        try:
            commit(conn)
        except Exception as exc:  # SQLite's, or another (the batch must end either way)
            error = exc
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.rollback()
        except BaseException:
            release()
            raise
        try:
            loop.call_soon_threadsafe(done, error)
        except RuntimeError:  # the loop closed: nobody waits any more
            release()
