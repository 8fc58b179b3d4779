"""The turn pipeline of one session: lock, context, run, checkpoint, commit.

::

    lock (FIFO) -> build turn values -> Engine.run(turn_graph) -> one store commit
                -> apply messages / memory / counters -> phase idle -> TurnResult

The turn's result is applied only after the store commit succeeds, so memory and store
never disagree; a failed turn appends no message; a cancelled turn re-raises after the
session is idle again.  Per-turn cost does not grow with history: handlers see the
session log's live read-only :class:`~sessions.history.HistoryView`, never a copy.

The session lock is also what orders session-state writes (a heartbeat's result) and
compaction summaries against turns: whoever releases it first stores state not stored
yet (when a turn ends).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import anyio
import msgspec

from engine.errors import GatePaused
from engine.events import Observer, StructlogObserver, TurnCommitted, notify
from engine.graph import Graph, Node
from engine.outcome import NodeRecord, RunResult, RunStatus
from engine.scopes import cancel_scope
from sessions.checkpoints import Checkpoints
from sessions.compaction import Compactor
from sessions.errors import (
    CommitUnknown,
    InvalidInput,
    SessionBusy,
    SessionClosed,
    StoreError,
    Unstorable,
)
from sessions.fifolock import FifoLock
from sessions.gates import Continuation, before_turn, paused_checkpoint, refuse_paused
from sessions.limits import Limits
from sessions.sessionlog import SessionLog
from sessions.state import SessionState, state_changes
from sessions.store.base import Message, SessionType, TurnCommit, TurnRecord
from sessions.store.recall import PENDING_KEY, pending_items
from sessions.usage import UsageTotals
from sessions.writer import SessionWriter

if TYPE_CHECKING:
    from engine.runner import Engine
    from sessions.telemetry import Telemetry

__all__ = [
    "Phase",
    "TurnHost",
    "TurnPipeline",
    "TurnResult",
    "TurnRuntime",
    "checked_input",
]

Phase = Literal["idle", "processing", "awaiting_llm", "awaiting_tools"]

# A plain dict (private, never mutated): its .get is what every node start pays.
_PHASE_OF: dict[str, Phase] = {
    "llm_call": "awaiting_llm",
    "reflect": "awaiting_llm",
    "dispatch_tools": "awaiting_tools",
}
_cancelled = anyio.get_cancelled_exc_class


def checked_input(text: object, session_id: str) -> str:
    """``text`` if it can be a turn's input, else :class:`~sessions.errors.InvalidInput`.

    Every entry that starts a turn (``send``, a stream, the CLI, chat) calls this before
    anything is written: a non-``str`` input would be committed and then fail every
    later load, and a ``str`` with a lone surrogate cannot be encoded at all.  A
    subclass of ``str`` is taken as its plain value.
    """
    if type(text) is not str:
        if not isinstance(text, str):
            raise InvalidInput(session_id, f"input must be a str, not {type(text).__name__}")
        text = str.__str__(text)
    if not text.isascii():  # ASCII (nearly every input) always encodes
        try:
            text.encode()
        except UnicodeEncodeError as exc:
            raise InvalidInput(
                session_id, f"input cannot be encoded as UTF-8 at index {exc.start}: {exc.reason}"
            ) from None
    return text


@dataclass(frozen=True, slots=True)
class TurnResult:
    """How one turn ended: the reply, ``status`` (success/fail/paused), its number and
    node trace.

    ``error`` is the run's error when it failed (a :class:`~engine.errors.RunError`);
    :attr:`usage` sums the model tokens of the trace's node visits.  A ``paused`` turn
    waits at a human gate (``error``: the :class:`~engine.errors.GatePaused` with its
    ``question`` and ``choices``); nothing of it is committed until it is answered.
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

    @property
    def question(self) -> str:
        """What a paused turn asks ("" unless paused)."""
        return self.error.question if isinstance(self.error, GatePaused) else ""

    @property
    def choices(self) -> tuple[str, ...]:
        """The answers a paused turn accepts (empty unless paused)."""
        return self.error.choices if isinstance(self.error, GatePaused) else ()

    @property
    def usage(self) -> UsageTotals:
        """The turn's model usage: tokens in and out, by model (computed on demand, so
        a turn whose usage nobody reads pays nothing for it)."""
        return UsageTotals.of((self.trace,))


