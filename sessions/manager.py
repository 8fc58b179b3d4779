"""The registry of live sessions: get-or-create, switch, close, delete, compact, resume.

::

    async with SessionManager("sqlite:///chat.db") as manager:
        session = await manager.get_or_create("alice")
        result = await session.send("hello")

One manager owns one anyio task group (heartbeats, lease renewal, background
compaction, human gates' timers: :mod:`sessions.gate_timers`), one
:class:`~engine.Engine` and the compiled graphs every session shares.
A session is plain data in the store; the manager holds a lease on each live session
(renewed every ``lease_ttl / 3``) so two processes never both write one session.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio

from engine.errors import GraphValidationError
from engine.events import Observer
from engine.graph import Graph
from engine.loader import load_graph
from engine.logs import log
from engine.registry import HandlerRegistry
from engine.runner import Engine
from graphs import graph_source
from sessions.compaction import (
    CompactionResult,
    Summarizer,
    extract_summarizer,
    llm_summarizer,
)
from sessions.errors import (
    Fenced,
    SessionClosed,
    SessionExists,
    SessionLimitReached,
    SessionNotFound,
)
from sessions.gate_timers import GateTimers
from sessions.limits import Limits, validate_session_id
from sessions.session import Session, SessionRuntime
from sessions.store.base import SessionMatch, SessionMeta, SessionType, Store
from sessions.telemetry import Telemetry, telemetry_for

if TYPE_CHECKING:
    from handlers.adapters import LLM, Memory, Tools

__all__ = ["SessionManager"]


GraphSource = Graph | str | os.PathLike[str]


def _owner(configured: str | None) -> str:
    """This manager's name in leases: unique per instance, even when two processes (or
    two managers) are configured with the same ``owner``, so the store's lease tells
    them apart and the second gets ``SessionBusy`` instead of sharing the session."""
    suffix = uuid.uuid4().hex[:8]
    if configured is None:
        return f"{socket.gethostname()}:{os.getpid()}:{suffix}"
    return f"{configured}~{suffix}"


class _Spawner:
    """Starts background tasks in the manager's task group while it runs
    (:data:`~sessions.heartbeat.Spawn`); after exit, :class:`SessionClosed`.

    An object of its own, not a method of the manager: the gate timers and every
    session's runtime keep it, and a bound method would hold the manager that holds
    them, a reference cycle that only the cyclic garbage collector frees.
    """

    __slots__ = ("tg",)

    def __init__(self) -> None:
        self.tg: anyio.abc.TaskGroup | None = None

    def __call__(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        if self.tg is None:
            raise SessionClosed("*", "the session manager is not running")
        self.tg.start_soon(fn)


def _load(source: GraphSource | None, default: str, registry: HandlerRegistry) -> Graph:
    """A compiled graph from a Graph, a path or DOT text; else the shipped ``default``."""
    if isinstance(source, Graph):
        return source
    if source is None:
        source = graph_source(default)  # shipped as package data
    return load_graph(source, registry=registry)


def _model(llm: LLM | str | None) -> tuple[LLM | None, bool]:
    """The model adapter to use and whether this manager built it (and so must close it)."""
    if not isinstance(llm, str):
        return llm, False
    from handlers.adapters.spec import from_spec

    return from_spec(llm), True


async def _aclose(llm: object) -> None:
    """Close a model adapter's connections (hosted adapters have ``aclose``)."""
    close = getattr(llm, "aclose", None)
    if close is not None:
        await close()


def _open_store(spec: Store | str | None, secret: bytes | str | None) -> tuple[Store, bool]:
    """The store to use and whether this manager opened it (and so must close it)."""
    if spec is not None and not isinstance(spec, str):
        return spec, False
    from sessions.store import open_store

    return open_store(spec or "memory:", secret=secret), True


def _store_memory(store: Store) -> Memory | None:
    """The store's recall memory as the registry's adapter (``None``: a store that
    keeps none, and the handlers' in-process default is used)."""
    from sessions.store.recall import RecallStore, StoreMemory

    return StoreMemory(store) if isinstance(store, RecallStore) else None


