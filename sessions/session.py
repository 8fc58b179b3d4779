"""One conversation: its state, its FIFO of turns, its phase, heartbeat and traversal log.

A :class:`Session` is made by a :class:`~sessions.SessionManager`, which shares one
:class:`SessionRuntime` (engine, store, compiled graphs, limits, task group) among all
its sessions.  ``await session.send(text)`` runs one turn::

    lock (FIFO) -> build turn values -> Engine.run(turn_graph) -> one store commit
                -> apply messages / memory / counters -> phase idle -> TurnResult

The turn's result is applied only after the store commit succeeds, so memory and store
never disagree; a failed turn appends no message; a cancelled turn re-raises after the
session is idle again.  Per-turn cost does not grow with history: handlers see a live
read-only :class:`~sessions.history.HistoryView`, never a copy.

What a session keeps in memory is bounded by :class:`~sessions.limits.Limits`: the newest
``max_messages`` messages, ``max_reasoning_steps`` reasoning steps and ``max_tool_calls``
tool-call records.  Past a bound the oldest leave memory only; they stay in the store
(or in a compaction summary) and page back in through :meth:`Session.messages` and
:meth:`Session.traces`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, cast

import anyio
import structlog

from engine.events import Observer, StructlogObserver
from engine.graph import Graph, Node
from engine.logs import log
from engine.outcome import NodeRecord, RunResult, RunStatus
from engine.scopes import cancel_scope
from sessions.compaction import CompactionResult, Summarizer, compact_session
from sessions.errors import Fenced, SessionBusy, SessionClosed, SessionError
from sessions.fifolock import FifoLock
from sessions.heartbeat import Heartbeat, Spawn
from sessions.history import HistoryView, MessagePage, MessageWindow
from sessions.limits import Limits
from sessions.store.base import (
    EMPTY_META,
    Checkpoint,
    LoadedSession,
    Message,
    Role,
    SessionType,
    Store,
    TurnCommit,
    TurnRecord,
)

if TYPE_CHECKING:
    from engine.runner import Engine, OnStep

__all__ = ["Phase", "ReasoningStep", "Session", "SessionRuntime", "TurnResult"]

Phase = Literal["idle", "processing", "awaiting_llm", "awaiting_tools"]

# A plain dict (private, never mutated): its .get is what every node start pays.
_PHASE_OF: dict[str, Phase] = {
    "llm_call": "awaiting_llm",
    "reflect": "awaiting_llm",
    "dispatch_tools": "awaiting_tools",
}
_ROLES = frozenset({"user", "assistant", "tool", "system", "summary"})
_cancelled = anyio.get_cancelled_exc_class


HEARTBEAT_HISTORY = 64
"""How many of the newest history entries a heartbeat run sees (``session.history``)."""


@dataclass(frozen=True, slots=True)
class TurnResult:
    """How one turn ended: the reply, ``status`` (success/fail), its number and node trace.

    ``error`` is the run's error when it failed (a :class:`~engine.errors.RunError`).
    """

    reply: str
    status: RunStatus
    turn: int
    trace: tuple[NodeRecord, ...]
    error: BaseException | None = field(default=None, compare=False)
    trace_id: str = ""

    @property
    def ok(self) -> bool:
        """True when the turn reached an exit node and was committed."""
        return self.status == "success"


class ReasoningStep(NamedTuple):
    """One reasoning step: one node visit of a turn's traversal log.

    ``record`` is the node's trace entry as stored (:meth:`engine.NodeRecord.to_dict`:
    ``id``, ``handler``, ``status``, ``attempts``, ``duration_ms``[, ``reason``]).
    """

    turn: int
    record: Mapping[str, Any]


def is_tool_call(message: Message) -> bool:
    """Whether ``message`` is a tool-call record: a tool result (``role="tool"``) or an
    assistant message asking for tools (``meta["tool_calls"]``)."""
    return message.role == "tool" or (message.role == "assistant" and "tool_calls" in message.meta)


_UNFILTERED = structlog.make_filtering_bound_logger(logging.NOTSET)


def _info_enabled() -> bool:
    """Whether structlog was set up with a level filter that lets ``info`` through.

    structlog's out-of-the-box logger (and the one ``structlog.testing.capture_logs``
    leaves behind) filters nothing and prints to stdout: that is not a request for
    per-node logs, so it does not count.  Pass ``log_nodes=True`` to log regardless.
    """
    if not structlog.is_configured():
        return False
    wrapper = structlog.get_config()["wrapper_class"]
    if wrapper is _UNFILTERED:
        return False
    check = getattr(wrapper, "is_enabled_for", None)
    return check is not None and bool(check(None, logging.INFO))


@dataclass(slots=True, eq=False)
class SessionRuntime:
    """What every session of one manager shares: one engine, one store, compiled graphs.

    ``spawn`` starts a background task in the manager's task group.  ``log_nodes``:
    ``True``/``False`` forces per-node structlog logging on/off; ``None`` logs only when
    structlog was configured with a level filter enabling ``info`` (checked per turn).
    ``on_fenced`` is told when a session learns another process took it over (the
    manager drops it from its live set).
    """

    engine: Engine
    store: Store
    turn_graph: Graph
    heartbeat_graph: Graph | None
    limits: Limits
    spawn: Spawn
    summarize: Summarizer
    log_nodes: bool | None = None
    on_fenced: Callable[[Session, Fenced], None] | None = None

    def logging(self) -> bool:
        """Whether this turn should log its nodes."""
        return _info_enabled() if self.log_nodes is None else self.log_nodes


def _jsonable(value: object, depth: int = 0) -> bool:
    """Whether ``value`` survives a JSON round trip (checkpoint contexts keep only those)."""
    if value is None or isinstance(value, str | int | float | bool):
        return True
    if depth > 8:
        return False
    if isinstance(value, list | tuple):
        return all(_jsonable(v, depth + 1) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _jsonable(v, depth + 1) for k, v in value.items())
    return False


def _durable_context(context: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a run's context a checkpoint keeps: JSON-safe, not rebuilt per turn."""
    return {k: v for k, v in context.items() if not k.startswith("session.") and _jsonable(v)}


