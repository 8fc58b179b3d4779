"""One long-lived thread that owns a blocking database connection and runs calls in order.

``anyio.to_thread.run_sync`` per call pays a limiter, a worker-pool hand-off and a
cancel scope, a large share of a small SQLite commit.  A dedicated thread fed by
a :class:`queue.SimpleQueue`, answering through ``loop.call_soon_threadsafe``, costs
the two unavoidable thread wake-ups and little else.

Calls run one at a time in submission order, so the connection is never used by two
threads at once and a caller that submits after another sees its effects.

Even those two wake-ups can cost as much as the work of a small commit (``bench
store`` measures it).  So a caller may instead :meth:`DBThread.claim` the connection
and use it in its own thread, when no call is queued or running (so the order still
holds); the thread's calls and claimed uses exclude each other through one lock.

Cancellation: a caller cancelled while its call is still queued removes it (it never
runs); a caller cancelled while its call runs stops waiting at once and the call
finishes in the thread, so a transaction always commits or rolls back whole, never half.
Either way the cancellation propagates.  Such an abandoned call may be waiting for a lock
held by another process; :meth:`DBThread.interrupt_abandoned` (used when the resource is
closed) lets its owner cut that wait short, without touching a call somebody waits for.

Outside asyncio (anyio on trio), callers wait through ``anyio.to_thread`` instead:
slower, same order and atomicity.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any, Final, Generic, TypeVar

import anyio
import anyio.to_thread

from sessions.errors import StoreError

__all__ = ["DBThread", "ThreadClosed"]

T = TypeVar("T")

_QUEUED: Final = 0
_RUNNING: Final = 1
_SKIPPED: Final = 2
_DONE: Final = 3


class ThreadClosed(StoreError, RuntimeError):
    """A call was submitted to a :class:`DBThread` that is stopped (a caller bug).

    A :class:`~sessions.errors.StoreError` (its ``url`` is the thread's name), and a
    ``RuntimeError`` as before.
    """

    def __init__(self, name: str = "database thread") -> None:
        StoreError.__init__(self, name, "the database thread is stopped")


class _Shared:
    """What the thread and its :class:`DBThread` share (the thread holds no reference
    to the :class:`DBThread` itself, so an abandoned one can be collected)."""

    __slots__ = ("interrupted", "lock", "outstanding", "running", "use", "using")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        """Guards job states and ``outstanding``."""
        self.use = threading.Lock()
        """Held by whoever uses the connection: a running call or a claim."""
        self.outstanding = 0
        """Calls submitted by :meth:`DBThread.run` and not yet finished or skipped."""
        self.running: _Job[Any] | None = None
        """The call running now (guarded by ``lock``)."""
        self.interrupted = False
        """:meth:`DBThread.interrupt_abandoned` reached the call running now."""
        self.using = False
        """The running call holds ``use`` (guarded by ``lock``): until then a claim
        may be using the connection in another thread (a batch's commit)."""


class _Job(Generic[T]):
    """One submitted call, its state, and how to report its end."""

    __slots__ = (
        "abandoned", "args", "error", "event", "fn", "fut", "loop", "posted", "result", "state",
    )  # fmt: skip

    def __init__(self, fn: Callable[..., T], args: tuple[Any, ...], posted: bool = False) -> None:
        self.fn, self.args = fn, args
        self.posted = posted
        self.state = _QUEUED
        self.abandoned = False
        """Its caller stopped waiting while it ran (guarded by the shared lock)."""
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


def _interrupted(shared: _Shared) -> bool:
    return shared.interrupted


def _serve(jobs: queue.SimpleQueue[_Job[Any] | None], shared: _Shared) -> None:
    """The thread's body: run jobs until the ``None`` sentinel."""
    while (job := jobs.get()) is not None:
        if not job.posted:
            _run_job(job, shared)
            continue
        with shared.use, contextlib.suppress(Exception):  # posted work is best-effort
            job.fn(*job.args)


def _run_job(job: _Job[Any], shared: _Shared) -> None:
    """Run one call unless its caller gave up before it started; report its end."""
    with shared.lock:
        if job.state != _QUEUED:
            shared.outstanding -= 1
            return  # its caller was cancelled before it started
        job.state = _RUNNING
        shared.running = job
    try:
        with shared.use:
            with shared.lock:
                shared.using = True
            try:
                job.result = job.fn(*job.args)
            finally:
                with shared.lock:  # before ``use`` is free: a claim may take it next
                    shared.using = False
    except BaseException as exc:  # delivered to the caller, never lost in the thread
        job.error = exc
    with shared.lock:
        job.state = _DONE
        shared.running, shared.interrupted = None, False
        shared.outstanding -= 1
    if job.event is not None:
        job.event.set()
    elif job.loop is not None:
        # A closed loop raises RuntimeError: nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            job.loop.call_soon_threadsafe(_resolve, job)


class DBThread:
    """A started thread that runs blocking calls one at a time, in order.

    ``await thread.run(fn, *args)`` runs ``fn(*args)`` in the thread and returns its
    result or raises its exception.  :meth:`claim` lets a caller use the thread's
    resource in its own thread instead; :meth:`post` queues best-effort work that
    nobody waits for.  :meth:`stop` lets queued calls finish, then
    ends the thread.
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._shared = _Shared()
        self._stopped = False
        self.thread = threading.Thread(
            target=_serve, args=(self._jobs, self._shared), name=name, daemon=True
        )
        self.thread.start()
        weakref.finalize(self, self._jobs.put, None)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in the thread after every call submitted before it."""
        if self._stopped:
            raise ThreadClosed()
        job: _Job[T] = _Job(fn, args)
        shared = self._shared
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio (anyio on trio): wait through a worker thread
            return await self._run_elsewhere(job)
        job.loop, job.fut = loop, loop.create_future()
        with shared.lock:
            shared.outstanding += 1
        self._jobs.put(job)
        try:
            return await job.fut
        except asyncio.CancelledError:
            self._abandon(job)
            raise

    def claim(self) -> bool:
        """Take the resource for use in the calling thread, if no call is queued or
        running; ``True`` if taken (then :meth:`release` it), ``False`` at once if not.

        Never waits.  A claim made while calls are pending would overtake them, so it
        is refused and the caller should :meth:`run` instead.
        """
        shared = self._shared
        if self._stopped or shared.outstanding or not shared.use.acquire(blocking=False):
            return False
        if shared.outstanding:  # submitted from another thread meanwhile
            shared.use.release()
            return False
        return True

    def release(self) -> None:
        """End a successful :meth:`claim`."""
        self._shared.use.release()

    def post(self, fn: Callable[[], object]) -> None:
        """Queue ``fn()`` to run in the thread, in order, without waiting for it.

        It holds the resource like a call, but nobody waits for it: its result and
        errors are dropped (it is best-effort work), and a :meth:`claim` made while it
        is queued is not refused for it.
        """
        if not self._stopped:
            self._jobs.put(_Job(fn, (), posted=True))

    def _abandon(self, job: _Job[Any]) -> None:
        """The caller was cancelled: a queued job is skipped, a running one finishes
        (unless :meth:`interrupt_abandoned` cuts it short)."""
        with self._shared.lock:
            if job.state == _QUEUED:
                job.state = _SKIPPED
            elif job.state == _RUNNING:
                job.abandoned = True

    def interrupt_abandoned(self, interrupt: Callable[[], object]) -> bool:
        """Call ``interrupt()`` if the call running now is one whose caller was
        cancelled (nobody waits for it); ``True`` if it was called.

        ``interrupt`` must be safe to call from another thread and should make the
        running call end soon (``sqlite3.Connection.interrupt``).  It is called under
        the lock the thread takes to end one call and start the next, so it reaches
        the abandoned call, never a call queued after it; posted work and calls someone
        still waits for are never interrupted.  A call still waiting for a claim (its
        resource in use in another thread) is not interrupted, only told to stop
        waiting (:attr:`interrupted`) once it runs.
        """
        with self._shared.lock:
            job = self._shared.running
            if job is None or not job.abandoned:
                return False
            self._shared.interrupted = True
            if self._shared.using:
                interrupt()
            return True

    @property
    def interrupted(self) -> Callable[[], bool]:
        """A callable (for use in the thread, holding no reference to this object):
        whether :meth:`interrupt_abandoned` reached the call running now, which should
        then stop waiting (for a lock, say) as soon as it can."""
        return functools.partial(_interrupted, self._shared)

    async def _run_elsewhere(self, job: _Job[T]) -> T:
        job.event = threading.Event()
        with self._shared.lock:
            self._shared.outstanding += 1
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
