"""What one server process shares between its requests: the manager, the turns in flight.

The app owns one :class:`~sessions.SessionManager` for its lifetime (the lifespan
opens and closes it) and one task group in which streamed turns run apart from their
requests: a client that leaves mid-stream does not cancel its turn, which finishes and
commits (or fails whole), and is read back with ``GET /sessions/{id}/turns/{n}``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

import anyio

from engine.errors import TurngraphError
from engine.server.errors import ShuttingDown
from engine.server.live import LiveHub
from sessions.errors import SessionLimitReached

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from engine.events import Event, Observer
    from engine.graph import Graph
    from sessions import Session, TurnResult
    from sessions.compaction import CompactionResult
    from sessions.store.base import SessionMatch, SessionMeta, Store

__all__ = ["Manager", "ServerState", "TurnEvents", "TurnSession"]


class TurnEvents(Protocol):
    """One turn's events, the TurnResult last (:class:`sessions.TurnStream`)."""

    def __aiter__(self) -> AsyncIterator[Event | TurnResult]: ...

    async def __aenter__(self) -> AsyncIterator[Event | TurnResult]: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class TurnSession(Protocol):
    """What a route needs of a session (:class:`sessions.Session`, or one on a Ray
    cluster: :class:`sessions.cluster.ClusterSession`)."""

    @property
    def id(self) -> str: ...

    @property
    def busy(self) -> bool: ...

    @property
    def queued(self) -> int: ...

    async def send(self, text: str) -> TurnResult: ...

    def stream(self, text: str) -> TurnEvents: ...

    async def answer(
        self, choice: str, *, node: str | None = None, watch: Observer | None = None
    ) -> TurnResult: ...

    async def retry_turn(self, *, watch: Observer | None = None) -> TurnResult: ...


class Manager(Protocol):
    """What the app needs of its manager: :class:`sessions.SessionManager`, or
    :class:`sessions.cluster.ClusterManager` for sessions on a Ray cluster."""

    @property
    def store(self) -> Store: ...

    @property
    def turn_graph(self) -> Graph: ...

    @property
    def heartbeat_graph(self) -> Graph | None: ...

    @property
    def live(self) -> tuple[Session, ...]:
        """The sessions this process hosts (none when hosts elsewhere run them)."""
        ...

    async def __aenter__(self) -> object: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None: ...

    async def get(self, session_id: str) -> TurnSession: ...

    async def get_or_create(self, session_id: str) -> TurnSession: ...

    async def list_sessions(
        self, offset: int = 0, limit: int = 100, *, match: SessionMatch | None = None
    ) -> tuple[SessionMeta, ...]: ...

    async def close(self, session_id: str) -> None: ...

    async def delete(self, session_id: str) -> bool: ...

    async def compact(self, session_id: str) -> CompactionResult: ...


class ServerState:
    """The manager, the task group of streamed turns, the draining flag, and the
    :class:`~engine.server.live.LiveHub` that lets a session's turns be watched.

    ``draining`` is set when shutdown begins (SIGTERM): new turns answer 503
    (:class:`~engine.server.errors.ShuttingDown`) while running ones finish.
    """

    __slots__ = (
        "_idle",
        "draining",
        "grace",
        "live",
        "manager",
        "max_body",
        "running",
        "startup_error",
        "tg",
        "token",
    )

    def __init__(
        self, manager: Manager, *, token: bytes | None, max_body: int, grace: float
    ) -> None:
        self.manager = manager
        self.token = token
        self.max_body = max_body
        self.grace = grace
        self.draining = False
        self.running = 0
        self.tg: TaskGroup | None = None
        self.startup_error: TurngraphError | None = None  # the manager failed to start
        self._idle: anyio.Event | None = None
        self.live = LiveHub()  # the turns run here, for whoever watches their session

    def enter(self) -> None:
        """Count one turn in flight; refuse it while draining."""
        if self.draining:
            raise ShuttingDown("the server is shutting down and takes no new turns")
        self.running += 1

    def leave(self) -> None:
        """A turn counted by :meth:`enter` has ended."""
        self.running -= 1
        if self.running == 0 and self._idle is not None:
            self._idle.set()

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        """:meth:`enter` and :meth:`leave` around a block."""
        self.enter()
        try:
            yield
        finally:
            self.leave()

    async def open(self, session_id: str, *, create: bool = True) -> TurnSession:
        """The session, hosted (created if new, unless not ``create``:
        ``SessionNotFound``).  When the manager hosts as many sessions as it may, the
        idle ones are closed first (their leases released; they load again on their
        next request), so a server is never stuck at its limit."""
        load = self.manager.get_or_create if create else self.manager.get
        try:
            return await load(session_id)
        except SessionLimitReached:
            for session in self.manager.live:
                if not session.busy and not session.queued:
                    await self.manager.close(session.id)
            return await load(session_id)

    async def wait_idle(self) -> None:
        """Return once no turn is in flight."""
        while self.running:
            self._idle = anyio.Event()
            await self._idle.wait()
