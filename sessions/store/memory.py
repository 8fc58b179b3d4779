"""The ``memory:`` store: the Store contract in one process's dicts, for tests and demos.

It keeps every rule the durable stores keep (append-only, continuity of turns and
``seq``, leases and fencing) except the HMAC chain: nothing outside the process can
edit it.  Its exports are still signed, with the configured key, loaded only when an
export or import first needs it (so ``memory:`` never creates a key file otherwise).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any

from engine.messages import MemoryItem
from sessions.errors import SessionExists, SessionNotFound, StoreError, Unstorable
from sessions.store.base import (
    Checkpoint,
    Listed,
    LoadedSession,
    Message,
    SessionMatch,
    SessionMeta,
    TurnCommit,
    TurnRecord,
    keyset_page,
)
from sessions.store.codec import canonical_json, check_commit, validate_session_id
from sessions.store.export import ImportLimits, already_exists, build_doc, parse_doc
from sessions.store.lease import Clock, check_token, grant, lease_end, not_holder
from sessions.store.memory_index import SessionIndex
from sessions.store.signing import Signer, load_key

if TYPE_CHECKING:
    from handlers.adapters.memory import KeywordMemory

__all__ = ["MemoryStore"]


class _Session:
    """One session's data.  The hot fields (version, counters, updated time, state) are
    plain attributes; the :class:`SessionMeta` view is rebuilt only when read after a
    change, so a turn costs a few attribute writes, not a 15-field record copy."""

    __slots__ = (
        "_meta",
        "changes",
        "checkpoint",
        "expires",
        "message_count",
        "messages",
        "owner",
        "summaries",
        "turn_count",
        "turns",
        "version",
    )

    def __init__(
        self,
        meta: SessionMeta,
        messages: list[Message] | None = None,
        turns: list[TurnRecord] | None = None,
        summaries: list[tuple[int, Message]] | None = None,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        self._meta = meta
        self.version, self.turn_count, self.message_count = (
            meta.version,
            meta.turn_count,
            meta.message_count,
        )
        self.changes: dict[str, Any] = {}
        self.messages = messages if messages is not None else []
        self.turns = turns if turns is not None else []
        self.summaries = summaries if summaries is not None else []
        self.checkpoint = checkpoint
        self.owner: str | None = None
        self.expires = 0.0

    @property
    def meta(self) -> SessionMeta:
        """The session's current metadata."""
        if self.changes:
            self._meta = replace(
                self._meta,
                version=self.version,
                turn_count=self.turn_count,
                message_count=self.message_count,
                **self.changes,
            )
            self.changes = {}
        elif self._meta.version != self.version:
            self._meta = replace(self._meta, version=self.version)
        return self._meta

    def set_state(
        self,
        working_memory: Mapping[str, Any] | None,
        goals: tuple[str, ...] | None,
        cognitive_mode: str | None,
    ) -> None:
        """Record new session state (``None``: unchanged) and a fresh ``updated_at``."""
        changes = self.changes
        changes["updated_at"] = time.time()
        if working_memory is not None:
            changes["working_memory"] = MappingProxyType(dict(working_memory))
        if goals is not None:
            changes["goals"] = tuple(goals)
        if cognitive_mode is not None:
            changes["cognitive_mode"] = cognitive_mode


