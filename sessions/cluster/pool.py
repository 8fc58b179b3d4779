"""The hosts of a cluster client: placing them on nodes, calling them, watching them.

A :class:`HostPool` starts :class:`~sessions.cluster.host.SessionHost` actors (``per_node``
on every live node, or ``hosts`` spread round-robin), and keeps the set of *members*: the
hosts sessions are hashed over.  A watcher probes every host each ``probe_interval``; a
host that fails a probe (its actor died, or it did not answer within ``probe_timeout``)
leaves the members at once, so its sessions hash to the survivors.  A host that answers
again (Ray restarted its actor, or a frozen process woke up) joins again, and so does a
host started on a node that joined the cluster.  Whenever the members change, every
member is told, and closes the sessions that hash elsewhere now: their leases are
released and their new hosts take them over without waiting.

Ray is imported by the caller and passed in; nothing here imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import itertools
import uuid
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from sessions.cluster.hashing import owner_of
from sessions.cluster.host import SessionHost
from sessions.cluster.wire import Reply

__all__ = ["Host", "HostPool", "Placement", "Unreachable"]

_END = object()
"""What :func:`_next_ref` answers when the host's generator has ended."""

_GIVE_UP = 60
"""Failed probes in a row after which a host is forgotten (its actor is gone for good)."""


class Unreachable(Exception):
    """A host did not answer (actor dead, restarting or presumed dead).  Internal: the
    client re-routes and retries, or raises :class:`~sessions.cluster.HostLost`."""


@dataclass(frozen=True, slots=True)
class Placement:
    """Where and how hosts run: ``hosts`` in total (``None``: ``per_node`` on every live
    node, and on nodes that join later), the Ray actor options, and the health probe."""

    hosts: int | None = None
    per_node: int = 1
    num_cpus: float = 1.0
    restarts: int = 3
    probe_interval: float = 1.0
    probe_timeout: float = 5.0
    max_concurrency: int = 10_000
    max_in_flight: int = 256
    """Calls one client has running on one host at once; more wait in the client, so
    a flood of callers cannot starve a host's event loop (and its health probe)."""
    niceness: int | None = 0
    """The hosts' process niceness.  Ray starts worker processes at 15, below every
    other process on the node, which suits batch tasks; a host answers interactive
    turns, so by default it runs at 0 like the caller and the database (Ray's own job
    supervisor does the same).  ``None`` keeps Ray's default."""


@dataclass(eq=False, slots=True)
class Host:
    """One host actor as the client sees it."""

    id: str
    handle: Any
    node: str
    limiter: anyio.CapacityLimiter
    gone: anyio.Event = field(default_factory=anyio.Event)
    failures: int = 0
    waiters: set[asyncio.Future[Any]] = field(default_factory=set)
    """The calls awaiting this host's answer now."""

    def mark_gone(self) -> None:
        """Presume the host dead: every call awaiting it raises :class:`Unreachable`."""
        self.gone.set()
        waiters, self.waiters = self.waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(Unreachable(f"host {self.id} presumed dead"))


