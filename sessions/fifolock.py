"""The session lock: first come, first served, and free when nobody contends.

``anyio.Lock`` asks anyio for the current task on every acquire and release (a couple
of microseconds a turn).  A session's lock is held by one turn at a time and mostly
uncontended, so this one is a flag when free and a queue of events when not: a release
hands the lock straight to the oldest waiter, which keeps turns in arrival order.
"""

from __future__ import annotations

from collections import deque

import anyio

__all__ = ["FifoLock"]


class FifoLock:
    """An asyncio/trio lock granting waiters in arrival order (not reentrant)."""

    __slots__ = ("_locked", "_waiters")

    def __init__(self) -> None:
        self._locked = False
        self._waiters: deque[anyio.Event] | None = None  # made when first contended

    def locked(self) -> bool:
        """Whether someone holds the lock."""
        return self._locked

    async def acquire(self) -> None:
        """Take the lock, waiting behind everyone who asked before (cancellable while
        waiting; a free lock is taken without suspending)."""
        if not self._locked:
            self._locked = True
            return
        granted = anyio.Event()
        waiters = self._waiters
        if waiters is None:
            waiters = self._waiters = deque()
        waiters.append(granted)
        try:
            await granted.wait()
        except BaseException:
            if granted.is_set():  # handed over just as we were cancelled: pass it on
                self.release()
            else:
                waiters.remove(granted)
            raise

    def release(self) -> None:
        """Give the lock to the oldest waiter, or free it."""
        if not self._locked:
            raise RuntimeError("release of an unlocked FifoLock")
        waiters = self._waiters
        if waiters:
            waiters.popleft().set()  # stays locked: it is the waiter's now
        else:
            self._locked = False
