"""``RaySessions``: sessions hosted across a Ray cluster, with a SessionManager's surface.

::

    from sessions.cluster import RaySessions

    async with RaySessions("postgresql://app@db/turngraph", address="auto") as cluster:
        result = await cluster.send("alice", "hello")
        page = await cluster.messages("alice", 0, 20)

Each call goes to the host that rendezvous hashing picks for the session id among the
live hosts (:mod:`sessions.cluster.hashing`).  Turns this client sends to one session run
one at a time in arrival order.  When a host dies mid-turn, the turn is sent again to
the session's new host together with the turn number it should take; the new host,
having reloaded the session from PostgreSQL, answers the stored turn if the dead host
had committed it, so an acknowledged turn is never run twice.  The store's leases decide
who may write: a new host waits for a dead host's lease to expire (``lease_ttl``), and
a host presumed dead but still running is fenced out of every write.

The client runs on asyncio (Ray's object refs are asyncio awaitables).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import socket
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from types import TracebackType
from typing import Any, Final
from urllib.parse import urlsplit

import anyio

from engine.events import Event
from sessions.cluster.errors import (
    ClusterStoreRefused,
    ClusterUnavailable,
    HostLost,
    RayNotInstalled,
)
from sessions.cluster.pool import Host, HostPool, Placement, Unreachable
from sessions.cluster.streaming import ClusterStream
from sessions.cluster.wire import Reply
from sessions.compaction import CompactionResult
from sessions.fifolock import FifoLock
from sessions.history import MessagePage
from sessions.limits import Limits, validate_session_id
from sessions.session import TurnResult
from sessions.store import redact_url

__all__ = ["RaySessions", "check_store", "import_ray"]


_HOST_LIMITS = Limits(max_active_sessions=100_000)
"""A host serves many sessions: the in-process default (10) would refuse most of them."""


def import_ray() -> Any:
    """The ``ray`` module, or :class:`RayNotInstalled` naming the pip command."""
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise RayNotInstalled() from None


def check_store(url: str) -> str:
    """``url`` if hosts on many nodes can share it (PostgreSQL); else
    :class:`ClusterStoreRefused`."""
    if urlsplit(url).scheme in ("postgresql", "postgres"):
        return url
    raise ClusterStoreRefused(
        redact_url(url),
        "a Ray cluster needs a shared PostgreSQL store (postgresql://...); "
        "SQLite and memory: stores are local to one machine or process",
    )


def _check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """:class:`ClusterUnavailable` at once when ``HOST:PORT`` refuses a connection
    (``ray.init`` would retry it for minutes); other addresses pass (``auto``,
    ``ray://``, ``None``)."""
    if not address or "://" in address or address == "auto":
        return
    parts = urlsplit(f"//{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if host is None or port is None:
        raise ClusterUnavailable(f"{address!r} is not HOST:PORT, 'auto' or a ray:// address")
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ClusterUnavailable(f"cannot join {address}: {reason}") from None
    with sock:
        if not _speaks_grpc(sock):
            # Any other listener (a web server, a database, a silent port): ray.init
            # would wait for a GCS there forever, logging every few seconds.
            raise ClusterUnavailable(
                f"cannot join {address}: no Ray cluster answers there (not a Ray GCS port)"
            )


_H2_PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"
"""HTTP/2's client preface and an empty SETTINGS frame: what a gRPC client sends first."""


def _speaks_grpc(sock: socket.socket) -> bool:
    """Whether the listener on ``sock`` is a gRPC server, as a Ray GCS is: it answers a
    client's HTTP/2 preface with its own SETTINGS frame (TLS, ``RAY_USE_TLS``, is not
    probed: any listener passes)."""
    if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        return True
    head = b""
    try:
        sock.sendall(_H2_PREFACE)
        while len(head) < 9:
            chunk = sock.recv(9 - len(head))
            if not chunk:
                return False
            head += chunk
    except OSError:
        return False
    # A frame header: length (3 bytes), type (SETTINGS = 4), flags, stream 0.
    return head[3] == 4 and head[5:9] == bytes(4)


class RaySessions:
    """Sessions on a Ray cluster; an async context manager (see the module).

    ``store`` is a ``postgresql://`` URL every node can reach.  ``hosts`` is how many
    host actors to run (default: ``per_node`` on every live node, and on nodes that join
    later).  ``address`` is passed to ``ray.init`` when Ray is not initialised yet
    (``None`` starts a local Ray; ``"auto"`` joins the running cluster); ``ray_init``
    holds more ``ray.init`` arguments.  ``manager`` holds
    :class:`~sessions.SessionManager` keyword arguments for every host (adapters, graphs,
    limits; they are pickled to the hosts; default limits allow 100,000 live sessions
    per host).  ``lease_ttl`` is the session lease: after a
    host dies, its sessions serve again within about this long.  ``takeover_wait``
    bounds how long a host waits for another owner's lease; ``rehost_timeout`` how long
    a call keeps trying to reach a session's host before :class:`HostLost`.
    ``num_cpus``, ``restarts`` (Ray actor restarts), ``probe_interval`` and
    ``probe_timeout`` (a host silent for this long is presumed dead) tune the hosts;
    ``max_in_flight`` bounds the calls this client runs on one host at once (more wait
    here, so a flood of callers cannot starve a host and its health probe).
    ``niceness`` is the hosts' process priority (default 0, as the caller's; Ray's own
    default for workers is 15: ``None`` keeps it).
    """

    def __init__(
        self,
        store: str,
        hosts: int | None = None,
        *,
        address: str | None = None,
        per_node: int = 1,
        manager: Mapping[str, Any] | None = None,
        lease_ttl: float = 10.0,
        takeover_wait: float | None = None,
        rehost_timeout: float | None = None,
        num_cpus: float = 1.0,
        restarts: int = 3,
        probe_interval: float = 1.0,
        probe_timeout: float = 5.0,
        max_in_flight: int = 256,
        niceness: int | None = 0,
        ray_init: Mapping[str, Any] | None = None,
    ) -> None:
        self.store = check_store(store)
        if (hosts is not None and hosts < 1) or per_node < 1:
            raise ValueError("hosts and per_node must be >= 1")
        self._ray = import_ray()
        self._address = address
        self._init = dict(ray_init or {})
        self._manager = {"limits": _HOST_LIMITS, **(manager or {}), "lease_ttl": lease_ttl}
        self._takeover = takeover_wait if takeover_wait is not None else 3 * lease_ttl
        self.rehost_timeout = rehost_timeout if rehost_timeout is not None else 4 * lease_ttl
        self.placement = Placement(
            hosts,
            per_node,
            num_cpus,
            restarts,
            probe_interval,
            probe_timeout,
            max_in_flight=max_in_flight,
            niceness=niceness,
        )
        self._pool: HostPool | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._order: dict[str, FifoLock] = {}
        self._turns: dict[str, int] = {}

    # ------------------------------------------------------------------ lifecycle

    def connect(self) -> None:
        """Initialise Ray (join the cluster at ``address``) unless it is already;
        entering the client does it otherwise.  :class:`ClusterUnavailable` when no
        cluster answers there.  A blocking call: a program that installs signal
        handlers calls it first, because ``ray.init`` replaces the SIGTERM handler."""
        ray = self._ray
        if ray.is_initialized():
            return
        _check_reachable(self._address)
        try:
            ray.init(address=self._address, **self._init)
        except (ConnectionError, TimeoutError, ValueError) as exc:  # no cluster there
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            where = self._address or "Ray"
            raise ClusterUnavailable(f"cannot join {where}: {reason}") from None

    async def __aenter__(self) -> RaySessions:
        ray = self._ray
        self.connect()
        pool = HostPool(ray, self.store, self._manager, self._takeover, self.placement)
        try:
            await pool.start()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await pool.stop()
            raise
        self._pool = pool
        # A bare asyncio task, not a task group: the client may be entered and exited
        # in different tasks (an async fixture, a server's startup and shutdown hooks).
        self._watcher = asyncio.get_running_loop().create_task(pool.watch())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        watcher, self._watcher, pool, self._pool = self._watcher, None, self._pool, None
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        if pool is not None:
            with anyio.CancelScope(shield=True):
                await pool.stop()

    def _hosts(self) -> HostPool:
        if self._pool is None:
            raise ClusterUnavailable("use the client as `async with RaySessions(...)`")
        return self._pool

    # ------------------------------------------------------------------ routing

    @property
    def members(self) -> tuple[str, ...]:
        """The ids of the hosts sessions are hashed over now."""
        return self._hosts().members

    def host_of(self, session_id: str) -> str | None:
        """The id of the host serving ``session_id`` now (``None``: no live host)."""
        host = self._hosts().route(session_id)
        return host.id if host is not None else None

    async def refresh(self) -> None:
        """Probe every host and start hosts on nodes that joined, now (the client
        also does it every ``probe_interval``)."""
        await self._hosts().probe()

    async def _call(self, session_id: str, method: str, *args: Any) -> Any:
        """``method`` on the session's host, following it to a survivor if it dies."""
        pool = self._hosts()
        async for host in self._tries(session_id):
            try:
                reply = await pool.call(host, method, session_id, *args)
            except Unreachable:
                await pool.suspect(host)
                continue
            if not reply.moved:
                return reply.unwrap()
        raise AssertionError("unreachable: _tries ends by raising HostLost")

    async def _tries(self, session_id: str) -> AsyncIterator[Host]:
        """The host to try for the session, again after each failed try (the caller
        suspects a host that failed), until ``rehost_timeout``: then :class:`HostLost`."""
        pool = self._hosts()
        deadline = time.monotonic() + self.rehost_timeout
        while True:
            host = pool.route(session_id)
            if host is not None:
                yield host
            left = deadline - time.monotonic()
            if left <= 0:
                raise HostLost(session_id, "no live host answered in time")
            if host is None or (host.id in pool.members and pool.route(session_id) is host):
                # No host, or a host that refused a session this client routes to it:
                # wait for the members to change (or a moment) before trying again.
                with anyio.move_on_after(min(left, 0.5 if host is None else 0.05)):
                    await pool.changed.wait()

    @contextlib.asynccontextmanager
    async def _in_order(self, session_id: str) -> AsyncIterator[None]:
        lock = self._order.get(session_id)
        if lock is None:
            lock = self._order[session_id] = FifoLock()
        await lock.acquire()
        try:
            yield
        finally:
            lock.release()
            if not lock.locked() and self._order.get(session_id) is lock:
                del self._order[session_id]

    # ------------------------------------------------------------------ sessions

    async def send(self, session_id: str, text: str) -> TurnResult:
        """Run one turn (creating the session if new); see :meth:`sessions.Session.send`.

        Turns this client sends to one session run in arrival order.  Errors are the
        host's, raised here (``SessionBusy``, ``Fenced``...); :class:`HostLost` when no
        host could serve the session within ``rehost_timeout``.
        """
        sid = validate_session_id(session_id)
        async with self._in_order(sid):
            known = self._turns.get(sid)
            if known is None:
                known = self._turns[sid] = await self._call(sid, "open")
            result: TurnResult = await self._call(sid, "send", text, known + 1)
            self._turns[sid] = result.turn
            return result

    async def answer(self, session_id: str, choice: str, node: str | None = None) -> TurnResult:
        """Answer the question the session's paused turn waits on, on its host
        (:meth:`sessions.Session.answer`; ``node``: the gate whose question was seen)."""
        return await self._go_on(session_id, "answer", choice, node)

    async def retry_turn(self, session_id: str) -> TurnResult:
        """Re-run the session's failed latest turn from the node that failed, on its
        host (:meth:`sessions.Session.retry_turn`)."""
        return await self._go_on(session_id, "retry_turn")

    async def _go_on(self, session_id: str, step: str, *args: Any) -> TurnResult:
        sid = validate_session_id(session_id)
        async with self._in_order(sid):
            result: TurnResult = await self._call(sid, "go_on", step, args)
            self._turns[sid] = result.turn
            return result

    def stream(self, session_id: str, text: str) -> ClusterStream:
        """Run one turn like :meth:`send`, as an async iterator of the same events as
        :meth:`sessions.Session.stream` yields in one process, the :class:`TurnResult`
        last (see :mod:`sessions.cluster.streaming`).  The turn starts when iteration
        starts.  A host lost before the first event is followed to its survivor; one
        lost after it raises :class:`HostLost` (the turn may or may not be stored: read
        :meth:`messages`)."""
        return ClusterStream(self._stream(validate_session_id(session_id), text))

    async def _stream(self, sid: str, text: str) -> AsyncGenerator[Event | TurnResult, None]:
        pool = self._hosts()
        async with self._in_order(sid):
            known = self._turns.get(sid)
            if known is None:
                known = self._turns[sid] = await self._call(sid, "open")
            async for host in self._tries(sid):
                given = False
                items = pool.stream(host, "stream", sid, text, known + 1)
                try:
                    async for batch in items:
                        for item in batch:
                            if not isinstance(item, Reply):
                                given = True
                                yield item
                            elif not item.moved:
                                result: TurnResult = item.unwrap()
                                self._turns[sid] = result.turn
                                yield result
                                return
                except Unreachable:
                    if given:
                        self._turns.pop(sid, None)  # reload the count from the store
                        raise HostLost(sid, "its host died while streaming a turn") from None
                    await pool.suspect(host)
                finally:
                    await items.aclose()  # leaving early cancels the host's generator

    async def messages(self, session_id: str, offset: int = 0, limit: int = 100) -> MessagePage:
        """A page of the session's messages (:meth:`sessions.Session.messages`)."""
        page: MessagePage = await self._call(
            validate_session_id(session_id), "messages", offset, limit
        )
        return page

    async def close(self, session_id: str) -> None:
        """Stop hosting the session (it stays in the store; the next call reloads it)."""
        sid = validate_session_id(session_id)
        async with self._in_order(sid):
            await self._call(sid, "close")
            self._turns.pop(sid, None)

    async def delete(self, session_id: str) -> bool:
        """Delete the session and its records; False if it did not exist."""
        sid = validate_session_id(session_id)
        async with self._in_order(sid):
            deleted: bool = await self._call(sid, "delete")
            self._turns.pop(sid, None)
            return deleted

    async def compact(self, session_id: str) -> CompactionResult:
        """Compact the session now, on its host (:meth:`sessions.SessionManager.compact`)."""
        sid = validate_session_id(session_id)
        async with self._in_order(sid):
            result: CompactionResult = await self._call(sid, "compact")
            return result

    async def info(self) -> list[dict[str, Any]]:
        """Each live member's id, owner name, pid and hosted session ids."""
        pool = self._hosts()
        out: list[dict[str, Any]] = []
        for host_id in pool.members:
            with contextlib.suppress(Unreachable):
                out.append((await pool.call(pool.hosts[host_id], "info")).unwrap())
        return out

    def host(self, host_id: str) -> Host:
        """The pool's record of a host (its actor handle, node, liveness)."""
        return self._hosts().hosts[host_id]
