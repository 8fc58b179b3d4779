"""A session's heartbeat: the heartbeat graph run on a timer, beside the turns.

The heartbeat never blocks a turn: it runs on a snapshot of the session (outside the
session lock), and its result is applied *between* turns — at once if the session is
idle, else by the running turn just before it releases the lock.  One session never has
two heartbeats in flight.  Failures never reach the session's callers: they are counted,
kept in :attr:`Heartbeat.last_error`, logged as a ``heartbeat.failed`` warning
(:func:`engine.logs.log`: structlog if the application configured it, else stderr via
the stdlib logger ``turngraph``; never stdout), and the next beat waits
exponentially longer (capped by ``Limits.heartbeat_max_backoff``).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

import anyio
import msgspec

from engine.logs import log
from engine.outcome import RunResult

__all__ = ["HEARTBEAT_RUNS_KEPT", "Heartbeat", "HeartbeatRun", "HeartbeatTrace", "Spawn"]

HEARTBEAT_RUNS_KEPT = 20
"""How many of a session's latest heartbeat runs it keeps (in memory) for viewing."""

Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]]], None]
"""Starts a background task (the manager's task group ``start_soon``)."""

HeartbeatRun = Callable[["Heartbeat"], Awaitable[Mapping[str, Any]]]
"""Runs the heartbeat graph once for the heartbeat given (its run number and kept traces
are read there, not from a reference the run holds back to it); returns the run's
context, raises on failure."""

HeartbeatApply = Callable[[Mapping[str, Any]], Awaitable[None]]
"""Offers a successful heartbeat's context to the session (applied between turns)."""


class HeartbeatTrace(msgspec.Struct, frozen=True):
    """One heartbeat run as kept for viewing: its number (from 1, per hosting), how it
    ended, its node trace (:meth:`engine.NodeRecord.to_dict` dicts), when it ended, the
    heartbeat graph's content hash, and why it failed."""

    run: int
    status: str
    trace: tuple[Mapping[str, Any], ...]
    ts: float
    graph_hash: str
    error: str | None = None

    @classmethod
    def of(cls, run: int, result: RunResult, graph_hash: str) -> HeartbeatTrace:
        """The record of heartbeat run number ``run``, which ended with ``result``."""
        error = None if result.error is None else " ".join(str(result.error).split())
        trace = tuple(r.to_dict() for r in result.trace)
        return cls(run, result.status, trace, time.time(), graph_hash, error)


class Heartbeat:
    """Timer, in-flight flag and failure accounting for one session's heartbeat.

    ``failures`` counts consecutive failures (it drives the backoff and resets on
    success); ``error_count`` and ``runs`` are totals.  ``recent`` keeps the latest
    :data:`HEARTBEAT_RUNS_KEPT` runs' traces, in memory only: they are not stored, so
    they last as long as this process hosts the session.
    """

    __slots__ = (
        "__weakref__",  # tests check a closed session's heartbeat is freed
        "_apply",
        "_ended",
        "_run",
        "_scope",
        "error_count",
        "failures",
        "in_flight",
        "interval",
        "last_error",
        "max_backoff",
        "recent",
        "runs",
        "session_id",
    )

    def __init__(
        self, session_id: str, run: HeartbeatRun, apply: HeartbeatApply, max_backoff: float
    ) -> None:
        self.session_id = session_id
        self._run = run
        self._apply = apply
        self.max_backoff = max_backoff
        self.interval: float | None = None
        self.in_flight = False
        self.failures = 0
        self.error_count = 0
        self.runs = 0
        self.last_error: BaseException | None = None
        self._scope: anyio.CancelScope | None = None
        self._ended: anyio.Event | None = None  # set when the latest timer's task ends
        self.recent: deque[HeartbeatTrace] = deque(maxlen=HEARTBEAT_RUNS_KEPT)

    @property
    def running(self) -> bool:
        """Whether the timer is started."""
        return self._scope is not None

    def start(self, interval: float, spawn: Spawn) -> None:
        """(Re)start the timer: one beat every ``interval`` seconds, in a task ``spawn`` owns."""
        if not interval > 0:
            raise ValueError(f"heartbeat interval must be > 0, not {interval!r}")
        self.stop()
        self.interval = float(interval)
        scope = self._scope = anyio.CancelScope()
        ended = self._ended = anyio.Event()
        try:
            spawn(lambda: self._loop(scope, ended))
        except BaseException:
            ended.set()  # no task: nothing to wait for
            raise

    def stop(self) -> None:
        """Stop the timer (a beat in flight is cancelled; nothing of it is applied)."""
        if self._scope is not None:
            self._scope.cancel()
            self._scope = None
        self.interval = None

    async def stopped(self) -> None:
        """Wait until the task of a timer :meth:`stop` ended has finished.

        A session's close waits for it: a task still running when its task group is
        cancelled ends with an error that anyio's task group keeps in a reference
        cycle with the task's frame (and so with this heartbeat and the session's
        parts), freed only by the cyclic garbage collector.
        """
        if self._ended is not None:
            await self._ended.wait()

    def next_delay(self) -> float:
        """Seconds until the next beat: the interval, doubled per consecutive failure."""
        base = self.interval or 0.0
        if not self.failures:
            return base
        return min(max(base, self.max_backoff), base * 2.0 ** min(self.failures, 30))

    async def _loop(self, scope: anyio.CancelScope, ended: anyio.Event) -> None:
        try:
            with scope:
                while True:
                    await anyio.sleep(self.next_delay())
                    if scope.cancel_called:
                        # The sleep may have finished just as stop() ran: asyncio
                        # delivers the cancellation at the next suspension, too late.
                        return
                    await self.beat()
        finally:
            ended.set()

    async def beat(self) -> bool:
        """Run one heartbeat now unless one is in flight; True if it succeeded."""
        if self.in_flight:
            return False
        self.in_flight = True
        try:
            context = await self._run(self)
        except Exception as exc:  # reported and backed off, never raised to the session
            self._failed(exc)
            return False
        finally:
            self.in_flight = False
        self.runs += 1
        self.failures = 0
        await self._apply(context)
        return True

    def _failed(self, exc: BaseException) -> None:
        self.runs += 1
        self.failures += 1
        self.error_count += 1
        self.last_error = exc
        log(
            "warning",
            "heartbeat.failed",
            session_id=self.session_id,
            failures=self.failures,
            error=f"{type(exc).__name__}: {exc}",
            retry_in_s=round(self.next_delay(), 3),
        )