class TurnHost(Protocol):
    """The session fields a turn reads (identity, graph) and advances (the counters,
    ``phase``, ``trace_id``); ``closed`` refuses new turns."""

    id: str
    agent_id: str
    type: SessionType
    config: Mapping[str, Any]
    turn_graph: Graph
    turn_count: int
    updated_at: float
    trace_id: str
    phase: Phase
    closed: bool


class TurnRuntime(Protocol):
    """What a turn needs of what all sessions share (:class:`~sessions.SessionRuntime`)."""

    engine: Engine
    limits: Limits
    telemetry: Telemetry | None

    def logging(self) -> bool:
        """Whether this turn should log its nodes."""
        ...


Watch = Observer | None
"""An observer of one turn's events, or none."""


class TurnPipeline:
    """Runs one session's turns in arrival order, one at a time, and commits each.

    Its FIFO lock also serialises what must never land inside a turn: storing a
    heartbeat's result (:meth:`offer_state`), applying a compaction summary
    (:meth:`apply_summary`) and the last writes of a closing session (:meth:`drain`).
    ``host`` is the session whose counters the turns advance; the other parts are the
    session's (see :class:`~sessions.Session`).
    """

    __slots__ = (
        "_checkpoints",
        "_compactor",
        "_host",
        "_lock",
        "_log",
        "_rt",
        "_state",
        "_turn_held",
        "_unsure",
        "_waiting",
        "_writer",
    )

    def __init__(
        self,
        host: TurnHost,
        runtime: TurnRuntime,
        writer: SessionWriter,
        log: SessionLog,
        state: SessionState,
        checkpoints: Checkpoints,
        compactor: Compactor,
    ) -> None:
        self._host = host
        self._rt = runtime
        self._writer = writer
        self._log = log
        self._state = state
        self._checkpoints = checkpoints
        self._compactor = compactor
        self._lock = FifoLock()  # turns keep arrival order
        self._waiting = 0
        self._turn_held = False  # the lock is held by a turn (not a state write)
        self._unsure = False  # a commit's outcome is unknown (CommitUnknown)

    @property
    def busy(self) -> bool:
        """True while a turn runs (or a compaction applies, or session state is stored)."""
        return self._lock.locked()

    @property
    def queued(self) -> int:
        """Turns waiting behind the running one."""
        return self._waiting

    # ------------------------------------------------------------------ turns

    async def send(self, text: str, watch: Observer | None = None) -> TurnResult:
        """Run one turn with user input ``text`` (see :meth:`Session.send`); ``watch``
        observes this turn's events, :class:`TurnCommitted` last (see
        :meth:`Session.stream`)."""
        text = checked_input(text, self._host.id)
        await self._enter()
        try:
            await self._sync()
            cp = self._checkpoints.resumable
            if cp is not None:
                await self._checkpoints.abandon(cp, "superseded by a new turn")
            # SessionPaused while a question waits; a timed-out gate's turn ends first.
            timed_out = before_turn(self._host.id, self._checkpoints.paused)
            if timed_out is not None:
                await self._go_on(timed_out)
                # Once: a default that loops back to the gate pauses (and times out) again.
                refuse_paused(self._host.id, self._checkpoints.paused)
            return await self._turn(text, self._host.turn_count + 1, watch=watch)
        finally:
            await self._leave()

    async def resume(self) -> TurnResult | None:
        """Continue the turn left at the resumable checkpoint; ``None`` if none."""
        if self._checkpoints.resumable is None:
            return None
        await self._enter()
        try:
            await self._sync()
            cp = self._checkpoints.take()
            if cp is None or cp.turn != self._host.turn_count + 1:
                return None
            return await self._turn(
                cp.input, cp.turn, start_at=cp.next_node, carried=cp.context, prior=cp.trace
            )
        finally:
            await self._leave()

    async def continue_turn(self, plan: Callable[[], Continuation], watch: Watch) -> TurnResult:
        """Run the turn ``plan`` says (called under the lock; it raises when there is
        none): an answered gate's, a timed-out one's, a retried one's, watched by ``watch``."""
        await self._enter()
        try:
            await self._sync()
            return await self._go_on(plan(), watch)
        finally:
            await self._leave()

    async def _go_on(self, c: Continuation, watch: Watch = None) -> TurnResult:
        result = await self._turn(
            c.input, c.turn, start_at=c.start_at, carried=c.carried, prior=c.prior, watch=watch
        )
        if c.after is not None:
            raise c.after
        return result

    async def _turn(
        self,
        text: str,
        turn: int,
        *,
        start_at: str | None = None,
        carried: Mapping[str, Any] | None = None,
        prior: tuple[Mapping[str, Any], ...] = (),
        watch: Observer | None = None,
    ) -> TurnResult:
        """:meth:`_run` the turn, inside its span when the manager traces turns."""
        tel = self._rt.telemetry
        if tel is None:
            return await self._run(text, turn, start_at, carried, prior, watch)
        spans = tel.turn(self._host.id, turn, self._host.turn_graph, text)
        try:
            observe = spans if spans.recording else None  # unsampled: no events at all
            result = await self._run(text, turn, start_at, carried, prior, watch, observe)
        except BaseException as exc:  # cancelled or a store failure: the span still ends
            spans.end(None, exc)
            raise
        spans.end(result)
        return result

    async def _run(
        self,
        text: str,
        turn: int,
        start_at: str | None,
        carried: Mapping[str, Any] | None,
        prior: tuple[Mapping[str, Any], ...],
        watch: Observer | None,
        spans: Observer | None = None,
    ) -> TurnResult:
        """Run the graph for ``turn`` and commit it (caller holds the lock)."""
        host = self._host
        trace_id = host.trace_id = f"{host.id}:{turn}"
        host.phase = "processing"
        context = self._context(text, turn, trace_id)
        if carried:
            context = {**carried, **context}
        rt, cps = self._rt, self._checkpoints
        was = cps.paused or cps.failed
        cps.paused = cps.failed = None  # this turn supersedes them (in the store too)
        on_step = None
        # Going on from a pause or failure: it stays stored till this turn ends (see hook).
        saves = rt.limits.checkpoint and (was is None or start_at is None)
        if rt.limits.checkpoint:
            start = (start_at or host.turn_graph.start, carried or {})
            on_step = cps.hook(text, turn, trace_id, prior, start, host.turn_graph, store=saves)
        observers = self._observers(turn, trace_id)
        if spans is not None:
            observers = (*observers, spans)
        if watch is not None:
            observers = (*observers, watch)
        try:
            result = await rt.engine.run(
                host.turn_graph,
                context,
                run_id=trace_id,
                observers=observers,
                on_enter=self._on_enter,
                start_at=start_at,
                on_step=on_step,
                time_limit=rt.limits.turn_timeout,
            )
        except _cancelled():
            await cps.cancelled(was, saves)
            raise
        with cancel_scope(shield=True):  # commit and apply are one step or none
            if result.status == "paused":  # nothing committed: the pause is stored
                cp = paused_checkpoint(text, turn, trace_id, cps.graph_hash, result, prior)
                await cps.pause(cp)
                return TurnResult("", "paused", turn, result.trace, result.error, trace_id)
            committed = await self._commit(text, turn, trace_id, result, prior)
            if not committed.ok and on_step is not None:
                await cps.keep_failed(str(committed.error))
        # Only now, and never when nobody listens (the engine's observers are the
        # manager's; ``observers`` this turn's): the turn is in the store.
        if observers or rt.engine.observers:
            seq = self._log.next_seq
            event = TurnCommitted(trace_id, host.id, turn, seq, committed.status)
            notify(rt.engine.observers + observers, event)
        return committed

    def _context(self, text: str, turn: int, trace_id: str) -> dict[str, Any]:
        host, state = self._host, self._state
        return {
            "session.id": host.id,
            "session.agent_id": host.agent_id,
            "session.type": host.type,
            "session.input": text,
            "session.turn": turn,
            "session.turn_count": host.turn_count,
            "session.phase": "processing",
            "session.trace_id": trace_id,
            "session.goals": state.goals,
            "session.working_memory": state.view,
            "session.cognitive_mode": state.cognitive_mode,
            "session.history": self._log.history,
            "session.config": host.config,
        }

    def _observers(self, turn: int, trace_id: str) -> tuple[Observer, ...]:
        # No observer at all when logging is off: the engine then builds no events.
        if not self._rt.logging():
            return ()
        return (StructlogObserver(session_id=self._host.id, trace_id=trace_id, turn=turn),)

    def _on_enter(self, node: Node) -> None:
        """Track the phase as nodes start (called by the engine, allocation-free)."""
        self._host.phase = _PHASE_OF.get(node.handler, "processing")

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
            error = result.error
            await self._store_failed(turn, trace_id, trace, now, str(error))
            return TurnResult("", "fail", turn, result.trace, error, trace_id)
        ctx = result.context
        state = self._state
        try:
            # Handler values meet str() here (a reply, a goal, a tool message): one
            # that raises fails the turn like a value the store's encoder refuses.
            reply = ctx.get("reply")
            reply = "" if reply is None else str(reply)
            messages: tuple[Message, ...] = self._log.new_messages(
                text, ctx.get("turn.messages"), reply, turn, now
            )
            record = TurnRecord(turn, "success", trace_id, self._graph_hash(), trace, now)
            changes = state_changes(ctx)
            memory = pending_items(ctx.get(PENDING_KEY))  # update_memory's, for a store memory
            commit = state.commit(record, messages, changes, memory)
        except Exception as exc:
            bad = Unstorable(self._writer.url, self._host.id, "the turn's output", repr(exc))
            bad.__cause__ = exc
            return await self._unstorable(turn, trace_id, trace, now, result, bad)
        try:
            await self._store(commit, now)
        except Unstorable as exc:  # refused by the store before it wrote anything
            return await self._unstorable(turn, trace_id, trace, now, result, exc)
        if changes:
            state.apply(changes)
        state.dirty = False  # the commit carried every change applied so far
        self._compactor.maybe_start()
        return TurnResult(reply, "success", turn, result.trace, None, trace_id)

    def _graph_hash(self) -> str:
        return self._host.turn_graph.source_hash

    async def _unstorable(
        self,
        turn: int,
        trace_id: str,
        trace: tuple[Mapping[str, Any], ...],
        now: float,
        result: RunResult,
        exc: Unstorable,
    ) -> TurnResult:
        """Fail the turn whose output cannot be stored: store it as failed, apply nothing."""
        await self._store_failed(turn, trace_id, trace, now, str(exc))
        return TurnResult("", "fail", turn, result.trace, exc, trace_id)

    async def _store_failed(
        self, turn: int, trace_id: str, trace: tuple[Mapping[str, Any], ...], now: float, error: str
    ) -> None:
        """Commit a failed turn's record (no messages); without its trace if the trace
        itself cannot be stored, so the turn number is always taken."""
        record = TurnRecord(turn, "fail", trace_id, self._graph_hash(), trace, now, error=error)
        try:
            await self._store(TurnCommit(record, ()), now)
        except Unstorable:
            if not trace:
                raise
            await self._store(TurnCommit(msgspec.structs.replace(record, trace=()), ()), now)

    async def _store(self, commit: TurnCommit, now: float) -> None:
        """Commit a turn to the store, then count it and log it in memory."""
        try:
            await self._writer.append_turn(commit)
        except CommitUnknown:
            self._unsure = True  # the next turn first reads what was stored
            raise
        host = self._host
        host.turn_count = commit.record.turn
        host.updated_at = now
        self._log.append(commit.messages, commit.record)

    async def _sync(self) -> None:
        """After :class:`~sessions.errors.CommitUnknown`: catch up with the store."""
        if self._unsure:
            await _catch_up(self._host, self._log, self._writer, self._state)
            self._unsure = False

    # ------------------------------------------------------------------ the lock

    async def _enter(self) -> None:
        """Take the session lock in FIFO order, bounded by the queue size."""
        host = self._host
        if host.closed:
            raise SessionClosed(host.id, "closed")
        # A state write or a compaction holding the lock is brief and is not a turn:
        # the first turn behind it waits without counting against the queue.
        room = self._rt.limits.queue_size + (0 if self._turn_held else 1)
        if self._lock.locked() and self._waiting >= room:
            raise SessionBusy(host.id, f"{self._waiting} turns already queued")
        self._waiting += 1
        try:
            await self._lock.acquire()
        finally:
            self._waiting -= 1
        if host.closed:
            self._lock.release()
            raise SessionClosed(host.id, "closed while the turn was queued")
        self._turn_held = True

    async def _leave(self) -> None:
        """End a turn: phase idle, then :meth:`_unlock`."""
        self._host.phase = "idle"
        await self._unlock()

    async def _unlock(self) -> None:
        """Apply a heartbeat result that waited for the lock holder, store any session
        state not stored yet, release the lock.  Never raises (write failures are
        logged): it runs in ``finally`` blocks, after the turn's own outcome."""
        state = self._state
        try:
            # Checked here, not in flush(): most turns leave nothing to store, and then
            # cost no coroutine at all.  close() stores it itself.
            if (state.pending is not None or state.dirty) and not self._host.closed:
                await state.flush(self._writer)
        finally:
            self._turn_held = False  # only now: the trailing write is part of the turn
            self._lock.release()

    async def offer_state(self, ctx: Mapping[str, Any]) -> None:
        """Apply a heartbeat's result now if no turn runs, else when the turn ends.

        Applied now, it is stored at once under the lock (free, so taken without
        waiting); applied at the end of a turn, :meth:`_unlock` stores it before
        releasing the lock.
        """
        changes = state_changes(ctx)
        if not changes:
            return
        state = self._state
        if self._lock.locked():
            state.defer(changes)
        elif state.apply(changes):
            state.dirty = True
            if not self._host.closed:  # else close() stores it
                await self._lock.acquire()
                await self._unlock()

    async def apply_summary(self, summary: Message, upto_seq: int) -> bool:
        """Archive ``summary`` in the store and drop what it covers from memory (locked)."""
        await self._lock.acquire()
        try:
            if self._host.closed:
                return False
            with anyio.CancelScope(shield=True):
                await self._writer.append_summary(summary, upto_seq)
            self._log.apply_summary(summary, upto_seq)
            return True
        finally:
            await self._unlock()

    async def drain(self) -> None:
        """Wait for the running and queued turns (the session is closed: no new ones),
        then store session state not stored yet."""
        await self._lock.acquire()
        try:
            await self._state.flush(self._writer)
        finally:
            self._lock.release()


async def _catch_up(
    host: TurnHost, log: SessionLog, writer: SessionWriter, state: SessionState
) -> None:
    """After :class:`~sessions.errors.CommitUnknown`: read the session's counters
    from the store; if the unknown commit was stored, adopt it (its messages, record
    and state) so the next turn follows it instead of colliding with it."""
    store = writer.store
    meta = (await store.load(host.id, recent=0)).meta
    if meta.turn_count == host.turn_count + 1:
        count = meta.message_count - log.next_seq
        messages = await store.messages(host.id, log.next_seq, count) if count else ()
        (record,) = await store.turns(host.id, host.turn_count, 1)
        log.append(tuple(messages), record)
        host.turn_count, host.updated_at = meta.turn_count, meta.updated_at
        state.adopt(meta)
    elif meta.turn_count != host.turn_count:
        raise StoreError(
            writer.url,
            f"session {host.id!r}: the store has {meta.turn_count} turns, this "
            f"process {host.turn_count}: load the session again",
        )
