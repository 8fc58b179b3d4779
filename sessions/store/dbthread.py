"""One long-lived thread that owns a blocking database connection and runs calls in order.

``anyio.to_thread.run_sync`` per call costs about 60-100 µs on the team's VM (a
limiter, a worker-pool hand-off, a cancel scope); a SQLite commit without fsync costs
about 150 µs, so the hand-off was a third of a turn's commit.  A dedicated thread fed by
a :class:`queue.SimpleQueue`, answering through ``loop.call_soon_threadsafe``, costs
the two unavoidable thread wake-ups and little else.

Calls run one at a time in submission order, so the connection is never used by two
threads at once and a caller that submits after another sees its effects.

Cancellation: a caller cancelled while its call is still queued removes it (it never
runs); a caller cancelled while its call runs stops waiting at once and the call
finishes in the thread, so a transaction always commits or rolls back whole, never half.
Either way the cancellation propagates.  Outside asyncio (anyio on trio), callers wait
through ``anyio.to_thread`` instead: slower, same order and atomicity.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any, Final, Generic, TypeVar

import anyio
import anyio.to_thread

__all__ = ["DBThread", "ThreadClosed"]

T = TypeVar("T")

_QUEUED: Final = 0
_RUNNING: Final = 1
_SKIPPED: Final = 2
_DONE: Final = 3


class ThreadClosed(RuntimeError):
    """A call was submitted to a :class:`DBThread` that is stopped (a caller bug)."""


class _Job(Generic[T]):
    """One submitted call, its state, and how to report its end."""

    __slots__ = ("args", "error", "event", "fn", "fut", "loop", "result", "state")

    def __init__(self, fn: Callable[..., T], args: tuple[Any, ...]) -> None:
        self.fn, self.args = fn, args
        self.state = _QUEUED
        self.result: T | None = None
        self.error: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.fut: asyncio.Future[T] | None = None
        self.event: threading.Event | None = None


def _resolve(job: _Job[Any]) -> None:
    """In the event loop: hand the job's outcome to its waiter, if it still waits."""
    fut = job.fut
    if fut is None or fut.done():
        return
    if job.error is not None:
        fut.set_exception(job.error)
        job.error = None  # break the exception -> traceback -> frame -> job cycle
    else:
        fut.set_result(job.result)


def _serve(
    jobs: queue.SimpleQueue[_Job[Any] | None],
    lock: threading.Lock,
    idle: Callable[[], object] | None,
    idle_after: float,
) -> None:
    """The thread's body: run jobs until the ``None`` sentinel.

    After a burst of jobs, if nothing arrives for ``idle_after`` seconds, ``idle()``
    runs once (errors ignored: idle work is an optimisation), then the thread sleeps
    until the next job.  A module function holding no reference to the
    :class:`DBThread`, so an abandoned one can still be collected (its finalizer sends
    the sentinel).
    """
    busy = False
    while True:
        if busy and idle is not None:
            try:
                job = jobs.get(timeout=idle_after)
            except queue.Empty:
                busy = False
                with contextlib.suppress(Exception):
                    idle()
                continue
        else:
            job = jobs.get()
        if job is None:
            return
        busy = True
        _run_job(job, lock)


def _run_job(job: _Job[Any], lock: threading.Lock) -> None:
    """Run one job unless its caller gave up before it started; report its end."""
    with lock:
        if job.state != _QUEUED:
            return  # its caller was cancelled before it started
        job.state = _RUNNING
    try:
        job.result = job.fn(*job.args)
    except BaseException as exc:  # delivered to the caller, never lost in the thread
        job.error = exc
    with lock:
        job.state = _DONE
    if job.event is not None:
        job.event.set()
    elif job.loop is not None:
        # A closed loop raises RuntimeError: nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            job.loop.call_soon_threadsafe(_resolve, job)


class DBThread:
    """A started thread that runs blocking calls one at a time, in order.

    ``await thread.run(fn, *args)`` runs ``fn(*args)`` in the thread and returns its
    result or raises its exception.  :meth:`stop` lets queued calls finish, then ends
    the thread.  ``idle``, if given, runs in the thread once the calls pause for
    ``idle_after`` seconds (housekeeping that should not delay a caller).
    """

    def __init__(
        self, name: str, *, idle: Callable[[], object] | None = None, idle_after: float = 0.05
    ) -> None:
        self._jobs: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._stopped = False
        self.thread = threading.Thread(
            target=_serve,
            args=(self._jobs, self._lock, idle, idle_after),
            name=name,
            daemon=True,
        )
        self.thread.start()
        weakref.finalize(self, self._jobs.put, None)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in the thread after every call submitted before it."""
        if self._stopped:
            raise ThreadClosed("the database thread is stopped")
        job: _Job[T] = _Job(fn, args)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio (anyio on trio): wait through a worker thread
            return await self._run_elsewhere(job)
        job.loop, job.fut = loop, loop.create_future()
        self._jobs.put(job)
        try:
            return await job.fut
        except asyncio.CancelledError:
            self._abandon(job)
            raise

    def _abandon(self, job: _Job[Any]) -> None:
        """The caller was cancelled: a queued job is skipped, a running one finishes."""
        with self._lock:
            if job.state == _QUEUED:
                job.state = _SKIPPED

    async def _run_elsewhere(self, job: _Job[T]) -> T:
        job.event = threading.Event()
        self._jobs.put(job)
        # Not abandoned on cancel: anyio waits for the event, so the job has ended.
        await anyio.to_thread.run_sync(job.event.wait)
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]  # set when error is None

    async def stop(self) -> None:
        """Let queued calls run, end the thread and wait for it.  Idempotent."""
        if not self._stopped:
            self._stopped = True
            self._jobs.put(None)
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            await anyio.to_thread.run_sync(self.thread.join)
