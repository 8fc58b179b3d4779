"""The durable-throughput floor: what making a turn wait for an fsync costs by itself.

:class:`FsyncFloorStore` is the memory store, plus one thing: every turn waits for a real
``fsync`` of a real file, shared by the turns ready at the same time through the queue
the SQLite store's group commit uses (:class:`~sessions.store.sqlite_group.GroupCommit`,
same batch rule), with the ``write`` and ``fsync`` in a thread of their own and the
batch's end reported to the loop through one call, as the SQLite store's committer does.
It encodes nothing, signs nothing and runs no SQL: a turn costs the loop what a memory
turn does, plus the wait.

It is a measuring instrument for :mod:`bench.throughput`, not a store: it keeps only what
the memory store keeps and it writes a few bytes a turn, not the turn.  Its rate against
the memory store's is the ceiling of any durable store whose turns are acknowledged after
their fsync and run in one event loop, whatever the store does, in this process or in
another: a turn that waits lets the others run meanwhile, so 100 sessions' turns
interleave (each turn's objects go cold in the caches and survive to older collector
generations), where memory-store turns never wait and run one session's turns back to
back.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from pathlib import Path

from sessions.store.base import TurnCommit
from sessions.store.memory import MemoryStore
from sessions.store.sqlite_group import GroupCommit, QueuedTurn

__all__ = ["FsyncFloorStore"]

_RECORD = 64
"""Bytes appended a turn: about a log record's header, so a batch is one small write."""

_Job = tuple[asyncio.AbstractEventLoop, list[QueuedTurn]] | None


class FsyncFloorStore(MemoryStore):
    """The memory store whose turns each wait for a group ``fsync`` of ``path`` (see the
    module).  Asyncio only, like the SQLite store's group commit."""

    def __init__(self, path: Path) -> None:
        super().__init__("memory:")
        self._path = path
        self._fd = -1
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._group = GroupCommit(FsyncFloorStore._write)
        self.is_open = False  # a manager handed it unopened opens and closes it

    async def open(self) -> None:
        """Create the file and start the thread that writes and fsyncs it."""
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._thread = threading.Thread(target=self._sync_loop, name="fsync-floor", daemon=True)
        self._thread.start()
        self.is_open = True

    async def close(self) -> None:
        """Stop the thread once the batches asked for have been synced; close the file."""
        self.is_open = False
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    async def append_turn(self, session_id: str, commit: TurnCommit, *, token: int) -> None:
        """Append the turn as the memory store does, then wait for the fsync covering it."""
        await super().append_turn(session_id, commit, token=token)
        await self._group.commit(self, QueuedTurn(session_id, commit, token, 0.0))

    def _write(self, batch: list[QueuedTurn]) -> bool:
        self._jobs.put((asyncio.get_running_loop(), batch))
        return False  # settled by the thread, in the loop, once synced

    def _sync_loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, batch = job
            error: OSError | None = None
            try:
                os.write(self._fd, b"\0" * (_RECORD * len(batch)))
                os.fsync(self._fd)
            except OSError as exc:  # each waiting turn gets it
                error = exc
            try:
                loop.call_soon_threadsafe(self._group.settle, self, batch, None, error)
            except RuntimeError:  # the loop closed: nobody waits any more
                return
