"""``ClusterManager``: the surface of a :class:`~sessions.SessionManager` that the HTTP
server uses, with the sessions hosted on a Ray cluster (``python -m engine.run serve
--ray``).

::

    from engine.server import create_app
    from sessions.cluster import ClusterManager

    app = create_app(manager=ClusterManager("postgresql://app@db/turngraph", address="auto"))

The server runs turns on the sessions a manager hands it and reads everything else
(pages of messages, turn records, exports, the trace viewer) from the manager's store.
Here the turns, ``close``, ``delete`` and ``compact`` go to the session's host through
:class:`~sessions.cluster.RaySessions`; the reads go to a store this process opens on
the same PostgreSQL database, because a read takes no lease and so needs no host (one
hop fewer, and no session loaded on a host to be read).  The graphs are compiled here
as well, for the viewer (and so a bad graph is reported before any host starts);
their DOT text, not their path, is sent to the hosts, so the file need not exist on
every node.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from sessions.cluster.client import RaySessions
from sessions.cluster.streaming import ClusterStream
from sessions.compaction import CompactionResult
from sessions.errors import SessionNotFound
from sessions.limits import validate_session_id
from sessions.manager import SessionManager
from sessions.session import Session, TurnResult

if TYPE_CHECKING:
    from engine.events import Observer
    from engine.graph import Graph
    from sessions.store.base import SessionMatch, SessionMeta, Store

__all__ = ["ClusterManager", "ClusterSession"]


class ClusterSession:
    """A session as the server sees it, its turns run on its host: ``send`` and
    ``stream`` as on :class:`~sessions.Session` (the order of turns is kept by the
    cluster client)."""

    __slots__ = ("_cluster", "id")

    busy = False
    """Never: the host, not this process, runs the session's turns."""
    queued = 0

    def __init__(self, cluster: RaySessions, session_id: str) -> None:
        self._cluster = cluster
        self.id = session_id

    async def send(self, text: str) -> TurnResult:
        """Run one turn on the session's host (:meth:`RaySessions.send`)."""
        return await self._cluster.send(self.id, text)

    async def answer(
        self, choice: str, *, node: str | None = None, watch: Observer | None = None
    ) -> TurnResult:
        """Answer the paused turn's question on the session's host (``node``: as
        :meth:`sessions.Session.answer`).  ``watch`` hears nothing: the turn's events
        stay on that host (watchers here see its result only through the turn's page)."""
        return await self._cluster.answer(self.id, choice, node)

    async def retry_turn(self, *, watch: Observer | None = None) -> TurnResult:
        """Re-run the failed latest turn on the session's host (``watch``: as
        :meth:`answer`)."""
        return await self._cluster.retry_turn(self.id)

    def stream(self, text: str) -> ClusterStream:
        """Run one turn on the session's host, streaming its events
        (:meth:`RaySessions.stream`)."""
        return self._cluster.stream(self.id, text)


class ClusterManager:
    """Sessions on a Ray cluster behind a SessionManager's surface (see the module).

    ``store`` is the shared ``postgresql://`` URL (other stores are refused:
    :class:`~sessions.cluster.ClusterStoreRefused`); ``address`` is Ray's (``None``: the
    local cluster if one runs, else a new local Ray; ``"auto"``, ``HOST:PORT``).  ``llm``
    (a model spec) and ``turn_graph`` (a path or DOT text) are what every host runs;
    ``cluster`` holds more :class:`RaySessions` keyword arguments, ``store_secret`` the
    HMAC key for this process's reads (the hosts use their own configuration).
    """

    def __init__(
        self,
        store: str,
        *,
        address: str | None = None,
        llm: str | None = None,
        turn_graph: str | os.PathLike[str] | None = None,
        store_secret: bytes | str | None = None,
        cluster: Mapping[str, Any] | None = None,
    ) -> None:
        options = dict(cluster or {})
        hosts = {
            **options.pop("manager", {}),
            "llm": llm or "echo",
            "turn_graph": _dot_text(turn_graph),
        }
        self.cluster = RaySessions(store, address=address, manager=hosts, **options)
        # Reads and the viewer's graphs only: it never hosts a session, so never runs a
        # model (the echo model gives its registry the same handlers as the hosts').
        self._local = SessionManager(
            store, llm="echo", turn_graph=turn_graph, store_secret=store_secret
        )
        self._stack: contextlib.AsyncExitStack | None = None

    @property
    def store(self) -> Store:
        """The store this process reads (the same database the hosts write)."""
        return self._local.store

    @property
    def turn_graph(self) -> Graph:
        """The turn graph every host runs."""
        return self._local.turn_graph

    @property
    def heartbeat_graph(self) -> Graph | None:
        """The heartbeat graph every host runs."""
        return self._local.heartbeat_graph

    @property
    def live(self) -> tuple[Session, ...]:
        """None here: the hosts hold the sessions (see :meth:`RaySessions.info`)."""
        return ()

    async def __aenter__(self) -> ClusterManager:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self._local)
            await stack.enter_async_context(self.cluster)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    async def get(self, session_id: str) -> ClusterSession:
        """The session if it is stored (``SessionNotFound`` otherwise)."""
        sid = validate_session_id(session_id)
        if not await self.store.exists(sid):
            raise SessionNotFound(sid, "no such session")
        return ClusterSession(self.cluster, sid)

    async def get_or_create(self, session_id: str) -> ClusterSession:
        """The session (its host creates it on its first turn)."""
        return ClusterSession(self.cluster, validate_session_id(session_id))

    async def list_sessions(
        self, offset: int = 0, limit: int = 100, *, match: SessionMatch | None = None
    ) -> tuple[SessionMeta, ...]:
        """Every session in the store, by id (``match``: :meth:`Store.list_sessions`)."""
        return await self._local.list_sessions(offset, limit, match=match)

    async def close(self, session_id: str) -> None:
        """Stop hosting the session (its lease is released; it stays in the store)."""
        await self.cluster.close(session_id)

    async def delete(self, session_id: str) -> bool:
        """Delete the session and its records; False if it did not exist."""
        return await self.cluster.delete(session_id)

    async def compact(self, session_id: str) -> CompactionResult:
        """Compact the session now, on its host."""
        return await self.cluster.compact(session_id)


def _dot_text(graph: str | os.PathLike[str] | None) -> str | None:
    """The DOT text of a graph file, for hosts on other machines (DOT text, ``None`` and
    a path that is no file pass through: loading it here reports the error)."""
    if graph is None or (isinstance(graph, str) and "{" in graph):
        return graph
    path = Path(graph)
    return path.read_text(encoding="utf-8") if path.is_file() else os.fspath(graph)
