"""The store contract: what a Session asks of durable storage, and the records it passes.

Every backend (``memory:``, ``sqlite:///path.db``, ``postgresql://...``) implements
:class:`Store` and passes the same test suite.  The rules every backend keeps:

* **Append-only history.**  A turn is one transaction that appends its messages and its
  node trace and updates the session's counters; a message or trace once written is
  never rewritten.  Compaction appends a summary record; the originals stay.
* **Fencing.**  :meth:`Store.acquire` gives the caller a lease and a fencing *token*
  (the session's ``version``, bumped on every change of owner).  Every write passes the
  token and checks it in the same transaction; a stale token raises
  :class:`~engine.errors.Fenced` and writes nothing.  A live lease held by another owner
  makes ``acquire`` raise :class:`~engine.errors.SessionBusy`; an expired one is taken
  over.
* **Tamper evidence** (durable backends).  Each appended record carries
  HMAC-SHA256(key, previous record's MAC || canonical content); reads verify what they
  read, :meth:`Store.verify` verifies everything, and a mismatch raises
  :class:`~engine.errors.SessionTampered` naming the session and record.
* **Session state.**  Working memory, goals and cognitive mode ride a turn's commit,
  or change alone through :meth:`Store.update_state` (a heartbeat's result between
  turns): fenced like every write, and on the durable backends the session row is
  verified before and re-signed after, in the same transaction.
* **Bounded reads.**  :meth:`Store.load` reads metadata and the most recent messages;
  older history pages in through :meth:`Store.messages`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Protocol, runtime_checkable

import msgspec

from engine.messages import MemoryItem

__all__ = [
    "EMPTY_META",
    "Checkpoint",
    "CheckpointKind",
    "Listed",
    "LoadedSession",
    "Message",
    "Role",
    "SessionMatch",
    "SessionMeta",
    "SessionType",
    "Store",
    "TurnCommit",
    "TurnRecord",
    "keyset_page",
]

Role = Literal["user", "assistant", "tool", "system", "summary"]
SessionType = Literal["primary", "background", "delegation", "consultation"]
CheckpointKind = Literal["running", "paused", "failed"]

EMPTY_META: Mapping[str, Any] = MappingProxyType({})


class Message(msgspec.Struct, frozen=True, gc=False):
    """One message of a conversation.

    ``seq`` is the message's 0-based position in its session's log, dense and assigned
    by the session; ``turn`` is the 1-based turn that produced it (0 for messages added
    outside a turn).  ``ts`` is Unix time in seconds.

    A frozen ``msgspec`` struct: built in C (a load builds thousands) and left alone by
    the garbage collector (``gc=False``: it holds text, numbers and JSON ``meta``, which
    can never lead back to it), so a process holding many conversations does not pay
    for them in every collection.
    """

    seq: int
    role: Role
    content: str
    turn: int
    ts: float
    meta: Mapping[str, Any] = EMPTY_META


class TurnRecord(msgspec.Struct, frozen=True, gc=False):
    """One committed turn: its node trace and how it ended.

    ``trace`` holds :meth:`engine.NodeRecord.to_dict` dicts (``id``, ``handler``,
    ``status``, ``attempts``, ``duration_ms``).  A frozen ``msgspec`` struct, untracked
    by the garbage collector like :class:`Message`.
    """

    turn: int
    status: str
    trace_id: str
    graph_hash: str
    trace: tuple[Mapping[str, Any], ...]
    ts: float
    error: str | None = None


class TurnCommit(msgspec.Struct, frozen=True):
    """Everything one turn appends, committed in a single transaction.

    ``record.turn`` is the session's new ``turn_count``.  ``messages`` continue the
    session's ``seq``.  ``working_memory``, ``goals`` and ``cognitive_mode`` are the
    session's new values when the turn changed them, else ``None``.  ``memory`` is
    what the turn remembers (recall memory), written in the same transaction.
    """

    record: TurnRecord
    messages: tuple[Message, ...]
    working_memory: Mapping[str, Any] | None = None
    goals: tuple[str, ...] | None = None
    cognitive_mode: str | None = None
    memory: tuple[MemoryItem, ...] = ()


@dataclass(frozen=True, slots=True)
class SessionMatch:
    """A filtered listing: which sessions :meth:`Store.list_sessions` keeps, and where it
    starts.

    ``agent_id`` and ``type`` match exactly and ``after`` is a keyset cursor (only ids
    above it): together one range of an index ordered by id (schema 6), so a page of
    them costs its own length however rare the match.  ``text`` matches a substring of
    the id or the agent id, any case (taken literally: ``%``, ``_`` and ``\\`` are no
    wildcards); no index serves a substring, so a listing with ``text`` examines at
    most ``limit`` sessions of that range per call, a bounded read however rare.
    """

    text: str = ""
    agent_id: str | None = None
    type: str | None = None
    after: str = ""

    def matches(self, meta: SessionMeta) -> bool:
        """Whether ``meta`` passes the filter (``after`` is not checked here)."""
        text = self.text.lower()
        found = not text or text in meta.id.lower() or text in meta.agent_id.lower()
        agent_ok = self.agent_id is None or meta.agent_id == self.agent_id
        return found and agent_ok and (self.type is None or meta.type == self.type)

    def like(self) -> str:
        """``text`` as a ``LIKE … ESCAPE '\\'`` substring pattern, lower-cased."""
        escaped = self.text.lower().replace("\\", "\\\\").replace("%", "\\%")
        return "%" + escaped.replace("_", "\\_") + "%"


@dataclass(frozen=True, slots=True)
class SessionMeta:
    """A session's metadata and counters: small, read on every load.

    ``version`` is the fencing token of the current owner.  ``summary_upto`` is the
    ``seq`` of the last message covered by the latest summary (-1: none).
    ``tampered`` is set only in :meth:`Store.list_sessions` results, on a session whose
    row fails its MAC: such an entry carries the id alone (every other value would be
    unverified) and the session itself still refuses to load.
    """

    id: str
    agent_id: str = "default"
    type: SessionType = "primary"
    created_at: float = 0.0
    updated_at: float = 0.0
    turn_count: int = 0
    message_count: int = 0
    version: int = 0
    config: Mapping[str, Any] = field(default_factory=lambda: EMPTY_META)
    working_memory: Mapping[str, Any] = field(default_factory=lambda: EMPTY_META)
    goals: tuple[str, ...] = ()
    cognitive_mode: str = "default"
    summary_upto: int = -1
    tampered: bool = False


class Listed(tuple[SessionMeta, ...]):
    """A :meth:`Store.list_sessions` result.  ``scanned_to`` is the cursor to continue
    from (``SessionMatch(after=scanned_to)``): the last id listed, or with ``text`` the
    last id examined; ``None`` when the listing reached the end of its range."""

    scanned_to: str | None = None

    @classmethod
    def of(cls, metas: Sequence[SessionMeta], scanned_to: str | None) -> Listed:
        """``metas`` with the place the scan stopped."""
        out = cls(metas)
        out.scanned_to = scanned_to
        return out


def keyset_page(metas: Sequence[SessionMeta], limit: int) -> Listed:
    """A page of at most ``limit`` sessions out of ``metas``, read as one more than that:
    the extra one says more remain, so ``scanned_to`` is ``None`` exactly at the end (no
    request is spent to learn that the next page is empty)."""
    if len(metas) > limit:
        return Listed.of(metas[:limit], metas[limit - 1].id)
    return Listed.of(metas, None)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """An in-flight turn's progress, saved after each completed node (opt-in).

    On load, a ``running`` checkpoint means a process died mid-turn.  If ``graph_hash``
    still matches the session's turn graph, the turn can resume at ``next_node`` with
    ``context``; otherwise it is reported and not replayed.  ``append_turn`` deletes the
    checkpoint in the same transaction that commits the turn.

    Two more kinds ride the same record.  ``paused``: the turn waits at the human gate
    ``next_node`` for one of ``choices`` (``question``; ``default`` taken once
    ``deadline``, Unix time, passes).  ``failed``: turn ``turn`` failed (``error``) at
    ``next_node``; ``context`` is the context just before it, for ``retry_turn``.

    ``steps``: the node visits the turn has made so far, over all its runs; a run that
    goes on from the checkpoint may visit only what is left of ``max_steps``.  A record
    stored before the field existed has none and reads as 0.
    """

    turn: int
    graph_hash: str
    trace_id: str
    input: str
    last_node: str
    next_node: str
    context: Mapping[str, Any]
    trace: tuple[Mapping[str, Any], ...]
    ts: float
    kind: CheckpointKind = "running"
    question: str = ""
    choices: tuple[str, ...] = ()
    default: str | None = None
    deadline: float | None = None
    error: str | None = None
    steps: int = 0


@dataclass(frozen=True, slots=True)
class LoadedSession:
    """What :meth:`Store.load` returns: metadata, recent messages, summary, checkpoint."""

    meta: SessionMeta
    recent: tuple[Message, ...]
    summary: Message | None = None
    checkpoint: Checkpoint | None = None


@runtime_checkable
class Store(Protocol):
    """Durable storage for sessions.  All methods are async and safe to call concurrently
    for *different* sessions; calls for one session are serialised by its owner.
    """

    url: str
    """The store's URL with any password removed (safe to print)."""

    async def open(self) -> None:
        """Connect, create or migrate the schema; refuse a newer schema."""

    async def close(self) -> None:
        """Release connections.  Idempotent."""

    async def create(self, meta: SessionMeta) -> SessionMeta:
        """Create a session (``SessionExists`` if the id is taken); returns it as stored."""

    async def load(self, session_id: str, *, recent: int = 50) -> LoadedSession:
        """Metadata plus the last ``recent`` messages (``SessionNotFound``)."""

    async def exists(self, session_id: str) -> bool:
        """Whether the session exists."""

    async def acquire(self, session_id: str, owner: str, ttl: float) -> int:
        """Take (or renew) the lease for ``owner``; returns the fencing token."""

    async def renew(self, session_id: str, owner: str, token: int, ttl: float) -> None:
        """Extend a held lease; ``Fenced`` if the token is stale."""

    async def release(self, session_id: str, owner: str, token: int) -> None:
        """Give the lease up (no error if already lost)."""

    async def append_turn(self, session_id: str, commit: TurnCommit, *, token: int) -> None:
        """Append one turn atomically; ``Fenced`` (nothing written) on a stale token."""

    async def update_state(
        self,
        session_id: str,
        *,
        working_memory: Mapping[str, Any] | None = None,
        goals: tuple[str, ...] | None = None,
        cognitive_mode: str | None = None,
        token: int,
    ) -> None:
        """Replace the session's working memory, goals and/or cognitive mode (``None``:
        unchanged) without a turn; appends no record.  ``Fenced`` (nothing written) on a
        stale token; ``SessionTampered`` if the stored row does not verify."""

    async def append_summary(
        self, session_id: str, summary: Message, upto_seq: int, *, token: int
    ) -> None:
        """Record a compaction summary covering messages ``<= upto_seq``."""

    async def save_checkpoint(self, session_id: str, cp: Checkpoint, *, token: int) -> None:
        """Save (replace) the in-flight turn's checkpoint."""

    async def clear_checkpoint(self, session_id: str, *, token: int) -> None:
        """Drop the checkpoint without committing a turn (turn abandoned)."""

    async def messages(
        self, session_id: str, offset: int = 0, limit: int = 100
    ) -> tuple[Message, ...]:
        """Messages with ``offset <= seq < offset + limit``, in order, verified."""

    async def turns(
        self, session_id: str, offset: int = 0, limit: int = 100
    ) -> tuple[TurnRecord, ...]:
        """Turn records (node traces) in turn order: turns ``offset+1 ...``."""

    async def list_sessions(
        self, offset: int = 0, limit: int = 100, *, match: SessionMatch | None = None
    ) -> tuple[SessionMeta, ...]:
        """Sessions by id, metadata only (no chain is read), as a :class:`Listed`.  A
        session whose row fails its MAC is still listed, as ``SessionMeta(id,
        tampered=True)``: one edited row must not hide the rest of the store from an
        operator.

        The page is the sessions passing ``match`` (default: every session) above
        ``match.after``, the first ``offset`` of them skipped, at most ``max(1, limit)``:
        one index range scan in id order (``offset`` is walked over, so a client paging
        deep continues from ``scanned_to`` instead).  With ``match.text`` at most
        ``limit`` sessions are examined and those passing kept."""

    async def delete(self, session_id: str) -> bool:
        """Delete a session and all its records; False if it did not exist."""

    async def verify(self, session_id: str) -> int:
        """Verify the whole HMAC chain; returns the number of records checked."""

    async def export(self, session_id: str) -> dict[str, Any]:
        """A signed, portable JSON-ready document of the whole session."""

    async def import_(self, doc: Mapping[str, Any], *, replace: bool = False) -> SessionMeta:
        """Verify and store an exported document (``ImportRejected`` on any problem)."""
