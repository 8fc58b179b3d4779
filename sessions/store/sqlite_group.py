"""SQLite group commit: turns of different sessions ready at the same time share one
transaction, so one fsync makes all of them durable.

There is no timer and no background task.  A turn is queued; if no batch is being
written, its caller leads: it yields to the event loop once (the turns that are
ready then join the queue), takes the queue as one batch and writes it.  Turns that
arrive while a batch is written wait; when it ends, the first of them leads the next
batch, which is whatever queued meanwhile.  A lone turn is written at once, as alone.

Each caller returns only when the transaction holding its turn has committed (with
``synchronous=FULL``, after the fsync that covers it) or raises that turn's own error:
:meth:`~sessions.store.sqlite_core.SQLiteCore.write_batch` writes each turn in a
savepoint, so a refused turn writes nothing and the others commit.  A batch holds at
most one turn per session and the queue is first in, first out, so a session's turns
are written in the order they were queued.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import anyio
import anyio.lowlevel

from sessions.store.base import TurnCommit

__all__ = ["BATCH_MAX", "GroupCommit", "QueuedTurn"]

BATCH_MAX: Final = 512
"""Turns in one batch at most: bounds how long one transaction holds the write lock."""


@dataclass(slots=True, eq=False)
class QueuedTurn:
    """One turn waiting for a group commit.

    ``done`` is set once its batch has ended, and ``error`` then holds the turn's own
    error (``None``: committed).  ``wake`` exists while its caller waits.
    """

    sid: str
    commit: TurnCommit
    token: int
    now: float
    done: bool = False
    error: BaseException | None = None
    wake: anyio.Event | None = None

    def finish(self, error: BaseException | None) -> None:
        """Record the outcome and wake the caller."""
        self.done, self.error = True, error
        if self.wake is not None:
            self.wake.set()


Writer = Callable[[list[QueuedTurn]], Awaitable[None]]
"""Writes a batch and finishes each of its turns; raising fails every unfinished one."""


class GroupCommit:
    """The queue of turns and the rule for who writes the next batch (see the module).

    ``write_here`` may write a batch at once, without waiting (``True`` if it did);
    else ``write`` writes it, shielded from cancellation, so a leader that is cancelled
    still finishes the batch it took (its other turns' callers wait for it).
    """

    def __init__(self, write_here: Callable[[list[QueuedTurn]], bool], write: Writer) -> None:
        self._write_here = write_here
        self._write = write
        self._queue: deque[QueuedTurn] = deque()
        self._writing = False
        self.batches = 0
        """Batches written (tests compare it with the number of turns)."""

    async def commit(self, turn: QueuedTurn) -> None:
        """Queue ``turn`` and return once it is committed, or raise its error."""
        self._queue.append(turn)
        try:
            while not turn.done:
                if self._writing:
                    turn.wake = anyio.Event()
                    await turn.wake.wait()
                else:
                    await self._lead()
        except BaseException:
            self._abandon(turn)
            raise
        if turn.error is not None:
            raise turn.error

    async def _lead(self) -> None:
        """Write the next batch: whatever is queued once the ready tasks have run."""
        self._writing = True
        try:
            await anyio.lowlevel.checkpoint()
            batch = self._take()
            if self._write_here(batch):  # it never waits: nothing to shield
                self.batches += 1
                return
            with anyio.CancelScope(shield=True):
                try:
                    await self._write(batch)
                except BaseException as exc:  # the whole batch failed: each caller gets it
                    for turn in batch:
                        if not turn.done:
                            turn.finish(exc)
                    if not isinstance(exc, Exception):
                        raise
            self.batches += 1
        finally:
            self._writing = False
            self._pass_lead()

    def _abandon(self, turn: QueuedTurn) -> None:
        """Its caller was cancelled: a queued turn leaves (nothing written)."""
        if not turn.done and turn in self._queue:
            self._queue.remove(turn)
        if not self._writing:
            self._pass_lead()

    def _pass_lead(self) -> None:
        """Wake the first queued turn's caller: it leads the next batch."""
        if self._queue and (wake := self._queue[0].wake) is not None:
            wake.set()

    def _take(self) -> list[QueuedTurn]:
        """The next batch: queued turns in order, at most one per session."""
        if len(self._queue) == 1:
            return [self._queue.popleft()]
        queue, batch, later, seen = self._queue, list[QueuedTurn](), list[QueuedTurn](), set()
        while queue and len(batch) < BATCH_MAX:
            turn = queue.popleft()
            if turn.sid in seen:
                later.append(turn)
            else:
                seen.add(turn.sid)
                batch.append(turn)
        queue.extendleft(reversed(later))
        return batch
