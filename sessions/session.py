"""One conversation: a small facade over the parts that each do one job.

A :class:`Session` is made by a :class:`~sessions.SessionManager`, which shares one
:class:`SessionRuntime` (engine, store, compiled graphs, limits, task group) among all
its sessions.  The session itself holds its identity and public counters, and wires
together:

* :class:`~sessions.turns.TurnPipeline`: the FIFO lock and the turns (context, run,
  checkpoint, commit); ``await session.send(text)`` runs one, ``session.stream(text)``
  runs one as an async iterator of its events (:mod:`sessions.stream`);
* :class:`~sessions.state.SessionState`: working memory, goals, cognitive mode, and
  heartbeat results waiting to be applied or stored;
* :class:`~sessions.sessionlog.SessionLog`: the bounded in-memory messages, turn records
  and tool calls, paging older ones in from the store;
* :class:`~sessions.checkpoints.Checkpoints`: the in-flight turn's checkpoints, a turn
  paused at a human gate, the latest failed turn (:mod:`sessions.gates`);
* :class:`~sessions.compaction.Compactor`: summarising old messages;
* :class:`~sessions.heartbeat.Heartbeat`: the heartbeat graph on a timer;
* :class:`~sessions.writer.SessionWriter`: every store write, fenced.
"""

from __future__ import annotations

import functools
import logging
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

import anyio
import structlog

from engine.events import Observer
from engine.graph import Graph
from sessions.checkpoints import Checkpoints, graph_fingerprint
from sessions.compaction import CompactionResult, Compactor, SessionParts, Summarizer
from sessions.errors import Fenced, SessionClosed, SessionError
from sessions.gates import Question, answer_plan, question_of, retry_plan, timeout_plan
from sessions.heartbeat import Heartbeat, HeartbeatTrace, Spawn
from sessions.history import HistoryView, MessagePage
from sessions.limits import Limits
from sessions.sessionlog import ReasoningStep, SessionLog
from sessions.state import SessionState
from sessions.store.base import Checkpoint, LoadedSession, Message, SessionType, Store, TurnRecord
from sessions.stream import STREAM_BUFFER, TurnStream
from sessions.turn_host import SessionCore
from sessions.turn_lock import TurnLock
from sessions.turns import Phase, TurnPipeline, TurnResult, checked_input
from sessions.usage import UsageTotals, stored_usage
from sessions.writer import SessionWriter

if TYPE_CHECKING:
    from engine.runner import Engine
    from sessions.telemetry import Telemetry

__all__ = ["Phase", "ReasoningStep", "Session", "SessionRuntime", "TurnResult", "expire_gate"]


HEARTBEAT_HISTORY = 64
"""How many of the newest history entries a heartbeat run sees (``session.history``)."""

_T = TypeVar("_T")

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
    manager drops it from its live set).  ``telemetry`` traces turns
    (:mod:`sessions.telemetry`).
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
    telemetry: Telemetry | None = None
    """Makes each turn's OpenTelemetry spans; ``None``: no tracing, no cost."""

    def logging(self) -> bool:
        """Whether this turn should log its nodes."""
        return _info_enabled() if self.log_nodes is None else self.log_nodes


class _InCore(Generic[_T]):
    """A session attribute that lives in the session's
    :class:`~sessions.turn_host.SessionCore` (its parts advance it there), read and
    written through the session as if it were its own."""

    __slots__ = ("name",)

    def __set_name__(self, owner: type[Session], name: str) -> None:
        self.name = name

    @overload
    def __get__(self, session: None, owner: type[Session]) -> _InCore[_T]: ...

    @overload
    def __get__(self, session: Session, owner: type[Session]) -> _T: ...

    def __get__(self, session: Session | None, owner: type[Session]) -> _T | _InCore[_T]:
        if session is None:
            return self
        value: _T = getattr(session._core, self.name)
        return value

    def __set__(self, session: Session, value: _T) -> None:
        setattr(session._core, self.name, value)