class MemoryStore:
    """A :class:`~sessions.store.base.Store` held in memory (lost when the process ends)."""

    def __init__(
        self,
        url: str = "memory:",
        *,
        secret: bytes | str | None = None,
        limits: ImportLimits | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.url = url
        self._memory: KeywordMemory | None = None
        self._clock = clock
        """The time leases are measured by (tests pass a :class:`ManualClock`)."""
        self._secret = secret
        self._limits = limits or ImportLimits()
        self._signer: Signer | None = None
        self._sessions: dict[str, _Session] = {}
        self._index = SessionIndex()
        self._fences: dict[str, int] = {}
        """The last version of each deleted session id (see ``delete``)."""

    is_open = True
    """Always: there is nothing to connect to."""

    async def open(self) -> None:
        """Nothing to connect to."""

    async def close(self) -> None:
        """Nothing to release; the data stays until the object is dropped."""

    async def __aenter__(self) -> MemoryStore:
        await self.open()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def memory(self) -> KeywordMemory:
        """The recall memory, in this process like everything else here (made on first
        use: a store that never recalls loads no handler code)."""
        if self._memory is None:
            from handlers.adapters.memory import KeywordMemory

            self._memory = KeywordMemory()
        return self._memory

    def _get(self, session_id: str) -> _Session:
        # Only valid ids are ever stored, so a hit needs no validation; a miss is
        # validated for the right error (a bad id, not "no such session").
        s = self._sessions.get(session_id) if type(session_id) is str else None
        if s is None:
            session_id = validate_session_id(session_id)
            s = self._sessions.get(session_id)  # a str subclass, as its plain value
            if s is None:
                raise SessionNotFound(session_id, "no such session")
        return s

    def _fenced(self, session_id: str, token: int) -> _Session:
        s = self._get(session_id)
        check_token(self.url, session_id, token, s.version)
        return s

    @property
    def _sign(self) -> Signer:
        if self._signer is None:
            self._signer = Signer(load_key(self._secret))
        return self._signer

    # ------------------------------------------------------------------ sessions

    async def create(self, meta: SessionMeta) -> SessionMeta:
        """Create a session; ``SessionExists`` if the id is taken."""
        if validate_session_id(meta.id) in self._sessions:
            raise SessionExists(meta.id, "a session with this id already exists")
        now = time.time()
        stored = replace(
            meta,
            created_at=meta.created_at or now,
            updated_at=now,
            turn_count=0,
            message_count=0,
            version=self._fences.get(meta.id, -1) + 1,
            summary_upto=-1,
            config=MappingProxyType(dict(meta.config)),
            working_memory=MappingProxyType(dict(meta.working_memory)),
        )
        self._sessions[meta.id] = _Session(stored)
        self._index.add(meta.id, meta.agent_id, meta.type)
        return stored

    async def exists(self, session_id: str) -> bool:
        """Whether the session exists."""
        return validate_session_id(session_id) in self._sessions

    async def list_sessions(
        self, offset: int = 0, limit: int = 100, *, match: SessionMatch | None = None
    ) -> tuple[SessionMeta, ...]:
        """Sessions by id (never tampered: nothing outside the process can edit them),
        paged over :class:`SessionIndex`.  See :meth:`Store.list_sessions`."""
        match = match or SessionMatch()
        n = max(1, limit)
        if not match.text:
            ids = self._index.page(match, offset, n + 1)
            return keyset_page([self._sessions[i].meta for i in ids], n)
        window = self._index.page(match, offset, n)
        metas = [m for m in (self._sessions[i].meta for i in window) if match.matches(m)]
        return Listed.of(metas, window[-1] if len(window) == n else None)

    async def delete(self, session_id: str) -> bool:
        """Delete a session; False if it did not exist.  Its last version is kept: a
        session made again under the id starts above it (no token is issued twice)."""
        s = self._sessions.pop(validate_session_id(session_id), None)
        if s is not None:
            self._index.remove(session_id, s.meta.agent_id, s.meta.type)
            if self._memory is not None:
                self._memory.forget(session_id)
            self._fences[session_id] = max(self._fences.get(session_id, -1), s.version)
        return s is not None

    # ------------------------------------------------------------------ leases

    async def acquire(self, session_id: str, owner: str, ttl: float) -> int:
        """Take or renew the lease; ``SessionBusy`` if another owner's lease is live."""
        s = self._get(session_id)
        s.version, s.expires = grant(
            session_id, s.version, s.owner, s.expires, owner, ttl, self._clock()
        )
        s.owner = owner
        return s.version

    async def renew(self, session_id: str, owner: str, token: int, ttl: float) -> None:
        """Extend the lease; ``Fenced`` if ``token`` is stale."""
        s = self._fenced(session_id, token)
        if s.owner != owner:
            raise not_holder(self.url, session_id, token)
        s.expires = lease_end(self._clock, ttl)

    async def release(self, session_id: str, owner: str, token: int) -> None:
        """Give the lease up; its token goes stale.  No error if already lost."""
        s = self._sessions.get(validate_session_id(session_id))
        if s is not None and s.version == token and s.owner == owner:
            s.owner, s.expires = None, 0.0
            s.version = token + 1

    # ------------------------------------------------------------------ writes

    async def append_turn(self, session_id: str, commit: TurnCommit, *, token: int) -> None:
        """Append one turn; ``Fenced`` (nothing written) on a stale token."""
        s = self._fenced(session_id, token)
        if commit.record.turn != s.turn_count + 1:
            raise StoreError(
                self.url,
                f"session {session_id!r}: turn {commit.record.turn} "
                f"does not follow turn_count {s.turn_count}",
            )
        for i, msg in enumerate(commit.messages):
            if msg.seq != s.message_count + i:
                raise StoreError(
                    self.url,
                    f"session {session_id!r}: message seq {msg.seq} "
                    f"does not follow message_count {s.message_count + i}",
                )
        check_commit(commit, self.url, session_id)  # refused here as by the durable stores
        s.messages.extend(commit.messages)
        s.turns.append(commit.record)
        s.checkpoint = None
        s.turn_count = commit.record.turn
        s.message_count += len(commit.messages)
        s.set_state(commit.working_memory, commit.goals, commit.cognitive_mode or None)
        if commit.memory:
            await self.memory.remember(commit.memory, session_id=session_id)

    async def update_state(
        self,
        session_id: str,
        *,
        working_memory: Mapping[str, Any] | None = None,
        goals: tuple[str, ...] | None = None,
        cognitive_mode: str | None = None,
        token: int,
    ) -> None:
        """Replace working memory, goals and/or mode (``None``: unchanged); fenced."""
        s = self._fenced(session_id, token)
        try:  # what a durable store could not write is refused here too
            canonical_json({"m": working_memory, "g": goals, "c": cognitive_mode})
        except (TypeError, ValueError) as exc:
            raise Unstorable(self.url, session_id, "session state", str(exc)) from exc
        s.set_state(working_memory, goals, cognitive_mode)

    async def append_summary(
        self, session_id: str, summary: Message, upto_seq: int, *, token: int
    ) -> None:
        """Record a compaction summary covering messages ``<= upto_seq``."""
        s = self._fenced(session_id, token)
        if not -1 <= upto_seq < s.message_count:
            raise StoreError(
                self.url,
                f"session {session_id!r}: summary upto_seq {upto_seq} "
                f"is outside the {s.message_count} messages",
            )
        s.summaries.append((upto_seq, summary))
        s.changes.update(summary_upto=upto_seq, updated_at=time.time())

    async def save_checkpoint(self, session_id: str, cp: Checkpoint, *, token: int) -> None:
        """Save (replace) the in-flight turn's checkpoint."""
        self._fenced(session_id, token).checkpoint = cp

    async def clear_checkpoint(self, session_id: str, *, token: int) -> None:
        """Drop the checkpoint."""
        self._fenced(session_id, token).checkpoint = None

    # ------------------------------------------------------------------ recall memory

    async def recall_memory(
        self, query: str, *, session_id: str, agent_id: str | None = None, limit: int = 5
    ) -> tuple[MemoryItem, ...]:
        """Up to ``limit`` items for ``query`` by keyword overlap
        (:class:`~handlers.adapters.memory.KeywordMemory`): the session's, or with
        ``agent_id`` the best of each of that agent's sessions, merged."""
        if agent_id is None:  # KeywordMemory gives a tuple; an unknown id has no memory
            return await self.memory.recall(query, session_id=session_id, limit=limit)  # type: ignore[return-value]
        found: list[MemoryItem] = []
        for sid, s in self._sessions.items():
            if s.meta.agent_id == agent_id:
                found.extend(await self.memory.recall(query, session_id=sid, limit=limit))
        return tuple(sorted(found, key=lambda item: -item.score)[: max(0, limit)])

    async def remember_memory(self, session_id: str, items: Sequence[MemoryItem]) -> None:
        """Remember ``items`` for the session now, outside a turn."""
        self._get(session_id)
        await self.memory.remember(items, session_id=session_id)

    # ------------------------------------------------------------------ reads

    async def load(self, session_id: str, *, recent: int = 50) -> LoadedSession:
        """Metadata, the last ``recent`` messages, latest summary and checkpoint."""
        s = self._get(session_id)
        tail = tuple(s.messages[max(0, len(s.messages) - recent) :]) if recent > 0 else ()
        summary = s.summaries[-1][1] if s.summaries else None
        return LoadedSession(s.meta, tail, summary, s.checkpoint)

    async def messages(
        self, session_id: str, offset: int = 0, limit: int = 100
    ) -> tuple[Message, ...]:
        """Messages ``offset <= seq < offset + limit``."""
        offset, limit = max(0, offset), max(0, limit)
        return tuple(self._get(session_id).messages[offset : offset + limit])

    async def turns(
        self, session_id: str, offset: int = 0, limit: int = 100
    ) -> tuple[TurnRecord, ...]:
        """Turn records ``offset+1 ... offset+limit``."""
        offset, limit = max(0, offset), max(0, limit)
        return tuple(self._get(session_id).turns[offset : offset + limit])

    async def verify(self, session_id: str) -> int:
        """Count the records (memory is not signed: nothing outside can edit it)."""
        s = self._get(session_id)
        return len(s.messages) + len(s.turns) + len(s.summaries)

    async def export(self, session_id: str) -> dict[str, Any]:
        """The signed export document of the whole session."""
        s = self._get(session_id)
        memory = self._memory.items(session_id) if self._memory is not None else ()
        return build_doc(s.meta, s.messages, s.turns, s.summaries, s.checkpoint, self._sign, memory)

    async def import_(self, doc: Mapping[str, Any], *, replace: bool = False) -> SessionMeta:
        """Verify ``doc`` completely, then store it (``ImportRejected``)."""
        plan = parse_doc(doc, self._sign, self._limits, self.url)
        old = self._sessions.get(plan.meta.id)
        if old is not None and not replace:
            raise already_exists(self.url, plan.meta.id)
        version = self._fences.get(plan.meta.id, -1) + 1 if old is None else old.version + 1
        meta = _replace(plan.meta, version)
        if old is not None:
            self._index.remove(meta.id, old.meta.agent_id, old.meta.type)
            if self._memory is not None:
                self._memory.forget(meta.id)  # a replaced session remembers nothing of the old
        if plan.memory:
            await self.memory.remember(plan.memory, session_id=meta.id)
        self._sessions[meta.id] = _Session(
            meta, list(plan.messages), list(plan.turns), list(plan.summaries), plan.checkpoint
        )
        self._index.add(meta.id, meta.agent_id, meta.type)
        return meta


def _replace(meta: SessionMeta, version: int) -> SessionMeta:
    return replace(meta, version=version)