class SessionManager:
    """Creates, loads, hosts and closes sessions; an async context manager.

    ``store`` is a :class:`~sessions.store.base.Store` or a store URL (``memory:``,
    ``sqlite:///path.db``, ``postgresql://...``); default ``memory:``.  The manager opens
    and closes a store it made from a URL or was handed unopened (``open_store(url)``);
    one the caller opened stays open.  ``llm``/``memory``/``tools`` are the adapters the
    default registry is built with (:class:`~handlers.adapters.LLM`,
    :class:`~handlers.adapters.Memory`, :class:`~handlers.adapters.Tools`; offline
    defaults; the default memory is the store's recall memory, durable on SQLite and
    PostgreSQL and written in each turn's transaction); ``registry`` replaces it.
    ``allow_shell`` lets the default registry's ``shell`` nodes (Attractor's
    ``tool_command``) run their commands.  ``llm`` may also be a spec such as
    ``"openai:gpt-4.1-mini"`` (:func:`~handlers.adapters.spec.from_spec`): the manager
    then owns the adapter it builds and closes it on exit (an adapter passed in stays
    the caller's to close).  ``observers`` watch every run of the manager's engine, and
    hear :class:`~engine.events.TurnCommitted` after each turn's commit.
    ``turn_graph``/``heartbeat_graph`` are graphs, paths or DOT text (defaults:
    ``graphs/turn.dot`` and ``graphs/heartbeat.dot``).  ``owner`` names this process in
    leases; a random suffix makes each manager's name unique (:attr:`owner`), so two
    managers configured alike never share a session.  ``lease_ttl`` (seconds) is how
    long a lease outlives its holder: a crashed owner's sessions can be taken over
    that long after its last renewal (it renews every ``lease_ttl / 3``).
    ``auto_resume`` continues an interrupted turn as soon as its session loads.
    A hosted session paused at a gate with a ``timeout`` has a timer armed in
    :attr:`gate_timers` (:class:`~sessions.gate_timers.GateTimers`): at the deadline
    the gate's ``default`` is applied without any further call.
    ``summarizer`` replaces the compaction summariser (default: ``llm`` through
    :func:`~sessions.compaction.llm_summarizer`; with no ``llm``, the offline
    :func:`~sessions.compaction.extract_summarizer`); ``store_secret`` is the HMAC key
    for a store opened from a URL (default: the configured key).  ``telemetry``
    traces each turn with OpenTelemetry (the ``otel`` extra; see
    :mod:`sessions.telemetry`): ``True``, a :class:`~sessions.telemetry.Telemetry`, or
    ``None`` (the default) to follow the ``TURNGRAPH_OTEL`` environment variable.
    """

    def __init__(
        self,
        store: Store | str | None = None,
        *,
        llm: LLM | str | None = None,
        memory: Memory | None = None,
        tools: Tools | None = None,
        registry: HandlerRegistry | None = None,
        turn_graph: GraphSource | None = None,
        heartbeat_graph: GraphSource | None = None,
        limits: Limits | None = None,
        owner: str | None = None,
        lease_ttl: float = 30.0,
        log_nodes: bool | None = None,
        auto_resume: bool = False,
        summarizer: Summarizer | None = None,
        store_secret: bytes | str | None = None,
        observers: Sequence[Observer] = (),
        telemetry: bool | Telemetry | None = None,
        allow_shell: bool = False,
    ) -> None:
        self.store, self._owns_store = _open_store(store, store_secret)
        self._close_store = False  # set on entry: whether exit closes the store
        llm, self._owns_llm = _model(llm)
        self.telemetry = telemetry_for(telemetry, llm)
        self.llm = llm
        if registry is None:
            from handlers import build_registry

            memory = memory if memory is not None else _store_memory(self.store)
            registry = build_registry(llm=llm, memory=memory, tools=tools, allow_shell=allow_shell)
        self.limits = limits or Limits()
        self.registry = registry
        self.engine = Engine(
            registry, observers=observers, max_steps=self.limits.max_steps_per_turn
        )
        self.turn_graph = _load(turn_graph, "turn.dot", registry)
        self.engine.check(self.turn_graph)
        self.heartbeat_graph = self._heartbeat(heartbeat_graph, registry)
        self.owner = _owner(owner)
        self.lease_ttl = lease_ttl
        self.auto_resume = auto_resume
        self._summarizer = summarizer or (
            llm_summarizer(llm) if llm is not None else extract_summarizer()
        )
        self._log_nodes = log_nodes
        self._live: dict[str, Session] = {}
        self._pending: dict[str, anyio.Event] = {}
        self._active: str | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._spawn = _Spawner()
        # The lease loop's own scope, and the event it sets once it has ended.
        self._renewing: tuple[anyio.CancelScope, anyio.Event] | None = None
        self._runtime: SessionRuntime | None = None
        self.gate_timers = GateTimers(self._spawn)

    def _heartbeat(self, source: GraphSource | None, registry: HandlerRegistry) -> Graph | None:
        """The heartbeat graph; the default one is skipped if ``registry`` cannot run it."""
        try:
            graph = _load(source, "heartbeat.dot", registry)
            self.engine.check(graph)
        except GraphValidationError:
            if source is not None:
                raise
            return None  # a custom registry without heartbeat handlers: no heartbeat
        return graph

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> SessionManager:
        # A store made from a URL, or handed over unopened, is opened and closed here.
        self._close_store = self._owns_store or not getattr(self.store, "is_open", True)
        if self._close_store:
            await self.store.open()
        stack = contextlib.AsyncExitStack()
        tg = self._spawn.tg = await stack.enter_async_context(anyio.create_task_group())
        self._stack = stack
        self._runtime = SessionRuntime(
            self.engine,
            self.store,
            self.turn_graph,
            self.heartbeat_graph,
            self.limits,
            self._spawn,
            self._summarizer,
            self._log_nodes,
            self._lost,
            self.telemetry,
        )
        renewing = self._renewing = (anyio.CancelScope(), anyio.Event())
        tg.start_soon(self._renew_leases, *renewing)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        try:
            # Not shielded: a turn that never ends must not make exit hang forever.
            for session_id in tuple(self._live):
                await self.close(session_id)
        finally:
            self.gate_timers.close()
            # Cleared first: whatever tries to start a task from here on (a gate timer
            # armed by a turn the exit interrupted) meets SessionClosed, not the task
            # group's RuntimeError once it has exited.
            stack, self._stack, tg, self._spawn.tg = self._stack, None, self._spawn.tg, None
            self._runtime = None  # it holds this manager (on_fenced): no cycle once closed
            try:
                await self._stop_renewing()
            finally:
                if tg is not None:
                    tg.cancel_scope.cancel()
                if stack is not None:
                    # The block's own error is not handed to the task group (already
                    # cancelled): it would come back wrapped in an ExceptionGroup, and
                    # `except SessionNotFound:` around the block would miss it.  Python
                    # re-raises it as itself once this returns.
                    await stack.__aexit__(None, None, None)
                try:
                    if self._close_store:
                        await self.store.close()
                finally:
                    if self._owns_llm:
                        await _aclose(self.llm)
        return None

    async def _stop_renewing(self) -> None:
        """End the lease loop through its own scope and wait until it has ended.

        Not through the task group's cancel: a task that group cancels ends with an
        error that anyio's task group keeps in a reference cycle with the task's frame,
        and so with this manager, freed only by the cyclic garbage collector (closing
        a session waits for its heartbeat's task likewise).  Unshielded: an exit that
        is itself cancelled goes on to cancel the task group at once.
        """
        renewing, self._renewing = self._renewing, None
        if renewing is not None:
            scope, ended = renewing
            scope.cancel()
            await ended.wait()

    def _rt(self) -> SessionRuntime:
        if self._runtime is None:
            raise SessionClosed("*", "use the manager as `async with SessionManager(...)`")
        return self._runtime

    # ------------------------------------------------------------------ sessions

    async def create(
        self,
        session_id: str | None = None,
        *,
        agent_id: str = "default",
        type: SessionType = "primary",
        config: dict[str, Any] | None = None,
    ) -> Session:
        """A new session (``SessionExists`` if the id is taken; a random id if ``None``)."""
        sid = validate_session_id(session_id if session_id is not None else uuid.uuid4().hex)
        while sid in self._pending:
            await self._pending[sid].wait()
        if sid in self._live:
            raise SessionExists(sid, "already exists")
        return await self._single_flight(sid, True, agent_id, type, config)

    async def get(self, session_id: str) -> Session:
        """The live session, or load it from the store (``SessionNotFound``; a bad id:
        ``InvalidSessionId``)."""
        if isinstance(session_id, str):  # anything else is refused below, never hashed
            live = self._live.get(session_id)
            if live is not None:
                return live
        sid = validate_session_id(session_id)
        return await self._single_flight(sid, False, "default", "primary", None)

    async def get_or_create(
        self,
        session_id: str,
        *,
        agent_id: str = "default",
        type: SessionType = "primary",
        config: dict[str, Any] | None = None,
    ) -> Session:
        """The session, loaded or created; concurrent calls for one id share one load
        (a bad id: ``InvalidSessionId``)."""
        if isinstance(session_id, str):  # anything else is refused below, never hashed
            live = self._live.get(session_id)
            if live is not None:
                return live
        sid = validate_session_id(session_id)
        return await self._single_flight(sid, None, agent_id, type, config)

    async def _single_flight(
        self,
        sid: str,
        create: bool | None,
        agent_id: str,
        type: SessionType,
        config: dict[str, Any] | None,
    ) -> Session:
        """Open ``sid`` once however many callers ask at the same time."""
        while True:
            live = self._live.get(sid)
            if live is not None:
                return live
            pending = self._pending.get(sid)
            if pending is None:
                break
            await pending.wait()
        self._check_capacity(sid)
        event = self._pending[sid] = anyio.Event()
        try:
            return await self._open(sid, create, agent_id, type, config)
        finally:
            del self._pending[sid]
            event.set()

    def _check_capacity(self, sid: str) -> None:
        self._rt()
        cap = self.limits.max_active_sessions
        if len(self._live) + len(self._pending) >= cap:
            raise SessionLimitReached(sid, f"{cap} sessions are already active")

    async def _open(
        self,
        sid: str,
        create: bool | None,
        agent_id: str,
        type: SessionType,
        config: dict[str, Any] | None,
    ) -> Session:
        """Create (if asked) and load ``sid``, take its lease, adopt any checkpoint."""
        store = self.store
        if create is not False:
            now = time.time()
            meta = SessionMeta(sid, agent_id, type, now, now, config=dict(config or {}))
            try:
                await store.create(meta)
            except SessionExists:
                if create:
                    raise
        elif not await store.exists(sid):
            raise SessionNotFound(sid, "no such session")
        token = await store.acquire(sid, self.owner, self.lease_ttl)
        try:
            loaded = await store.load(sid, recent=self.limits.max_messages)
            session = Session(self._rt(), loaded, token=token)
            await session.checkpoints.adopt(loaded.checkpoint, session.turn_count)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await store.release(sid, self.owner, token)
            raise
        self._live[sid] = session
        self.gate_timers.track(session)  # a stored deadline: armed (passed: fires now)
        if self.auto_resume and session.resumable is not None:
            await session.resume()
        return session

    async def close(self, session_id: str) -> None:
        """Stop the session's heartbeat, wait for its running turn, release its lease."""
        session = self._live.get(session_id)
        if session is None:
            return
        self.gate_timers.cancel(session_id)
        try:
            await session.close()
        finally:
            self._live.pop(session_id, None)
            if self._active == session_id:
                self._active = None
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await self.store.release(session_id, self.owner, session.token)

    async def delete(self, session_id: str) -> bool:
        """Close the session if live and delete it with all its records from the store."""
        sid = validate_session_id(session_id)
        await self.close(sid)
        return await self.store.delete(sid)

    async def compact(self, session_id: str) -> CompactionResult:
        """Compact the session now (see :meth:`Session.compact`)."""
        return await (await self.get(session_id)).compact()

    async def list_sessions(
        self, offset: int = 0, limit: int = 100, *, match: SessionMatch | None = None
    ) -> tuple[SessionMeta, ...]:
        """Every session in the store (live or not), by id; one whose stored metadata
        fails verification is listed by id with ``tampered=True``."""
        return await self.store.list_sessions(offset, limit, match=match)

    list = list_sessions

    @property
    def live(self) -> tuple[Session, ...]:
        """The sessions this manager hosts now."""
        return tuple(self._live.values())

    # ------------------------------------------------------------------ active session

    async def switch(self, session_id: str) -> Session:
        """Make ``session_id`` the active session (loading it if needed)."""
        session = await self.get(session_id)
        self._active = session.id
        return session

    @property
    def active(self) -> Session | None:
        """The session last chosen by :meth:`switch`, while it is live."""
        return self._live.get(self._active) if self._active is not None else None

    # ------------------------------------------------------------------ leases

    async def _renew_leases(self, scope: anyio.CancelScope, ended: anyio.Event) -> None:
        """Every ``lease_ttl / 3``: renew each live session's lease; drop fenced ones.
        Runs until ``scope`` is cancelled (the manager's exit), then sets ``ended``."""
        try:
            with scope:
                while True:
                    await anyio.sleep(self.lease_ttl / 3)
                    await self._renew_all()
        finally:
            ended.set()

    async def _renew_all(self) -> None:
        # A function of its own: the loop above sleeps without a session in its frame,
        # so a closed session is not kept alive until the next round.
        for session in tuple(self._live.values()):
            try:
                await self.store.renew(session.id, self.owner, session.token, self.lease_ttl)
            except Fenced as exc:
                self._lost(session, exc)
            except Exception as exc:  # a store hiccup: try again next round
                log("warning", "lease.renew_failed", session_id=session.id, error=str(exc))

    def _lost(self, session: Session, exc: Fenced) -> None:
        """Another process owns ``session`` now: stop hosting it here.

        Called by the renewal loop and by a session whose store write was fenced.  The
        lease is not released (it is not ours any more); the next ``get``/``get_or_create``
        of the id acquires afresh.
        """
        session.closed = True
        session.stop_heartbeat()
        if self._live.get(session.id) is not session:
            return  # already dropped (or never listed: fenced while opening)
        del self._live[session.id]
        self.gate_timers.cancel(session.id)
        if self._active == session.id:
            self._active = None
        log("error", "session.fenced", session_id=session.id, error=str(exc))
