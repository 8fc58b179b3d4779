"""A session's FIFO lock: turns in arrival order, one at a time, and the writes that
must never land inside a turn.

The lock also orders session-state writes (a heartbeat's result) and compaction
summaries against turns: whoever releases it first stores state not stored yet (when
a turn ends).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio

from sessions.errors import SessionBusy, SessionClosed
from sessions.fifolock import FifoLock
from sessions.sessionlog import SessionLog
from sessions.state import SessionState, state_changes
from sessions.store.base import Message
from sessions.turn_host import TurnHost, TurnRuntime
from sessions.writer import SessionWriter

__all__ = ["TurnLock"]


class TurnLock:
    """The FIFO lock of one session's turns, bounded by the runtime's ``limits.queue_size``.

    Besides turns (:meth:`enter` / :meth:`leave`) it serialises storing a heartbeat's
    result (:meth:`offer_state`), applying a compaction summary (:meth:`apply_summary`)
    and the last writes of a closing session (:meth:`drain`).
    """

    __slots__ = ("_host", "_lock", "_log", "_rt", "_state", "_turn_held", "_waiting", "_writer")

    def __init__(
        self,
        host: TurnHost,
        runtime: TurnRuntime,
        writer: SessionWriter,
        log: SessionLog,
        state: SessionState,
    ) -> None:
        self._host = host
        self._rt = runtime
        self._writer = writer
        self._log = log
        self._state = state
        self._lock = FifoLock()  # turns keep arrival order
        self._waiting = 0
        self._turn_held = False  # the lock is held by a turn (not a state write)

    @property
    def busy(self) -> bool:
        """True while a turn runs (or a compaction applies, or session state is stored)."""
        return self._lock.locked()

    @property
    def queued(self) -> int:
        """Turns waiting behind the running one."""
        return self._waiting

    async def enter(self) -> None:
        """Take the session lock in FIFO order, bounded by the queue size."""
        host = self._host
        if host.closed:
            raise SessionClosed(host.id, "closed")
        # A state write or a compaction holding the lock is brief and is not a turn:
        # the first turn behind it waits without counting against the queue.
        room = self._rt.limits.queue_size + (0 if self._turn_held else 1)
        if self._lock.locked() and self._waiting >= room:
            raise SessionBusy(host.id, f"{self._waiting} turns already queued")
        self._waiting += 1
        try:
            await self._lock.acquire()
        finally:
            self._waiting -= 1
        if host.closed:
            self._lock.release()
            raise SessionClosed(host.id, "closed while the turn was queued")
        self._turn_held = True

    async def leave(self) -> None:
        """End a turn: phase idle, then :meth:`_unlock`."""
        self._host.phase = "idle"
        await self._unlock()

    async def _unlock(self) -> None:
        """Apply a heartbeat result that waited for the lock holder, store any session
        state not stored yet, release the lock.  Never raises (write failures are
        logged): it runs in ``finally`` blocks, after the turn's own outcome."""
        state = self._state
        try:
            # Checked here, not in flush(): most turns leave nothing to store, and then
            # cost no coroutine at all.  close() stores it itself.
            if (state.pending is not None or state.dirty) and not self._host.closed:
                await state.flush(self._writer)
        finally:
            self._turn_held = False  # only now: the trailing write is part of the turn
            self._lock.release()

    async def offer_state(self, ctx: Mapping[str, Any]) -> None:
        """Apply a heartbeat's result now if no turn runs, else when the turn ends.

        Applied now, it is stored at once under the lock (free, so taken without
        waiting); applied at the end of a turn, :meth:`_unlock` stores it before
        releasing the lock.
        """
        changes = state_changes(ctx)
        if not changes:
            return
        state = self._state
        if self._lock.locked():
            state.defer(changes)
        elif state.apply(changes):
            state.dirty = True
            if not self._host.closed:  # else close() stores it
                await self._lock.acquire()
                await self._unlock()

    async def apply_summary(self, summary: Message, upto_seq: int) -> bool:
        """Archive ``summary`` in the store and drop what it covers from memory (locked)."""
        await self._lock.acquire()
        try:
            if self._host.closed:
                return False
            with anyio.CancelScope(shield=True):
                await self._writer.append_summary(summary, upto_seq)
            self._log.apply_summary(summary, upto_seq)
            return True
        finally:
            await self._unlock()

    async def drain(self) -> None:
        """Wait for the running and queued turns (the session is closed: no new ones),
        then store session state not stored yet."""
        await self._lock.acquire()
        try:
            await self._state.flush(self._writer)
        finally:
            self._lock.release()
