"""FifoLock: arrival order, cancellation of waiters (before and at hand-over), misuse."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from sessions.fifolock import FifoLock


async def test_waiters_get_the_lock_in_arrival_order() -> None:
    lock, order = FifoLock(), []

    async def worker(i: int) -> None:
        await lock.acquire()
        try:
            order.append(i)
            await anyio.lowlevel.checkpoint()
        finally:
            lock.release()

    await lock.acquire()
    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(worker, i)
            await anyio.lowlevel.checkpoint()  # each queues before the next starts
        lock.release()
    assert order == list(range(20)) and not lock.locked()


async def test_a_free_lock_is_taken_without_waiting() -> None:
    lock = FifoLock()
    with anyio.CancelScope() as scope:
        scope.cancel()  # a suspension would raise here
        await lock.acquire()
    assert lock.locked() and not scope.cancelled_caught
    lock.release()
    assert not lock.locked()


def _waiter(lock: FifoLock, got: list[str]) -> Callable[[str], Coroutine[Any, Any, None]]:
    """A task body that takes ``lock``, records its name in ``got`` and releases it."""

    async def waiter(name: str) -> None:
        await lock.acquire()
        got.append(name)
        lock.release()

    return waiter


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    lock = FifoLock()
    got: list[str] = []
    await lock.acquire()
    waiter = _waiter(lock, got)

    async with anyio.create_task_group() as tg:
        with anyio.CancelScope() as doomed:
            tg.start_soon(waiter, "first")
            await anyio.lowlevel.checkpoint()
        async with anyio.create_task_group() as inner:
            inner.start_soon(waiter, "cancelled")
            await anyio.lowlevel.checkpoint()
            inner.cancel_scope.cancel()
        tg.start_soon(waiter, "last")
        await anyio.lowlevel.checkpoint()
        lock.release()
    assert got == ["first", "last"] and not lock.locked() and not doomed.cancelled_caught


async def test_a_waiter_cancelled_as_the_lock_is_handed_over_passes_it_on() -> None:
    """Release sets the oldest waiter's event; if that waiter is cancelled before it
    runs, the lock must go to the next one, not be lost."""
    lock = FifoLock()
    got: list[str] = []
    await lock.acquire()
    waiter = _waiter(lock, got)

    with anyio.fail_after(5):  # a lost lock would hang here
        await _cancel_at_hand_over(lock, waiter)
    assert got == ["next"] and not lock.locked()


async def _cancel_at_hand_over(
    lock: FifoLock, waiter: Callable[[str], Coroutine[Any, Any, None]]
) -> None:
    async with anyio.create_task_group() as tg, anyio.create_task_group() as inner:
        inner.start_soon(waiter, "cancelled")
        await anyio.lowlevel.checkpoint()
        tg.start_soon(waiter, "next")
        await anyio.lowlevel.checkpoint()
        inner.cancel_scope.cancel()  # delivered at the waiter's next step...
        lock.release()  # ...which finds the lock already handed to it


def test_releasing_an_unlocked_lock_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="unlocked"):
        FifoLock().release()