class Session:
    """One conversation.  Create it through :class:`~sessions.SessionManager`.

    Public state: ``id``, ``agent_id``, ``type``, ``config``, ``phase`` (``idle``,
    ``processing``, ``awaiting_llm`` while an ``llm_call``/``reflect`` node runs,
    ``awaiting_tools`` during ``dispatch_tools``), ``trace_id`` (of the latest turn),
    ``turn_count`` (finished turns, failed ones included), ``working_memory``, ``goals``,
    ``cognitive_mode``, ``turn_graph``/``heartbeat_graph`` (shared, compiled),
    ``heartbeat`` (interval, in-flight flag, failures), ``created_at``/``updated_at``,
    ``interrupted_turn`` (a checkpoint that was not resumed), ``question`` (what a
    paused turn asks), ``checkpoints`` (the in-flight, paused and failed turns' records),
    ``window`` (the in-memory messages), ``closed``.

    Human gates and retries (:mod:`sessions.gates`): a turn that reaches a
    ``wait.human`` node pauses, durably (``TurnResult.status == "paused"``); until
    :meth:`answer` is called, in this process or another, :meth:`send` raises
    :class:`~sessions.errors.SessionPaused`.  With ``Limits.checkpoint`` on, a failed
    turn can be re-run from the node that failed (:meth:`retry_turn`).

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
    turns, never between a turn's commit and its apply, and stored under the session
    lock (see :mod:`sessions.state`); one not yet stored is stored by :meth:`close`.

    No part of a session refers back to it (they hold its
    :class:`~sessions.turn_host.SessionCore` and each other), so a closed session that
    nobody holds is freed at once by reference counting, never left for the cyclic
    garbage collector's pauses.
    """

    __slots__ = (
        "__weakref__",
        "_closing",
        "_compactor",
        "_core",
        "_log",
        "_rt",
        "_state",
        "_token",
        "_turns",
        "agent_id",
        "checkpoints",
        "config",
        "created_at",
        "heartbeat",
        "heartbeat_graph",
        "id",
        "turn_graph",
        "type",
        "window",
        "working_memory",
    )

    # Kept in the core, where the turns advance them (see the class docstring).
    closed: _InCore[bool] = _InCore()
    phase: _InCore[Phase] = _InCore()
    trace_id: _InCore[str] = _InCore()
    turn_count: _InCore[int] = _InCore()
    updated_at: _InCore[float] = _InCore()

    def __init__(self, runtime: SessionRuntime, loaded: LoadedSession, *, token: int) -> None:
        meta, limits = loaded.meta, runtime.limits
        # The parts below get what they need (this core, each other), never the session:
        # a part holding its owner would make a reference cycle (see the class).
        core = self._core = SessionCore(meta, runtime.turn_graph)
        self._rt = runtime
        self._token = token
        self.id = meta.id
        self.agent_id = meta.agent_id
        self.type: SessionType = meta.type
        self.config: Mapping[str, Any] = meta.config
        self.created_at = meta.created_at
        self.turn_graph = runtime.turn_graph
        self.heartbeat_graph = runtime.heartbeat_graph
        self._closing: anyio.Event | None = None  # set when close() has finished
        writer = SessionWriter(runtime.store, self.id, token, _fence_notice(self))
        log = self._log = SessionLog(runtime.store, limits, loaded)
        self.window = log.window
        state = self._state = SessionState(meta)
        self.working_memory = state.working_memory  # one dict, changed in place
        self.checkpoints = Checkpoints(writer, graph_fingerprint(self.turn_graph))
        lock = TurnLock(core, runtime, writer, log, state)
        self._compactor = Compactor(
            self.id,
            SessionParts(log.window, core, lock.apply_summary),
            runtime.summarize,
            limits,
            runtime.spawn,
        )
        self._turns = TurnPipeline(
            core, runtime, lock, writer, log, state, self.checkpoints, self._compactor
        )
        self.heartbeat = Heartbeat(
            self.id,
            functools.partial(
                _run_heartbeat, core, runtime.engine, runtime.heartbeat_graph, state, log
            ),
            self._turns.offer_state,
            limits.heartbeat_max_backoff,
        )

    def __repr__(self) -> str:
        return f"<Session {self.id!r} turns={self.turn_count} phase={self.phase}>"

    # ------------------------------------------------------------------ state

    @property
    def goals(self) -> tuple[str, ...]:
        """The session's goals (set by turns and heartbeats)."""
        return self._state.goals

    @property
    def cognitive_mode(self) -> str:
        """The session's cognitive mode (set by turns and heartbeats)."""
        return self._state.cognitive_mode

    @property
    def busy(self) -> bool:
        """True while a turn runs (or a compaction applies, or session state is stored)."""
        return self._turns.busy

    @property
    def queued(self) -> int:
        """Turns waiting behind the running one."""
        return self._turns.queued

    @property
    def question(self) -> Question | None:
        """The question a paused turn waits on (``None``: no turn is paused)."""
        return question_of(self.id, self.checkpoints.paused)

    @property
    def resumable(self) -> Checkpoint | None:
        """The interrupted turn :meth:`resume` would continue, if any (until a
        :meth:`send` abandons it to ``interrupted_turn``)."""
        return self.checkpoints.resumable

    @property
    def interrupted_turn(self) -> Checkpoint | None:
        """The last checkpoint given up on (reported, never replayed)."""
        return self.checkpoints.interrupted

    @property
    def token(self) -> int:
        """The fencing token of this process's lease on the session."""
        return self._token

    # ------------------------------------------------------------------ the log

    @property
    def history(self) -> HistoryView:
        """The live, read-only view of the in-memory messages (summary first, if any)."""
        return self._log.history

    @property
    def message_count(self) -> int:
        """Every message the session ever had, in memory or only in the store."""
        return self._log.next_seq

    def recent(self, n: int) -> tuple[Message, ...]:
        """The last ``n`` messages in memory, oldest first."""
        return self._log.recent(n)

    async def messages(self, offset: int = 0, limit: int = 100) -> MessagePage:
        """Messages ``offset <= seq < offset + limit``: from memory, older ones from the store."""
        return await self._log.messages(offset, limit)

    async def all(self, page_size: int = 500) -> tuple[Message, ...]:
        """Every message of the session, oldest first (pages older ones in from the store)."""
        return await self._log.all(page_size)

    def steps(self) -> tuple[ReasoningStep, ...]:
        """The reasoning steps in memory (the newest ``Limits.max_reasoning_steps`` node
        visits), oldest first; older ones are in the store's turn records (:meth:`traces`)."""
        return self._log.steps()

    def tool_calls(self) -> tuple[Message, ...]:
        """The tool-call records in memory (the newest ``Limits.max_tool_calls`` tool
        results and assistant tool requests), oldest first; every one is also a message,
        so older ones page in through :meth:`messages`."""
        return self._log.tool_calls()

    async def traces(self, offset: int = 0, limit: int = 100) -> tuple[TurnRecord, ...]:
        """Turn records (node traces) of turns ``offset+1 ...``: recent from memory, older
        from the store."""
        return await self._log.traces(offset, limit)

    # ------------------------------------------------------------------ turns

    async def send(self, text: str) -> TurnResult:
        """Run one turn with user input ``text``; turns on one session run in arrival order.

        Raises :class:`SessionBusy` when ``Limits.queue_size`` turns already wait,
        :class:`SessionClosed` once the session is closed, and
        :class:`~sessions.errors.InvalidInput` (nothing written) when ``text`` is not a
        ``str`` or cannot be encoded.  A failing graph returns a failed
        :class:`TurnResult` (history unchanged): so does a turn past
        ``Limits.turn_timeout`` (error :class:`~engine.errors.TurnTimeout`) and one whose
        output cannot be stored (error :class:`~sessions.errors.Unstorable`).  Store
        errors propagate (:class:`~engine.errors.Fenced` after closing the session;
        :class:`~sessions.errors.CommitUnknown` when the commit's fate could not be
        learnt: the next turn learns it first).  A checkpoint still waiting for
        :meth:`resume` is abandoned and reported first (see the class).
        """
        return await self._turns.send(text)

    def stream(self, text: str, *, buffer: int = STREAM_BUFFER) -> TurnStream:
        """Run one turn like :meth:`send`, as an async iterator of its events, the
        :class:`TurnResult` last (see :mod:`sessions.stream` for the buffer of ``buffer``
        events and leaving early).  The turn starts when iteration starts."""
        if self.closed:
            raise SessionClosed(self.id, "closed")
        text = checked_input(text, self.id)  # refused here, before the stream exists
        turns = self._turns
        return TurnStream(self.id, lambda watch: turns.send(text, watch), self._rt.spawn, buffer)

    async def usage(self) -> UsageTotals:
        """Model tokens of every stored turn, by model; read from the store, so it counts
        turns of earlier processes too (and failed turns: their tokens were spent)."""
        return await stored_usage(self._rt.store, self.id)

    async def resume(self) -> TurnResult | None:
        """Continue the turn a crashed process left at its checkpoint; ``None`` if none."""
        return await self._turns.resume()

    async def answer(
        self, choice: str, *, node: str | None = None, watch: Observer | None = None
    ) -> TurnResult:
        """Answer the question the paused turn waits on (:attr:`question`): the turn runs
        on from its gate along the edge labelled ``choice`` and commits (or pauses at
        the next gate).  Works in any process that loads the session.

        Raises :class:`~sessions.errors.NotPaused` when no question waits,
        :class:`~sessions.errors.UnknownChoice` (the question still waits) for a choice
        the gate does not offer, and :class:`~sessions.errors.GateTimedOut` when the
        gate's timeout passed first: the turn has then run on with its ``default``.
        ``node`` names the gate whose question the caller saw: when another gate waits
        now (a timeout took that one on), :class:`~sessions.errors.QuestionChanged`
        (a :class:`~sessions.errors.NotPaused`) and nothing runs.
        ``watch`` observes the turn's events as :meth:`send`'s stream would.
        """
        cps = self.checkpoints
        plan = lambda: answer_plan(self.id, cps, choice, node)  # noqa: E731 - under the lock
        return await self._turns.continue_turn(plan, watch)

    async def retry_turn(self, *, watch: Observer | None = None) -> TurnResult:
        """Re-run the latest turn, which failed, from the node that failed with the
        context just before it, as the next turn (``Limits.checkpoint`` must have been on
        when it failed).  :class:`~sessions.errors.RetryRefused` when there is no such
        turn or the turn graph changed since; :class:`~sessions.errors.SessionPaused`
        while a question waits.  ``watch`` observes the turn's events."""
        checkpointing = self._rt.limits.checkpoint
        core, cps = self._core, self.checkpoints
        return await self._turns.continue_turn(lambda: retry_plan(core, cps, checkpointing), watch)

    # ------------------------------------------------------------------ compaction

    async def compact(self) -> CompactionResult:
        """Summarise messages older than the last ``keep_recent_turns`` turns.

        A call that arrives while another compaction runs waits for it and returns a
        no-op result instead of compacting twice.
        """
        return await self._compactor.compact()

    async def apply_summary(self, summary: Message, upto_seq: int) -> bool:
        """Archive ``summary`` in the store and drop what it covers from memory (locked);
        False when the session closed first."""
        return await self._turns.apply_summary(summary, upto_seq)

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

    # ------------------------------------------------------------------ lifecycle

    def _fenced(self, exc: Fenced) -> None:
        """Another process owns the session now: anything more we wrote would be lost."""
        self._core.closed = True
        self.heartbeat.stop()
        if self._rt.on_fenced is not None:
            self._rt.on_fenced(self, exc)

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
            await self._turns.drain()
            await self.heartbeat.stopped()  # its task has let go of the session's parts
        finally:
            closing.set()


