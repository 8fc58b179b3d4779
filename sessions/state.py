"""A session's state: working memory, goals and cognitive mode, and how they reach the store.

A turn's graph changes the state through its context (``memory.working``, ``goals``,
``cognitive_mode``); the changes ride the turn's own commit.  A heartbeat's result
changes it between turns: arriving while the session lock is held, it waits in
:attr:`SessionState.pending` for the holder; applied, it is *dirty* until stored.

It is stored on its own (:meth:`~sessions.store.base.Store.update_state`, fenced like a
commit) under the session lock, so it never lands between a turn's commit and its
apply: applied while idle, it is written by a background task at once; applied when a
turn (or compaction) releases the lock, it is written before the lock is released; a
result not yet written is written when the session closes.  A failed write is logged
(``session.state_not_stored``) and retried with the next commit or at close; a process
that dies in between loses only that one result.  The turn pipeline decides when (it
holds the lock); this module decides what.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import anyio

from engine.logs import log
from engine.messages import MemoryItem
from sessions.errors import Fenced
from sessions.store.base import Message, SessionMeta, TurnCommit, TurnRecord
from sessions.writer import SessionWriter

__all__ = ["SessionState", "merge_memory", "state_changes"]

StateChanges = dict[str, Any]
"""What a run's context sets: any of ``memory.working``, ``goals``, ``cognitive_mode``."""


def state_changes(ctx: Mapping[str, Any]) -> StateChanges:
    """The session-state keys a run's context sets (working memory, goals, mode)."""
    out: StateChanges = {}
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


def merge_memory(target: dict[str, Any], updates: Mapping[str, Any] | None) -> None:
    """Merge working-memory ``updates`` into ``target``; a ``None`` value deletes the key."""
    if not updates:
        return
    for k, v in updates.items():
        if v is None:
            target.pop(k, None)
        else:
            target[k] = v


class SessionState:
    """Working memory, goals and cognitive mode of one session, and what is not stored yet.

    ``working_memory`` is one dict for the session's life (changed in place; ``view`` is
    its read-only face handlers see).  ``dirty``: applied but not stored.  ``pending``:
    a heartbeat result waiting for the lock holder to apply it.
    """

    __slots__ = ("cognitive_mode", "dirty", "goals", "pending", "view", "working_memory")

    def __init__(self, meta: SessionMeta) -> None:
        self.working_memory: dict[str, Any] = dict(meta.working_memory)
        self.view = MappingProxyType(self.working_memory)
        self.goals: tuple[str, ...] = tuple(meta.goals)
        self.cognitive_mode = meta.cognitive_mode
        self.dirty = False
        self.pending: StateChanges | None = None

    def adopt(self, meta: SessionMeta) -> None:
        """Take working memory, goals and mode as the store has them (a turn committed
        without this process learning of it); nothing is left unstored."""
        self.working_memory.clear()  # the same dict: handlers hold its view
        self.working_memory.update(meta.working_memory)
        self.goals = tuple(meta.goals)
        self.cognitive_mode = meta.cognitive_mode
        self.dirty = False

    def commit(
        self,
        record: TurnRecord,
        messages: tuple[Message, ...],
        changes: Mapping[str, Any],
        memory: tuple[MemoryItem, ...] = (),
    ) -> TurnCommit:
        """The store commit of a turn: its record, messages and recall ``memory``, plus
        the state when the turn changed it or a change is not stored yet (so once it is
        stored, nothing applied is unstored: the caller applies ``changes`` and clears
        :attr:`dirty`)."""
        if not changes and not self.dirty:
            return TurnCommit(record, messages, memory=memory)
        wm: dict[str, Any] = dict(self.working_memory)
        merge_memory(wm, changes.get("memory.working"))
        return TurnCommit(
            record,
            messages,
            working_memory=wm,
            goals=changes.get("goals", self.goals),
            cognitive_mode=changes.get("cognitive_mode", self.cognitive_mode),
            memory=memory,
        )

    def apply(self, changes: Mapping[str, Any]) -> bool:
        """Apply ``changes`` in memory; whether anything actually changed (a heartbeat
        repeating the current mode needs no store write)."""
        before = (dict(self.working_memory), self.goals, self.cognitive_mode)
        merge_memory(self.working_memory, changes.get("memory.working"))
        if "goals" in changes:
            self.goals = changes["goals"]
        if "cognitive_mode" in changes:
            self.cognitive_mode = changes["cognitive_mode"]
        return before != (self.working_memory, self.goals, self.cognitive_mode)

    def defer(self, changes: StateChanges) -> None:
        """Keep a heartbeat result for the lock holder, merged into any that waits."""
        pending = self.pending or {}
        if "memory.working" in pending and "memory.working" in changes:
            changes["memory.working"] = {**pending["memory.working"], **changes["memory.working"]}
        self.pending = {**pending, **changes}

    async def flush(self, writer: SessionWriter) -> None:
        """Apply a waiting heartbeat result and store dirty state (the caller holds the
        session lock), again while a heartbeat finished during the write left one waiting."""
        self._take_pending()
        while self.dirty:
            await self._store(writer)
            if self.pending is None:
                return
            self._take_pending()

    def _take_pending(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            if self.apply(pending):
                self.dirty = True

    async def _store(self, writer: SessionWriter) -> None:
        """Write working memory, goals and mode alone (the caller holds the lock).

        Shielded: once started, the write finishes.  ``Fenced`` closes the session (the
        writer tells it); any other failure is logged and the state stays dirty, to ride
        the next commit or the session's close.
        """
        try:
            with anyio.CancelScope(shield=True):
                await writer.update_state(self.working_memory, self.goals, self.cognitive_mode)
        except Fenced:
            return  # the session is closed and its manager told; the result is lost
        except Exception as exc:
            log(
                "warning",
                "session.state_not_stored",
                session_id=writer.session_id,
                error=f"{type(exc).__name__}: {exc}",
            )
            return
        self.dirty = False
