"""The turn pipeline of one session: lock, context, run, checkpoint, commit.

::

    lock (FIFO) -> build turn values -> Engine.run(turn_graph) -> one store commit
                -> apply messages / memory / counters -> phase idle -> TurnResult

Its parts, a module each: the FIFO lock and the writes it orders
(:mod:`sessions.turn_lock`), the commit (:mod:`sessions.turn_commit`), the run's
observers and hooks (:mod:`sessions.turn_observers`), the input check
(:mod:`sessions.turn_input`) and the result (:mod:`sessions.turn_result`).  This module
puts them in order.  A cancelled turn re-raises after the session is idle again.
Per-turn cost does not grow with history: handlers see the session log's live
read-only :class:`~sessions.history.HistoryView`, never a copy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import anyio

from engine.events import Observer
from engine.scopes import cancel_scope
from sessions.checkpoints import Checkpoints
from sessions.compaction import Compactor
from sessions.gates import Continuation, before_turn, paused_checkpoint, refuse_paused
from sessions.sessionlog import SessionLog
from sessions.state import SessionState
from sessions.store.base import Message
from sessions.turn_commit import TurnCommitter
from sessions.turn_host import Phase, TurnHost, TurnRuntime, Watch
from sessions.turn_input import checked_input
from sessions.turn_lock import TurnLock
from sessions.turn_observers import TurnHooks
from sessions.turn_result import TurnResult
from sessions.writer import SessionWriter

__all__ = [
    "Phase",
    "TurnHost",
    "TurnPipeline",
    "TurnResult",
    "TurnRuntime",
    "checked_input",
]

_cancelled = anyio.get_cancelled_exc_class


class TurnPipeline:
    """Runs one session's turns in arrival order, one at a time, and commits each.

    Its FIFO lock (:class:`~sessions.turn_lock.TurnLock`) also serialises what must
    never land inside a turn: storing a heartbeat's result (:meth:`offer_state`),
    applying a compaction summary (:meth:`apply_summary`) and the last writes of a
    closing session (:meth:`drain`).  ``host`` holds the counters the turns advance
    (:class:`~sessions.turn_host.SessionCore`); ``lock`` is the session's
    :class:`~sessions.turn_lock.TurnLock` (its compactor applies summaries through it);
    the other parts are the session's too (see :class:`~sessions.Session`).
    """

    __slots__ = (
        "__weakref__",  # tests check a closed session's pipeline is freed
        "_checkpoints",
        "_committer",
        "_hooks",
        "_host",
        "_lock",
        "_log",
        "_rt",
        "_state",
    )

    def __init__(
        self,
        host: TurnHost,
        runtime: TurnRuntime,
        lock: TurnLock,
        writer: SessionWriter,
        log: SessionLog,
        state: SessionState,
        checkpoints: Checkpoints,
        compactor: Compactor,
    ) -> None:
        self._host = host
        self._rt = runtime
        self._log = log
        self._state = state
        self._checkpoints = checkpoints
        self._lock = lock
        self._committer = TurnCommitter(host, writer, log, state, compactor)
        self._hooks = TurnHooks(host, runtime, log)

    @property
    def busy(self) -> bool:
        """True while a turn runs (or a compaction applies, or session state is stored)."""
        return self._lock.busy

    @property
    def queued(self) -> int:
        """Turns waiting behind the running one."""
        return self._lock.queued

    async def offer_state(self, ctx: Mapping[str, Any]) -> None:
        """Apply a heartbeat's result now if no turn runs, else when the turn ends
        (:meth:`TurnLock.offer_state <sessions.turn_lock.TurnLock.offer_state>`)."""
        await self._lock.offer_state(ctx)

    async def apply_summary(self, summary: Message, upto_seq: int) -> bool:
        """Archive ``summary`` in the store and drop what it covers from memory (locked)."""
        return await self._lock.apply_summary(summary, upto_seq)

    async def drain(self) -> None:
        """Wait for the running and queued turns (the session is closed: no new ones),
        then store session state not stored yet."""
        await self._lock.drain()

    # ------------------------------------------------------------------ turns

    async def send(self, text: str, watch: Observer | None = None) -> TurnResult:
        """Run one turn with user input ``text`` (see :meth:`Session.send`); ``watch``
        observes this turn's events, :class:`~engine.events.TurnCommitted` last (see
        :meth:`Session.stream`)."""
        text = checked_input(text, self._host.id)
        await self._lock.enter()
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
            return await self._turn(text, self._host.turn_count + 1, None, watch)
        finally:
            await self._lock.leave()

    async def resume(self) -> TurnResult | None:
        """Continue the turn left at the resumable checkpoint; ``None`` if none."""
        if self._checkpoints.resumable is None:
            return None
        await self._lock.enter()
        try:
            await self._sync()
            cp = self._checkpoints.take()
            if cp is None or cp.turn != self._host.turn_count + 1:
                return None
            c = Continuation(cp.input, cp.turn, cp.next_node, cp.context, cp.trace, steps=cp.steps)
            return await self._go_on(c)
        finally:
            await self._lock.leave()

    async def continue_turn(self, plan: Callable[[], Continuation], watch: Watch) -> TurnResult:
        """Run the turn ``plan`` says (called under the lock; it raises when there is
        none): an answered gate's, a timed-out one's, a retried one's, watched by ``watch``."""
        await self._lock.enter()
        try:
            await self._sync()
            return await self._go_on(plan(), watch)
        finally:
            await self._lock.leave()

    async def _sync(self) -> None:
        """Catch up after a commit of unknown outcome (a pause or failure it did
        commit past is dropped)."""
        await self._committer.sync()
        self._checkpoints.forget_stale(self._host.turn_count)

    async def _go_on(self, c: Continuation, watch: Watch = None) -> TurnResult:
        result = await self._turn(c.input, c.turn, c, watch)
        if c.after is not None:
            raise c.after
        return result

    async def _turn(
        self, text: str, turn: int, going_on: Continuation | None, watch: Watch
    ) -> TurnResult:
        """:meth:`_run` the turn (from its start, or ``going_on`` from where an earlier
        run of it stopped), inside its span when the manager traces turns."""
        tel = self._rt.telemetry
        if tel is None:
            return await self._run(text, turn, going_on, watch)
        spans = tel.turn(self._host.id, turn, self._host.turn_graph, text)
        try:
            observe = spans if spans.recording else None  # unsampled: no events at all
            result = await self._run(text, turn, going_on, watch, observe)
        except BaseException as exc:  # cancelled or a store failure: the span still ends
            spans.end(None, exc)
            raise
        spans.end(result)
        return result

    async def _run(
        self,
        text: str,
        turn: int,
        going_on: Continuation | None,
        watch: Watch,
        spans: Observer | None = None,
    ) -> TurnResult:
        """Run the graph for ``turn`` and commit it (caller holds the lock)."""
        start_at: str | None = None
        carried: Mapping[str, Any] | None = None
        prior: tuple[Mapping[str, Any], ...] = ()
        used = 0  # node visits of the turn's earlier runs: all its runs share max_steps
        if going_on is not None:
            start_at, carried = going_on.start_at, going_on.carried
            prior, used = going_on.prior, going_on.steps
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
            on_step = cps.hook(
                text, turn, trace_id, prior, start, host.turn_graph, store=saves, steps=used
            )
        hooks = self._hooks
        observers = hooks.observers(turn, trace_id, spans, watch)
        try:
            result = await rt.engine.run(
                host.turn_graph,
                context,
                run_id=trace_id,
                observers=observers,
                on_enter=hooks.on_enter,
                start_at=start_at,
                on_step=on_step,
                time_limit=rt.limits.turn_timeout,
                steps_used=used,
            )
        except _cancelled():
            await cps.cancelled(was, saves)
            raise
        with cancel_scope(shield=True):  # commit and apply are one step or none
            if result.status == "paused":  # nothing committed: the pause is stored
                steps = used + len(result.trace)
                cp = paused_checkpoint(text, turn, trace_id, cps.graph_hash, result, prior, steps)
                await cps.pause(cp)
                return TurnResult("", "paused", turn, result.trace, result.error, trace_id)
            try:
                committed = await self._committer.commit(text, turn, trace_id, result, prior)
            except BaseException:
                if not saves:  # the store still holds the pause (or failure): keep it
                    cps.restore(was)
                raise
            if not committed.ok and on_step is not None:
                await cps.keep_failed(str(committed.error), used + len(result.trace))
        # Only now, and never when nobody listens: the turn is in the store.
        hooks.committed(observers, trace_id, turn, committed.status)
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