class Session:
    """One conversation.  Create it through :class:`~sessions.SessionManager`.

    Public state: ``id``, ``agent_id``, ``type``, ``config``, ``phase`` (``idle``,
    ``processing``, ``awaiting_llm`` while an ``llm_call``/``reflect`` node runs,
    ``awaiting_tools`` during ``dispatch_tools``), ``trace_id`` (of the latest turn),
    ``turn_count`` (finished turns, failed ones included), ``working_memory``, ``goals``,
    ``cognitive_mode``, ``turn_graph``/``heartbeat_graph`` (shared, compiled),
    ``heartbeat`` (interval, in-flight flag, failures), ``created_at``/``updated_at``,
    ``interrupted_turn`` (a checkpoint that was not resumed), ``closed``.

    Interrupted turns: a checkpoint found on load for the next turn of an unchanged
    graph waits in :attr:`resumable` for :meth:`resume` (the manager's ``auto_resume``
    calls it on load).  A :meth:`send` that comes first abandons it rather than run two
    versions of one turn: the checkpoint moves to ``interrupted_turn``, a
    ``turn.interrupted`` warning (reason ``superseded by a new turn``) is logged, the
    store's copy is cleared, and the new input takes that turn number.

    Fencing: when any store write raises :class:`~engine.errors.Fenced` (another
    process owns the session now), the session closes at once (heartbeat stopped, later
    calls raise :class:`~engine.errors.SessionClosed`) and its manager forgets it, so a
    later ``get_or_create`` takes the lease afresh.  The ``Fenced`` error propagates.

    Memory is bounded per :class:`~sessions.limits.Limits`; what leaves memory stays in
    the store:

    * messages: the newest ``max_messages`` (:attr:`history`; all via :meth:`messages`);
    * reasoning steps: the newest ``max_reasoning_steps`` node visits of this process's
      turns (:meth:`steps`).  A turn's record (:meth:`traces`) stays in memory only while
      all its steps do (and for at most ``trace_window`` turns); older records, and the
      steps of turns run before the session was loaded, come from the store;
    * tool-call records: the newest ``max_tool_calls`` tool results and assistant tool
      requests (:meth:`tool_calls`; all of them are messages, so :meth:`messages` pages
      older ones in).

    A heartbeat's result (working memory, goals, cognitive mode) is applied between
    turns and stored on its own (:meth:`~sessions.store.base.Store.update_state`,
    fenced like a commit) under the session lock, so it never lands between a turn's
    commit and its apply: applied while idle, it is written by a background task at
    once; applied when a turn (or compaction) releases the lock, it is written before
    the lock is released; a result not yet written is written by :meth:`close`.  A
    failed write is logged (``session.state_not_stored``) and retried with the next
    commit or at close; a process that dies in between loses only that one result.
    """

    __slots__ = (
        "__weakref__",
        "_closing",
        "_compact_gen",
        "_compact_lock",
        "_compacting",
        "_history",
        "_lock",
        "_next_seq",
        "_pending_state",
        "_resume_cp",
        "_rt",
        "_state_dirty",
        "_token",
        "_tool_calls",
        "_trace_steps",
        "_traces",
        "_turn_held",
        "_waiting",
        "_wm_view",
        "agent_id",
        "closed",
        "cognitive_mode",
        "config",
        "created_at",
        "goals",
        "heartbeat",
        "heartbeat_graph",
        "id",
        "interrupted_turn",
        "phase",
        "trace_id",
        "turn_count",
        "turn_graph",
        "type",
        "updated_at",
        "window",
        "working_memory",
    )

    def __init__(self, runtime: SessionRuntime, loaded: LoadedSession, *, token: int) -> None:
        meta = loaded.meta
        self._rt = runtime
        self._token = token
        self.id = meta.id
        self.agent_id = meta.agent_id
        self.type: SessionType = meta.type
        self.config: Mapping[str, Any] = meta.config
        self.created_at, self.updated_at = meta.created_at, meta.updated_at
        self.turn_count = meta.turn_count
        self.working_memory: dict[str, Any] = dict(meta.working_memory)
        self._wm_view = MappingProxyType(self.working_memory)
        self.goals: tuple[str, ...] = tuple(meta.goals)
        self.cognitive_mode = meta.cognitive_mode
        self.phase: Phase = "idle"
        self.trace_id = ""
        self.turn_graph = runtime.turn_graph
        self.heartbeat_graph = runtime.heartbeat_graph
        self.closed = False
        self.interrupted_turn: Checkpoint | None = None
        self._resume_cp: Checkpoint | None = None
        self._init_window(loaded, meta.message_count)
        self._init_machinery(runtime.limits)

    def _init_window(self, loaded: LoadedSession, message_count: int) -> None:
        self.window = MessageWindow(self._rt.limits.max_messages)
        upto = loaded.meta.summary_upto
        if loaded.summary is not None:
            self.window.set_summary(loaded.summary)
            upto = max(upto, loaded.summary.seq)
        self.window.extend(m for m in loaded.recent if m.seq > upto)
        self._history = HistoryView(self.window)
        self._next_seq = message_count

    def _init_machinery(self, limits: Limits) -> None:
        self._lock = FifoLock()  # turns keep arrival order
        self._waiting = 0
        # Records with a step among the newest max_reasoning_steps (the oldest may be
        # partly past it), and how many steps they hold: one reference per turn, not a
        # long-lived object per node visit.
        self._traces: deque[TurnRecord] = deque()
        self._trace_steps = 0
        self._tool_calls: deque[Message] = deque(
            filter(is_tool_call, self.window.messages), maxlen=limits.max_tool_calls
        )
        self._state_dirty = False
        self._turn_held = False  # the lock is held by a turn (not a state write)
        self._pending_state: dict[str, Any] | None = None
        self._compact_lock: anyio.Lock | None = None  # made on the first compaction
        self._closing: anyio.Event | None = None  # set when close() has finished
        self._compact_gen = 0
        self._compacting = False
        self.heartbeat = Heartbeat(
            self.id, self._run_heartbeat, self._offer_state, limits.heartbeat_max_backoff
        )

    def __repr__(self) -> str:
        return f"<Session {self.id!r} turns={self.turn_count} phase={self.phase}>"

    # ------------------------------------------------------------------ read side

    @property
    def history(self) -> HistoryView:
        """The live, read-only view of the in-memory messages (summary first, if any)."""
        return self._history

    @property
    def message_count(self) -> int:
        """Every message the session ever had, in memory or only in the store."""
        return self._next_seq

    @property
    def busy(self) -> bool:
        """True while a turn runs (or a compaction applies, or session state is stored)."""
        return self._lock.locked()

    @property
    def queued(self) -> int:
        """Turns waiting behind the running one."""
        return self._waiting

    @property
    def heartbeat_interval(self) -> float | None:
        """Seconds between heartbeats, or ``None`` when stopped."""
        return self.heartbeat.interval

    @property
    def heartbeat_in_flight(self) -> bool:
        """Whether a heartbeat run is in progress."""
        return self.heartbeat.in_flight

    @property
    def resumable(self) -> Checkpoint | None:
        """The interrupted turn :meth:`resume` would continue, if any (until a
        :meth:`send` abandons it to ``interrupted_turn``)."""
        return self._resume_cp

    def recent(self, n: int) -> tuple[Message, ...]:
        """The last ``n`` messages in memory, oldest first."""
        return self._history.recent(n)

    async def messages(self, offset: int = 0, limit: int = 100) -> MessagePage:
        """Messages ``offset <= seq < offset + limit``: from memory, older ones from the store."""
        if offset < 0 or limit < 0:
            raise ValueError("offset and limit must be >= 0")
        total = self._next_seq
        stop = min(offset + limit, total)
        items = self.window.slice_by_seq(offset, stop)
        if items is None:
            items = await self._rt.store.messages(self.id, offset, stop - offset)
        return MessagePage(tuple(items), offset, total, stop < total)

    async def all(self, page_size: int = 500) -> tuple[Message, ...]:
        """Every message of the session, oldest first (pages older ones in from the store)."""
        out: list[Message] = []
        offset = 0
        while True:
            page = await self.messages(offset, page_size)
            out.extend(page.items)
            offset += len(page.items)
            if not page.has_more or not page.items:
                return tuple(out)

    def steps(self) -> tuple[ReasoningStep, ...]:
        """The reasoning steps in memory (the newest ``Limits.max_reasoning_steps`` node
        visits), oldest first; older ones are in the store's turn records (:meth:`traces`)."""
        steps = [ReasoningStep(r.turn, step) for r in self._traces for step in r.trace]
        return tuple(steps[-self._rt.limits.max_reasoning_steps :])

    def _whole_traces(self) -> deque[TurnRecord] | islice[TurnRecord]:
        """The in-memory records all of whose steps are kept (at most ``trace_window``)."""
        traces = self._traces
        limits = self._rt.limits
        skip = 1 if self._trace_steps > limits.max_reasoning_steps else 0
        skip = max(skip, len(traces) - limits.trace_window)
        return islice(traces, skip, None) if skip else traces

    def tool_calls(self) -> tuple[Message, ...]:
        """The tool-call records in memory (the newest ``Limits.max_tool_calls`` tool
        results and assistant tool requests), oldest first; every one is also a message,
        so older ones page in through :meth:`messages`."""
        return tuple(self._tool_calls)

    async def traces(self, offset: int = 0, limit: int = 100) -> tuple[TurnRecord, ...]:
        """Turn records (node traces) of turns ``offset+1 ...``: recent from memory, older
        from the store."""
        if offset < 0 or limit < 0:
            raise ValueError("offset and limit must be >= 0")
        mem = tuple(self._whole_traces())
        if mem and offset + 1 >= mem[0].turn:
            start = offset + 1 - mem[0].turn
            return mem[start : start + limit]
        return await self._rt.store.turns(self.id, offset, limit)

    # ------------------------------------------------------------------ turns

    async def send(self, text: str) -> TurnResult:
        """Run one turn with user input ``text``; turns on one session run in arrival order.

        Raises :class:`SessionBusy` when ``Limits.queue_size`` turns already wait,
        :class:`SessionClosed` once the session is closed.  A failing graph returns a
        failed :class:`TurnResult` (history unchanged); store errors propagate
        (:class:`~engine.errors.Fenced` after closing the session).  A checkpoint still
        waiting for :meth:`resume` is abandoned and reported first (see the class).
        """
        await self._enter()
        try:
            if self._resume_cp is not None:
                await self._report_interrupted(self._resume_cp, "superseded by a new turn")
            return await self._turn(text, self.turn_count + 1)
        finally:
            await self._leave()

    async def _enter(self) -> None:
        """Take the session lock in FIFO order, bounded by the queue size."""
        if self.closed:
            raise SessionClosed(self.id, "closed")
        # A state write or a compaction holding the lock is brief and is not a turn:
        # the first turn behind it waits without counting against the queue.
        room = self._rt.limits.queue_size + (0 if self._turn_held else 1)
        if self._lock.locked() and self._waiting >= room:
            raise SessionBusy(self.id, f"{self._waiting} turns already queued")
        self._waiting += 1
        try:
            await self._lock.acquire()
        finally:
            self._waiting -= 1
        if self.closed:
            self._lock.release()
            raise SessionClosed(self.id, "closed while the turn was queued")
        self._turn_held = True

    async def _leave(self) -> None:
        """End a turn: phase idle, then :meth:`_unlock`."""
        self.phase = "idle"
        await self._unlock()

    async def _unlock(self) -> None:
        """Apply a heartbeat result that waited for the lock holder, store any session
        state not stored yet, release the lock.  Never raises (write failures are
        logged): it runs in ``finally`` blocks, after the turn's own outcome."""
        try:
            if not self.closed:  # close() stores it itself
                await self._store_pending()
        finally:
            self._turn_held = False  # only now: the trailing write is part of the turn
            self._lock.release()

    async def _store_pending(self) -> None:
        """Apply a waiting heartbeat result and store dirty state (the caller holds the
        lock), again while a heartbeat finished during the write left one waiting."""
        self._flush_pending()
        while self._state_dirty:
            await self._store_state()
            if self._pending_state is None:
                return
            self._flush_pending()

    def _flush_pending(self) -> None:
        """Apply the heartbeat result that waited for the lock holder (who calls this)."""
        if self._pending_state is not None:
            pending, self._pending_state = self._pending_state, None
            if self._apply_state(pending):
                self._state_dirty = True

    async def _turn(
        self,
        text: str,
        turn: int,
        *,
        start_at: str | None = None,
        carried: Mapping[str, Any] | None = None,
        prior: tuple[Mapping[str, Any], ...] = (),
    ) -> TurnResult:
        """Run the graph for ``turn`` and commit it (caller holds the lock)."""
        trace_id = self.trace_id = f"{self.id}:{turn}"
        self.phase = "processing"
        context = self._turn_context(text, turn, trace_id)
        if carried:
            context = {**carried, **context}
        on_step = (
            self._checkpointer(text, turn, trace_id, prior) if self._rt.limits.checkpoint else None
        )
        try:
            result = await self._rt.engine.run(
                self.turn_graph,
                context,
                run_id=trace_id,
                observers=self._observers(turn, trace_id),
                on_enter=self._on_enter,
                start_at=start_at,
                on_step=on_step,
            )
        except _cancelled():
            if on_step is not None:
                # Fenced here is handled (session closed); the cancellation still wins.
                with anyio.CancelScope(shield=True), contextlib.suppress(Fenced):
                    await self._guard(self._rt.store.clear_checkpoint(self.id, token=self._token))
            raise
        with cancel_scope(shield=True):  # commit and apply are one step or none
            committed = await self._commit(text, turn, trace_id, result, prior)
        return committed

    def _turn_context(self, text: str, turn: int, trace_id: str) -> dict[str, Any]:
        return {
            "session.id": self.id,
            "session.agent_id": self.agent_id,
            "session.type": self.type,
            "session.input": text,
            "session.turn": turn,
            "session.turn_count": self.turn_count,
            "session.phase": "processing",
            "session.trace_id": trace_id,
            "session.goals": self.goals,
            "session.working_memory": self._wm_view,
            "session.cognitive_mode": self.cognitive_mode,
            "session.history": self._history,
            "session.config": self.config,
        }

    def _observers(self, turn: int, trace_id: str) -> tuple[Observer, ...]:
        # No observer at all when logging is off: the engine then builds no events.
        if not self._rt.logging():
            return ()
        return (StructlogObserver(session_id=self.id, trace_id=trace_id, turn=turn),)

    def _on_enter(self, node: Node) -> None:
        """Track the phase as nodes start (called by the engine, allocation-free)."""
        self.phase = _PHASE_OF.get(node.handler, "processing")

    async def _commit(
        self,
        text: str,
        turn: int,
        trace_id: str,
        result: RunResult,
        prior: tuple[Mapping[str, Any], ...],
    ) -> TurnResult:
        """Append the turn to the store, then to memory; one transaction per turn."""
        now = time.time()
        trace: tuple[Mapping[str, Any], ...] = tuple(map(NodeRecord.to_dict, result.trace))
        if prior:
            trace = prior + trace
        if not result.ok:
            record = TurnRecord(
                turn,
                result.status,
                trace_id,
                self.turn_graph.source_hash,
                trace,
                now,
                error=str(result.error),
            )
            await self._store_turn(TurnCommit(record, ()), now)
            return TurnResult("", "fail", turn, result.trace, result.error, trace_id)
        ctx = result.context
        reply = ctx.get("reply")
        reply = "" if reply is None else str(reply)
        messages = self._new_messages(text, ctx.get("turn.messages"), reply, turn, now)
        record = TurnRecord(turn, "success", trace_id, self.turn_graph.source_hash, trace, now)
        state = self._state_changes(ctx)
        commit = self._make_commit(record, messages, state)
        await self._store_turn(commit, now)
        self.window.extend(messages)
        self._next_seq += len(messages)
        if len(messages) > 2:  # user, [tool exchange...], assistant
            self._tool_calls.extend(filter(is_tool_call, messages))
        if state:
            self._apply_state(state)
        if commit.working_memory is not None:
            self._state_dirty = False  # everything applied so far is stored now
        self._maybe_compact()
        return TurnResult(reply, "success", turn, result.trace, None, trace_id)

    async def _store_turn(self, commit: TurnCommit, now: float) -> None:
        await self._guard(self._rt.store.append_turn(self.id, commit, token=self._token))
        self.turn_count = commit.record.turn
        self.updated_at = now
        self._keep_trace(commit.record)

    def _keep_trace(self, record: TurnRecord) -> None:
        """Keep a committed turn's record and steps in memory, within the limits.

        A step is one node visit.  The records holding the newest
        ``max_reasoning_steps`` steps stay (the oldest of them possibly only in part:
        :meth:`steps` cuts it, :meth:`traces` reads it from the store), so memory holds
        at most the limit plus one turn's steps, one reference per turn.
        """
        traces = self._traces
        traces.append(record)
        self._trace_steps += len(record.trace)
        # Drop the oldest record once none of its steps is among the newest.
        limit = self._rt.limits.max_reasoning_steps
        while self._trace_steps - len(traces[0].trace) >= limit:
            self._trace_steps -= len(traces.popleft().trace)

    def _new_messages(
        self, text: str, extra: object, reply: str, turn: int, now: float
    ) -> tuple[Message, ...]:
        seq = self._next_seq
        out = [Message(seq, "user", text, turn, now)]
        if extra is not None and isinstance(extra, Sequence) and not isinstance(extra, str):
            for item in extra:
                if not isinstance(item, Mapping):
                    continue
                role = str(item.get("role", "tool"))
                meta = item.get("meta")
                out.append(
                    Message(
                        seq + len(out),
                        cast(Role, role if role in _ROLES else "tool"),
                        str(item.get("content", "")),
                        turn,
                        now,
                        MappingProxyType(dict(meta)) if isinstance(meta, Mapping) else EMPTY_META,
                    )
                )
        out.append(Message(seq + len(out), "assistant", reply, turn, now))
        return tuple(out)

    # ------------------------------------------------------------------ state

    @staticmethod
    def _state_changes(ctx: Mapping[str, Any]) -> dict[str, Any]:
        """The session-state keys a run's context sets (working memory, goals, mode)."""
        out: dict[str, Any] = {}
        wm = ctx.get("memory.working")
        if isinstance(wm, Mapping) and wm:
            out["memory.working"] = wm
        goals = ctx.get("goals")
        if goals is not None and isinstance(goals, Sequence) and not isinstance(goals, str):
            out["goals"] = tuple(str(g) for g in goals)
        mode = ctx.get("heartbeat.mode", ctx.get("cognitive_mode"))
        if isinstance(mode, str) and mode:
            out["cognitive_mode"] = mode
        return out

    def _make_commit(
        self, record: TurnRecord, messages: tuple[Message, ...], state: Mapping[str, Any]
    ) -> TurnCommit:
        if not state and not self._state_dirty:
            return TurnCommit(record, messages)
        wm: dict[str, Any] = dict(self.working_memory)
        _merge_memory(wm, state.get("memory.working"))
        return TurnCommit(
            record,
            messages,
            working_memory=wm,
            goals=state.get("goals", self.goals),
            cognitive_mode=state.get("cognitive_mode", self.cognitive_mode),
        )

    def _apply_state(self, state: Mapping[str, Any]) -> bool:
        """Apply state changes in memory; whether anything actually changed (a heartbeat
        repeating the current mode needs no store write)."""
        before = (dict(self.working_memory), self.goals, self.cognitive_mode)
        _merge_memory(self.working_memory, state.get("memory.working"))
        if "goals" in state:
            self.goals = state["goals"]
        if "cognitive_mode" in state:
            self.cognitive_mode = state["cognitive_mode"]
        return before != (self.working_memory, self.goals, self.cognitive_mode)

    async def _offer_state(self, ctx: Mapping[str, Any]) -> None:
        """Apply a heartbeat's result now if no turn runs, else when the turn ends.

        Applied now, it is stored at once under the lock (free, so taken without
        waiting); applied at the end of a turn, :meth:`_unlock` stores it before
        releasing the lock.
        """
        state = self._state_changes(ctx)
        if not state:
            return
        if self._lock.locked():
            pending = self._pending_state or {}
            if "memory.working" in pending and "memory.working" in state:
                state["memory.working"] = {**pending["memory.working"], **state["memory.working"]}
            self._pending_state = {**pending, **state}
        elif self._apply_state(state):
            self._state_dirty = True
            if not self.closed:  # else close() stores it
                await self._lock.acquire()
                await self._unlock()

    async def _store_state(self) -> None:
        """Write working memory, goals and mode alone (the caller holds the lock).

        Shielded: once started, the write finishes.  ``Fenced`` closes the session
        (:meth:`_guard`); any other failure is logged and the state stays dirty, to ride
        the next commit or :meth:`close`.
        """
        write = self._rt.store.update_state(
            self.id,
            working_memory=dict(self.working_memory),
            goals=self.goals,
            cognitive_mode=self.cognitive_mode,
            token=self._token,
        )
        try:
            with anyio.CancelScope(shield=True):
                await self._guard(write)
        except Fenced:
            return  # the session is closed and its manager told; the result is lost
        except Exception as exc:
            log("warning", "session.state_not_stored", session_id=self.id, error=_describe(exc))
            return
        self._state_dirty = False

    # ------------------------------------------------------------------ heartbeat

    def start_heartbeat(self, interval: float) -> None:
        """Run the heartbeat graph every ``interval`` seconds in the background."""
        if self.closed:
            raise SessionClosed(self.id, "closed")
        if self.heartbeat_graph is None:
            raise SessionError(self.id, "the manager has no heartbeat graph")
        self.heartbeat.start(interval, self._rt.spawn)

    def stop_heartbeat(self) -> None:
        """Stop the heartbeat timer (idempotent)."""
        self.heartbeat.stop()

    async def _run_heartbeat(self) -> Mapping[str, Any]:
        """One heartbeat run on a snapshot of the session (its history: the newest
        :data:`HEARTBEAT_HISTORY` entries), outside the session lock."""
        graph = self.heartbeat_graph
        assert graph is not None
        n = self.heartbeat.runs + 1
        context = {
            "session.id": self.id,
            "session.agent_id": self.agent_id,
            "session.type": self.type,
            "session.turn_count": self.turn_count,
            "session.phase": self.phase,
            "session.goals": self.goals,
            "session.working_memory": MappingProxyType(dict(self.working_memory)),
            "session.cognitive_mode": self.cognitive_mode,
            # A snapshot (turns may append meanwhile), of the newest entries only: a
            # heartbeat must cost the same at message 20 and message 20,000.
            "session.history": self._history[-HEARTBEAT_HISTORY:],
            "session.config": self.config,
            "session.trace_id": f"{self.id}:hb:{n}",
        }
        result = await self._rt.engine.run(graph, context, run_id=f"{self.id}:hb:{n}")
        if not result.ok:
            raise result.error or RuntimeError(f"heartbeat {result.status}")
        return result.context

    # ------------------------------------------------------------------ compaction

    async def compact(self) -> CompactionResult:
        """Summarise messages older than the last ``keep_recent_turns`` turns.

        A call that arrives while another compaction runs waits for it and returns a
        no-op result instead of compacting twice.
        """
        gen = self._compact_gen
        if self._compact_lock is None:
            self._compact_lock = anyio.Lock()
        async with self._compact_lock:
            if gen != self._compact_gen:
                tokens = self.window.estimated_tokens()
                return CompactionResult(0, tokens, tokens)
            try:
                return await compact_session(
                    self, self._rt.summarize, self._rt.limits.keep_recent_turns
                )
            finally:
                self._compact_gen += 1

    async def apply_summary(self, summary: Message, upto_seq: int) -> bool:
        """Archive ``summary`` in the store and drop what it covers from memory (locked)."""
        await self._lock.acquire()
        try:
            if self.closed:
                return False
            with anyio.CancelScope(shield=True):
                await self._guard(
                    self._rt.store.append_summary(self.id, summary, upto_seq, token=self._token)
                )
            self.window.drop_upto(upto_seq)
            self.window.set_summary(summary)
            return True
        finally:
            await self._unlock()

    def _maybe_compact(self) -> None:
        threshold = self._rt.limits.compaction_threshold_tokens
        if threshold is None or self._compacting or self.window.estimated_tokens() <= threshold:
            return
        self._compacting = True
        self._rt.spawn(self._auto_compact)

    async def _auto_compact(self) -> None:
        try:
            await self.compact()
        except Exception as exc:  # a background compaction must never take the session down
            log("warning", "compaction.failed", session_id=self.id, error=_describe(exc))
        finally:
            self._compacting = False

    # ------------------------------------------------------------------ durability

    def _checkpointer(
        self, text: str, turn: int, trace_id: str, prior: tuple[Mapping[str, Any], ...]
    ) -> OnStep:
        """An ``on_step`` hook saving the in-flight turn after every node."""
        done: list[Mapping[str, Any]] = list(prior)
        graph_hash = self.turn_graph.source_hash

        async def on_step(
            record: NodeRecord, next_node: str | None, ctx: Mapping[str, Any]
        ) -> None:
            done.append(record.to_dict())
            if next_node is None:
                return  # the commit that follows deletes the checkpoint
            cp = Checkpoint(
                turn,
                graph_hash,
                trace_id,
                text,
                record.node_id,
                next_node,
                _durable_context(ctx),
                tuple(done),
                time.time(),
            )
            await self._guard(self._rt.store.save_checkpoint(self.id, cp, token=self._token))

        return on_step

    async def _guard(self, write: Awaitable[None]) -> None:
        """Await a store write; on :class:`Fenced`, stop hosting the session, re-raise."""
        try:
            await write
        except Fenced as exc:
            self._fenced(exc)
            raise

    def _fenced(self, exc: Fenced) -> None:
        """Another process owns the session now: anything more we wrote would be lost."""
        self.closed = True
        self.heartbeat.stop()
        if self._rt.on_fenced is not None:
            self._rt.on_fenced(self, exc)

    async def adopt_checkpoint(self, cp: Checkpoint | None) -> None:
        """Decide what to do with a checkpoint found on load (called by the manager).

        Same graph and the next turn: keep it for :meth:`resume`.  Otherwise report it
        (``interrupted_turn`` and a ``turn.interrupted`` warning) and clear it: never
        replayed.
        """
        if cp is None:
            return
        if cp.graph_hash == self.turn_graph.source_hash and cp.turn == self.turn_count + 1:
            self._resume_cp = cp
            return
        changed = cp.graph_hash != self.turn_graph.source_hash
        await self._report_interrupted(cp, "turn graph changed" if changed else "stale")

    async def _report_interrupted(self, cp: Checkpoint, reason: str) -> None:
        """Give up on ``cp``: clear it in the store, keep it in ``interrupted_turn``, warn."""
        await self._guard(self._rt.store.clear_checkpoint(self.id, token=self._token))
        self.interrupted_turn = cp
        self._resume_cp = None
        log(
            "warning",
            "turn.interrupted",
            session_id=self.id,
            turn=cp.turn,
            node=cp.next_node,
            reason=reason,
        )

    async def resume(self) -> TurnResult | None:
        """Continue the turn a crashed process left at its checkpoint; ``None`` if none."""
        if self._resume_cp is None:
            return None
        await self._enter()
        try:
            cp, self._resume_cp = self._resume_cp, None
            if cp is None or cp.turn != self.turn_count + 1:
                return None
            return await self._turn(
                cp.input, cp.turn, start_at=cp.next_node, carried=cp.context, prior=cp.trace
            )
        finally:
            await self._leave()

    # ------------------------------------------------------------------ lifecycle

    @property
    def token(self) -> int:
        """The fencing token of this process's lease on the session."""
        return self._token

    async def close(self) -> None:
        """Stop the heartbeat, refuse new turns, wait for the running (and queued) turn,
        then store a heartbeat result not stored yet.  A session closed because it was
        fenced writes nothing more."""
        if self.closed:
            if self._closing is not None:  # a close() in progress: wait for it
                await self._closing.wait()
            return
        self.closed = True
        closing = self._closing = anyio.Event()
        self.heartbeat.stop()
        try:
            await self._lock.acquire()
            try:
                await self._store_pending()
            finally:
                self._lock.release()
        finally:
            closing.set()


def _describe(exc: BaseException) -> str:
    """``"ErrorType: message"`` for a log field."""
    return f"{type(exc).__name__}: {exc}"


def _merge_memory(target: dict[str, Any], updates: Mapping[str, Any] | None) -> None:
    """Merge working-memory ``updates`` into ``target``; a ``None`` value deletes the key."""
    if not updates:
        return
    for k, v in updates.items():
        if v is None:
            target.pop(k, None)
        else:
            target[k] = v