async def expire_gate(session: Session, *, watch: Observer | None = None) -> TurnResult:
    """Apply ``session``'s waiting gate's timeout now that its deadline passed, as its
    next use would: the turn runs on with the gate's ``default`` (none: the gate fails
    and is routed) and commits, or pauses at the next gate.  The manager's gate timers
    call this (:mod:`sessions.gate_timers`); a function, not a method, to keep the
    session's public face to what callers use.

    Raises :class:`~sessions.errors.NotPaused` when no question waits or its deadline
    has not passed (an answer came first).  ``watch`` observes the turn.
    """
    cps = session.checkpoints
    plan = lambda: timeout_plan(session.id, cps)  # noqa: E731 - read under the lock
    return await session._turns.continue_turn(plan, watch)


def _fence_notice(session: Session) -> Callable[[Fenced], None]:
    """What the session's writer calls when a write was fenced: ``session._fenced``.

    Held weakly: the writer is the session's own part, and a strong reference back
    would make a cycle (a closed session left for the cyclic garbage collector).  It is
    read only after a fenced write, never on a turn's path.  A session nobody holds any
    more is not hosted (its manager holds every hosted one): there is no one to tell.
    """
    ref = weakref.ref(session)

    def fenced(exc: Fenced) -> None:
        live = ref()
        if live is not None:
            live._fenced(exc)

    return fenced


