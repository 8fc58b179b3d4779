"""A session's writes to its store, each under the fencing token of this process's lease.

Every part of a session that writes (the turn commit, a state update, a compaction
summary, a checkpoint) goes through one :class:`SessionWriter`, so one place decides
what a :class:`~sessions.errors.Fenced` write means: another process owns the session
now, anything more written here would be lost, so the session is told (it closes) and
the error propagates.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from sessions.errors import Fenced
from sessions.store.base import Checkpoint, Message, Store, TurnCommit

__all__ = ["SessionWriter"]


class SessionWriter:
    """The fenced store writes of one session (``token``: its lease's fencing token).

    ``on_fenced`` is called once per fenced write, before the error is re-raised.
    """

    __slots__ = ("_on_fenced", "_store", "session_id", "token")

    def __init__(
        self, store: Store, session_id: str, token: int, on_fenced: Callable[[Fenced], None]
    ) -> None:
        self._store = store
        self.session_id = session_id
        self.token = token
        self._on_fenced = on_fenced

    @property
    def store(self) -> Store:
        """The store written to (a session reads it to learn an unknown commit's fate)."""
        return self._store

    @property
    def url(self) -> str:
        """The store's URL (no password), for errors about this session's writes."""
        return self._store.url

    async def append_turn(self, commit: TurnCommit) -> None:
        """Commit one turn (one store transaction)."""
        # The one write every turn makes: guarded inline, a call fewer than _guard.
        try:
            await self._store.append_turn(self.session_id, commit, token=self.token)
        except Fenced as exc:
            self._on_fenced(exc)
            raise

    async def update_state(
        self, working_memory: Mapping[str, Any], goals: tuple[str, ...], cognitive_mode: str
    ) -> None:
        """Store working memory, goals and cognitive mode on their own."""
        write = self._store.update_state(
            self.session_id,
            working_memory=dict(working_memory),
            goals=goals,
            cognitive_mode=cognitive_mode,
            token=self.token,
        )
        await self._guard(write)

    async def append_summary(self, summary: Message, upto_seq: int) -> None:
        """Archive a compaction summary covering messages up to ``upto_seq``."""
        write = self._store.append_summary(self.session_id, summary, upto_seq, token=self.token)
        await self._guard(write)

    async def save_checkpoint(self, cp: Checkpoint) -> None:
        """Save the in-flight turn."""
        await self._guard(self._store.save_checkpoint(self.session_id, cp, token=self.token))

    async def clear_checkpoint(self) -> None:
        """Delete the in-flight turn's checkpoint."""
        await self._guard(self._store.clear_checkpoint(self.session_id, token=self.token))

    async def _guard(self, write: Awaitable[None]) -> None:
        """Await a store write; on :class:`Fenced`, tell the session, re-raise."""
        try:
            await write
        except Fenced as exc:
            self._on_fenced(exc)
            raise