class HostPool:
    """Starts, calls and watches the hosts of one client (see the module)."""

    def __init__(
        self,
        ray: Any,
        store: str,
        manager: Mapping[str, Any],
        takeover_wait: float,
        placement: Placement,
    ) -> None:
        self._ray = ray
        self._args = (store, dict(manager), takeover_wait)
        self.placement = placement
        self.hosts: dict[str, Host] = {}
        self.members: tuple[str, ...] = ()
        """The live host ids, sorted: what session ids are hashed over."""
        self.changed = anyio.Event()
        """Set (and replaced) whenever the members change."""
        self.version = 0
        """Counts member changes: a host ignores a late, older list."""
        self._probing = anyio.Lock()
        """One probe round at a time (the watcher's and ``refresh``): two rounds would
        each start a host on a node that joined."""
        self._actor: Any = None

    # ------------------------------------------------------------------ placement

    def _live_nodes(self) -> list[str]:
        return sorted(n["NodeID"] for n in self._ray.nodes() if n.get("Alive"))

    async def start(self) -> None:
        """Start the hosts and wait until every one of them serves."""
        nodes = self._live_nodes()
        p = self.placement
        if p.hosts is None:
            wanted = [n for n in nodes for _ in range(p.per_node)]
        else:
            wanted = list(itertools.islice(itertools.cycle(nodes), p.hosts))
        await self._spawn_all(wanted)

    async def _spawn_all(self, nodes: list[str]) -> None:
        started: list[Host] = []
        failed: list[Exception] = []

        async def spawn(node: str) -> None:
            try:
                started.append(await self._spawn(node))
            except Exception as exc:  # one error for the caller, not an exception group
                failed.append(exc)

        async with anyio.create_task_group() as tg:
            for node in nodes:
                tg.start_soon(spawn, node)
        if started:
            await self._admit(started)
        if failed:
            raise failed[0]

    async def _spawn(self, node: str) -> Host:
        """One host on ``node`` (a soft preference: Ray may restart it elsewhere)."""
        ray, p = self._ray, self.placement
        if self._actor is None:
            self._actor = ray.remote(SessionHost)
        strategies = importlib.import_module("ray.util.scheduling_strategies")
        host_id = uuid.uuid4().hex[:10]
        extra: dict[str, Any] = {}
        if p.niceness is not None:  # read by the raylet when it starts the host's process
            extra["runtime_env"] = {"env_vars": {"RAY_worker_niceness": str(p.niceness)}}
        handle = self._actor.options(
            **extra,
            num_cpus=p.num_cpus,
            max_restarts=p.restarts,
            max_task_retries=0,  # the client retries turns itself, without duplicates
            max_concurrency=p.max_concurrency,
            scheduling_strategy=strategies.NodeAffinitySchedulingStrategy(node, soft=True),
        ).remote(host_id, *self._args)
        host = Host(host_id, handle, node, anyio.CapacityLimiter(p.max_in_flight))
        (await self.call(host, "info")).unwrap()  # serves: its store is open
        return host

    async def grow(self) -> int:
        """Start hosts on live nodes that have fewer than ``per_node`` (nodes that
        joined); answers how many were started.  Only without a fixed ``hosts`` count."""
        if self.placement.hosts is not None:
            return 0
        have: dict[str, int] = {}
        for h in self.hosts.values():
            have[h.node] = have.get(h.node, 0) + 1
        missing = [
            n for n in self._live_nodes() for _ in range(self.placement.per_node - have.get(n, 0))
        ]
        await self._spawn_all(missing)
        return len(missing)

    # ------------------------------------------------------------------ membership

    def route(self, session_id: str) -> Host | None:
        """The member that serves ``session_id`` now (``None``: no member is live)."""
        if not self.members:
            return None
        return self.hosts[owner_of(session_id, self.members)]

    async def _admit(self, hosts: list[Host]) -> None:
        for host in hosts:
            host.failures = 0
            if host.gone.is_set():
                host.gone = anyio.Event()
            self.hosts[host.id] = host
        await self._set_members()

    async def suspect(self, host: Host) -> None:
        """``host`` failed: stop routing to it now and tell the others (the watcher lets
        it back in if it answers again)."""
        host.mark_gone()
        if host.id in self.members:
            await self._set_members()

    def _publish(self) -> None:
        self.members = tuple(sorted(h.id for h in self.hosts.values() if not h.gone.is_set()))
        self.version += 1
        changed, self.changed = self.changed, anyio.Event()
        changed.set()

    async def _set_members(self) -> None:
        """Publish the members, and have each close the sessions it no longer serves."""
        self._publish()
        members, version = self.members, self.version
        lost: list[Host] = []

        async def tell(host: Host) -> None:
            # Bounded: a host that went silent meanwhile must not stall the watcher
            # (which is what would find it out).
            with anyio.move_on_after(self.placement.probe_timeout) as scope:
                try:
                    await self.call(host, "rebalance", members, version)
                except Unreachable:
                    lost.append(host)
            if scope.cancelled_caught:
                lost.append(host)

        async with anyio.create_task_group() as tg:
            for host_id in members:
                tg.start_soon(tell, self.hosts[host_id])
        for host in lost:
            host.mark_gone()
        if lost:  # members changed again: tell the rest
            await self._set_members()

    # ------------------------------------------------------------------ calls

    async def call(self, host: Host, method: str, *args: Any) -> Reply:
        """Call ``host.method(*args)`` across the hop; :class:`Unreachable` when the actor
        fails or the host is suspected meanwhile."""
        async with host.limiter:
            return await self._call(host, method, args)

    async def _call(self, host: Host, method: str, args: tuple[Any, ...]) -> Reply:
        if host.gone.is_set():
            raise Unreachable(f"host {host.id} presumed dead")
        reply: Reply = await self._race(host, getattr(host.handle, method).remote(*args))
        return reply

    async def stream(self, host: Host, method: str, *args: Any) -> AsyncGenerator[Any, None]:
        """The items ``host.method(*args)`` yields, as Ray streams them across the hop
        (the method is an async generator); :class:`Unreachable` as for :meth:`call`.
        Leaving early cancels the host's generator."""
        # A token of its own: the consumer's task may make other calls while it iterates.
        token = object()
        await host.limiter.acquire_on_behalf_of(token)
        refs: Any = None
        try:
            if host.gone.is_set():
                raise Unreachable(f"host {host.id} presumed dead")
            refs = getattr(host.handle, method).options(num_returns="streaming").remote(*args)
            while True:
                ref = await self._race(host, _next_ref(refs))
                if ref is _END:
                    refs = None
                    return
                yield await self._race(host, ref)
        finally:
            host.limiter.release_on_behalf_of(token)
            if refs is not None:
                # The consumer left (or the host failed): stop the turn over there.
                with contextlib.suppress(Exception):
                    self._ray.cancel(refs)

    async def _race(self, host: Host, waitable: Any) -> Any:
        """``await waitable`` (an object ref, or a coroutine), or :class:`Unreachable`
        when it fails in Ray or the host is presumed dead first."""
        if host.gone.is_set():
            raise Unreachable(f"host {host.id} presumed dead")
        # One future the host's death can fail (Host.mark_gone), fed by the reply's: no
        # task per call to watch for the death (that cost more than the Ray call).
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        source: asyncio.Future[Any]
        if hasattr(waitable, "future"):  # an ObjectRef (its concurrent future, wrapped)
            source = asyncio.wrap_future(waitable.future())
        else:
            source = asyncio.ensure_future(waitable)
        ray_error = self._ray.exceptions.RayError

        def settle(done: asyncio.Future[Any]) -> None:
            if waiter.done():
                return
            if done.cancelled():
                waiter.set_exception(Unreachable(f"host {host.id}: call cancelled"))
            elif (exc := done.exception()) is not None:
                if isinstance(exc, ray_error):
                    exc = Unreachable(f"host {host.id}: {type(exc).__name__}")
                waiter.set_exception(exc)
            else:
                waiter.set_result(done.result())

        source.add_done_callback(settle)
        host.waiters.add(waiter)
        try:
            return await waiter
        finally:
            host.waiters.discard(waiter)
            if not source.done():
                source.cancel()

    # ------------------------------------------------------------------ health

    async def watch(self) -> None:
        """Probe every host each ``probe_interval``, forever (run it in a task group)."""
        while True:
            await anyio.sleep(self.placement.probe_interval)
            await self.probe()

    async def probe(self) -> None:
        """One round: suspect hosts that fail, admit those that answer again, start
        hosts on new nodes."""
        async with self._probing:
            await self._probe()

    async def _probe(self) -> None:
        back: list[Host] = []

        async def check(host: Host) -> None:
            if await self._answers(host):
                host.failures = 0
                if host.gone.is_set():
                    back.append(host)
                return
            host.failures += 1
            await self.suspect(host)
            if host.failures >= _GIVE_UP:
                self.hosts.pop(host.id, None)

        async with anyio.create_task_group() as tg:
            for host in tuple(self.hosts.values()):
                tg.start_soon(check, host)
        if back:
            await self._admit(back)
        await self.grow()

    async def _answers(self, host: Host) -> bool:
        ref = host.handle.info.remote()
        with anyio.move_on_after(self.placement.probe_timeout):
            try:
                await ref
            except self._ray.exceptions.RayError:
                return False
            return True
        return False

    async def stop(self) -> None:
        """Close every host's sessions (releasing leases), then end the actors."""

        async def stop_one(host: Host) -> None:
            with anyio.move_on_after(10), contextlib.suppress(self._ray.exceptions.RayError):
                await host.handle.stop.remote()
            self._ray.kill(host.handle, no_restart=True)

        async with anyio.create_task_group() as tg:
            for host in tuple(self.hosts.values()):
                tg.start_soon(stop_one, host)
        self.hosts.clear()
        self._publish()


async def _next_ref(refs: Any) -> Any:
    """The next object ref of a Ray streaming generator, or :data:`_END`."""
    try:
        return await refs.__anext__()
    except StopAsyncIteration:
        return _END