async def _run_heartbeat(
    core: SessionCore,
    engine: Engine,
    graph: Graph | None,
    state: SessionState,
    log: SessionLog,
    heartbeat: Heartbeat,
) -> Mapping[str, Any]:
    """One heartbeat run of ``heartbeat`` on a snapshot of the session (``core``,
    ``state``; its history: the newest :data:`HEARTBEAT_HISTORY` entries of ``log``),
    outside the session lock."""
    assert graph is not None
    n = heartbeat.runs + 1
    sid = core.id
    context = {
        "session.id": sid,
        "session.agent_id": core.agent_id,
        "session.type": core.type,
        "session.turn_count": core.turn_count,
        "session.phase": core.phase,
        "session.goals": state.goals,
        "session.working_memory": MappingProxyType(dict(state.working_memory)),
        "session.cognitive_mode": state.cognitive_mode,
        # A snapshot (turns may append meanwhile), of the newest entries only: a
        # heartbeat must cost the same at message 20 and message 20,000.
        "session.history": log.history[-HEARTBEAT_HISTORY:],
        "session.config": core.config,
        "session.trace_id": f"{sid}:hb:{n}",
    }
    result = await engine.run(graph, context, run_id=f"{sid}:hb:{n}")
    heartbeat.recent.append(HeartbeatTrace.of(n, result, graph.source_hash))
    if not result.ok:
        raise result.error or RuntimeError(f"heartbeat {result.status}")
    return result.context
