"""A turn's commit: one store transaction, then the same change in memory.

The turn's result is applied only after the store commit succeeds, so memory and store
never disagree; a failed turn appends its record and no message.  A commit whose
outcome is unknown (:class:`~sessions.errors.CommitUnknown`) makes the next turn first
catch up with what the store holds (:meth:`TurnCommitter.sync`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import msgspec

from engine.outcome import NodeRecord, RunResult
from sessions.compaction import Compactor
from sessions.errors import CommitUnknown, StoreError, Unstorable
from sessions.sessionlog import SessionLog
from sessions.state import SessionState, state_changes
from sessions.store.base import Message, TurnCommit, TurnRecord
from sessions.store.recall import PENDING_KEY, pending_items
from sessions.turn_host import TurnHost
from sessions.turn_result import TurnResult
from sessions.writer import SessionWriter

__all__ = ["TurnCommitter"]

Trace = tuple[Mapping[str, Any], ...]


class TurnCommitter:
    """Commits one session's finished turns (caller holds the session lock).

    ``host`` is the session whose counters a commit advances; the other parts are the
    session's (see :class:`~sessions.Session`).
    """

    __slots__ = ("_compactor", "_host", "_log", "_state", "_unsure", "_writer")

    def __init__(
        self,
        host: TurnHost,
        writer: SessionWriter,
        log: SessionLog,
        state: SessionState,
        compactor: Compactor,
    ) -> None:
        self._host = host
        self._writer = writer
        self._log = log
        self._state = state
        self._compactor = compactor
        self._unsure = False  # a commit's outcome is unknown (CommitUnknown)

    async def commit(
        self, text: str, turn: int, trace_id: str, result: RunResult, prior: Trace
    ) -> TurnResult:
        """Append the turn to the store, then to memory; one transaction per turn."""
        now = time.time()
        trace: Trace = tuple(map(NodeRecord.to_dict, result.trace))
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
        trace: Trace,
        now: float,
        result: RunResult,
        exc: Unstorable,
    ) -> TurnResult:
        """Fail the turn whose output cannot be stored: store it as failed, apply nothing."""
        await self._store_failed(turn, trace_id, trace, now, str(exc))
        return TurnResult("", "fail", turn, result.trace, exc, trace_id)

    async def _store_failed(
        self, turn: int, trace_id: str, trace: Trace, now: float, error: str
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

    async def sync(self) -> None:
        """After :class:`~sessions.errors.CommitUnknown`: catch up with the store."""
        if self._unsure:
            await _catch_up(self._host, self._log, self._writer, self._state)
            self._unsure = False


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
