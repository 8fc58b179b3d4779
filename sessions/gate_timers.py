"""Gate timers: a human gate's ``timeout`` fires on time in a process hosting the session.

A :class:`~sessions.SessionManager` keeps one :class:`GateTimers`.  Each session it
hosts is :meth:`tracked <GateTimers.track>`: whenever the session's paused turn changes
(:attr:`Checkpoints.paused <sessions.checkpoints.Checkpoints.paused>`: a turn pauses
at a gate, a loaded session is found paused, an answer or a timeout takes the pause)
the session's timer is cancelled and, when the new pause has a deadline, one timer is
armed for it: one sleeping task in the manager's task group, no polling.  A deadline
that already passed (a session loaded after it) fires at once.

At the deadline the timer calls :func:`sessions.session.expire_gate`, the path the
next ``answer``/``send`` would take (:func:`sessions.gates.timeout_plan`): under the
session lock, the turn runs on with the gate's ``default`` (none: the gate fails and
is routed), logged and committed like an answered turn.  Races are settled by that
lock: whoever takes it first wins and the other meets the existing typed errors (an
answer after the timer's turn gets :class:`~sessions.errors.NotPaused`; a timer after
an answer finds nothing to do).
Between processes the store's lease and fencing decide: only the lease holder hosts
the session, and a timer of a process that lost its lease is fenced, writing nothing.

A timer is cancelled when its session is answered, closed, evicted or fenced, and when
the manager exits (:meth:`GateTimers.close`, which also cancels the timed-out turns
still running; a manager's exit first waits for them, as for any running turn, but a
server past its shutdown's grace cancels them).  A process that does not host the
session when the deadline passes arms nothing: the next process to load it applies the
timeout on load (its timer fires at once) or on first use, as before.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio

from engine.logs import log
from sessions.errors import NotPaused, SessionClosed
from sessions.gates import seconds_left
from sessions.heartbeat import Spawn
from sessions.session import Session, expire_gate

if TYPE_CHECKING:
    from engine.events import Observer
    from sessions.store.base import Checkpoint
    from sessions.turns import TurnResult

__all__ = ["GateTimers", "TimeoutRunner", "TimeoutStep"]

TimeoutStep = Callable[["Observer | None"], Awaitable["TurnResult"]]
"""Runs a timed-out gate's turn, its events to the observer given (``None``: unwatched)."""

TimeoutRunner = Callable[[str, TimeoutStep], Awaitable["TurnResult"]]
"""Runs the step of a timed-out gate of the session named: a host (the HTTP server)
wraps it to publish the turn to the session's watchers."""


async def _unwatched(session_id: str, step: TimeoutStep) -> TurnResult:
    return await step(None)


class GateTimers:
    """One timer per hosted session paused at a gate with a deadline (see the module).

    ``spawn`` starts a task in the manager's task group.  :attr:`runner` runs each
    timed-out turn; a host replaces it to watch those turns (default: unwatched).
    """

    __slots__ = ("_firing", "_scopes", "_spawn", "runner")

    def __init__(self, spawn: Spawn) -> None:
        self._spawn = spawn
        # The session each timer is for, too: a closed or fenced copy of a session
        # must never disarm the timer of the copy that hosts the id now.
        self._scopes: dict[str, tuple[Session, anyio.CancelScope]] = {}
        self._firing: set[anyio.CancelScope] = set()  # the timed-out turns running
        self.runner: TimeoutRunner = _unwatched

    def __contains__(self, session_id: object) -> bool:
        """Whether a timer is armed for ``session_id``."""
        return session_id in self._scopes

    def __len__(self) -> int:
        return len(self._scopes)

    def track(self, session: Session) -> None:
        """Keep ``session``'s timer in step with its pause, arming it now if it waits."""
        # Weakly: the listener is kept by the session's own checkpoints, and holding the
        # session would make a cycle (a closed session left for the cyclic garbage
        # collector).  Read when a pause changes, never per node.  A session nobody holds
        # is not hosted (the manager holds every hosted one): its timer was cancelled.
        ref = weakref.ref(session)

        def changed(cp: Checkpoint | None) -> None:
            live = ref()
            if live is not None:
                self._changed(live, cp)

        session.checkpoints.on_paused = changed
        self._changed(session, session.checkpoints.paused)

    def cancel(self, session_id: str) -> None:
        """Disarm ``session_id``'s timer, if any."""
        entry = self._scopes.pop(session_id, None)
        if entry is not None:
            entry[1].cancel()

    def close(self) -> None:
        """Disarm every timer, and cancel the timed-out turns running (each stores
        nothing, like any cancelled turn: the question stays stored, and the next
        process to load the session applies the timeout).  A server calls this when
        its shutdown's grace runs out, as it cancels its streamed turns."""
        for session_id in tuple(self._scopes):
            self.cancel(session_id)
        for scope in tuple(self._firing):
            scope.cancel()

    def _changed(self, session: Session, cp: Checkpoint | None) -> None:
        if session.closed:  # no longer hosted: the id may be hosted again, by a new copy
            entry = self._scopes.get(session.id)
            if entry is not None and entry[0] is session:
                self.cancel(session.id)
            return
        self.cancel(session.id)
        if cp is None or cp.deadline is None:
            return
        scope = anyio.CancelScope()
        self._scopes[session.id] = (session, scope)
        sid = session.id  # the task reads the session from its entry, when it fires
        try:
            self._spawn(lambda: self._wait(sid, cp, scope))
        except SessionClosed:  # the manager is exiting: nothing more runs
            self._scopes.pop(session.id, None)

    async def _wait(self, sid: str, cp: Checkpoint, scope: anyio.CancelScope) -> None:
        # Its frame never holds the session while it sleeps: a task still asleep when
        # the manager's task group is cancelled ends with an error that anyio's task
        # group keeps in a reference cycle with the frame (freed only by the cyclic
        # garbage collector), and a closed session must not wait for that.
        with scope:
            # The deadline is wall-clock time (it outlives the process); anyio sleeps by
            # the monotonic clock, so a sleep may end a little early: sleep again then.
            while True:
                left = seconds_left(cp)
                if left is None or left <= 0:
                    break
                await anyio.sleep(left)
        entry = self._scopes.get(sid)
        if scope.cancel_called or entry is None or entry[1] is not scope:
            return
        # No longer this session's timer: the turn it runs clears the pause, which
        # must not cancel the turn itself.
        session = entry[0]
        del self._scopes[sid]
        with anyio.CancelScope() as firing:
            self._firing.add(firing)
            try:
                await self._fire(session, cp)
            finally:
                self._firing.discard(firing)

    async def _fire(self, session: Session, cp: Checkpoint) -> None:
        sid = session.id
        log("info", "gate.timed_out", session_id=sid, node=cp.next_node, default=cp.default)
        try:
            result = await self.runner(sid, lambda watch: expire_gate(session, watch=watch))
        except (NotPaused, SessionClosed):
            return  # answered first, or the session closed: nothing to apply
        except Exception as exc:  # fenced, a store failure: the next use applies it
            # The failed commit put the pause back, which re-armed its timer: its
            # deadline has passed, so it would fire at once, again and again.
            entry = self._scopes.get(sid)
            if entry is not None and entry[0] is session:
                self.cancel(sid)
            log("warning", "gate.timeout_failed", session_id=sid, error=str(exc))
            return
        log("info", "gate.timeout_applied", session_id=sid, turn=result.turn, status=result.status)
