"""PostgreSQL group commit: concurrent turns of different sessions in one statement.

The store remembers the session row it last wrote (and that row version's ``xmin``),
so the next turn of that session needs no read: :class:`GroupWriter` plans it on that
row and queues it in :class:`GroupCommit`, which writes the turns queued together as
one statement (:data:`GROUP_SQL`), one transaction: the server parses, commits and
flushes WAL once for the group instead of once a turn.  A turn whose row does not
match writes nothing and its caller takes the store's locked, verified path.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import psycopg

from engine.messages import MemoryItem
from sessions.errors import StoreError
from sessions.store.base import TurnCommit
from sessions.store.durable import WRITTEN_COLUMNS, StateRow, plan_turn
from sessions.store.pg_memory import group_sql, memory_params
from sessions.store.signing import Row, Signer
from sessions.store.witness import Witness

__all__ = [
    "GROUP_MAX",
    "GROUP_MEMORY_SQL",
    "GROUP_SQL",
    "GroupCommit",
    "GroupTurn",
    "GroupWriter",
    "WrittenRows",
]

Conn = psycopg.AsyncConnection[Any]
GROUP_MAX: Final = 256  # turns in one group commit: bounds one statement's size
_WRITTEN_MAX: Final = 10_000  # sessions whose last written row is remembered

GROUP_SQL: Final = (
    "WITH v AS (SELECT * FROM unnest(%b::text[], %b::bigint[], %b::text[], %b::bytea[], "
    "%b::float8[], %b::integer[], %b::integer[], %b::integer[], %b::bytea[], %b::text[], "
    "%b::text[], %b::text[], %b::integer[], %b::bytea[]) AS v(id, token, old_xmin, old_mac, "
    "updated_at, turn_count, message_count, record_count, head_mac, working_memory, goals, "
    "cognitive_mode, summary_upto, state_mac)), "
    "upd AS (UPDATE sessions s SET updated_at=v.updated_at, turn_count=v.turn_count, "
    "message_count=v.message_count, record_count=v.record_count, head_mac=v.head_mac, "
    "working_memory=v.working_memory, goals=v.goals, cognitive_mode=v.cognitive_mode, "
    "summary_upto=v.summary_upto, state_mac=v.state_mac FROM v WHERE s.id=v.id "
    "AND s.version=v.token AND s.xmin=v.old_xmin::xid AND s.state_mac=v.old_mac "
    "RETURNING s.id, s.xmin::text), "
    "ins AS (INSERT INTO records SELECT r.* FROM unnest(%b::text[], %b::integer[], "
    "%b::text[], %b::integer[], %b::text[], %b::bytea[], %b::bytea[]) "
    "AS r(session_id, rseq, kind, key, body, prev_mac, mac) "
    "WHERE r.session_id IN (SELECT id FROM upd)), "
    "del AS (DELETE FROM checkpoints WHERE session_id IN (SELECT id FROM upd)) "
    "SELECT id, xmin FROM upd"
)
"""The group commit: turns of different sessions, each fenced on its own.

A turn's row is updated only if it still has the caller's token *and* is the very row
version this store wrote last (``xmin``, and its state MAC): any other write since
(another owner, a lease change, an edit by hand) makes it match nothing, so the store
never re-signs a row it has not verified.  Only the sessions the ``UPDATE`` returned
get their records inserted and checkpoint deleted: a turn that does not match writes
nothing and cannot affect the others.  The group's connections wait at most 100 ms for
a row lock held elsewhere (:func:`set_up_group_connection`), so one busy session
cannot hold up the group for long.
"""

GROUP_MEMORY_SQL: Final = group_sql(GROUP_SQL)
""":data:`GROUP_SQL` that also remembers the turns' recall memory (same transaction)."""


@dataclass(slots=True, eq=False)
class GroupTurn:
    """One turn waiting for the group commit.

    ``state`` is the session row after the turn (planned from the row this store wrote
    last, whose ``xmin`` and state MAC are ``old_xmin`` / ``old_mac``).  ``done`` is
    None while pending, then True (committed, the row's new version is ``xmin``) or
    False (nothing written: the caller takes the locked path).  ``lead`` marks the
    caller that runs the next group.
    """

    state: StateRow
    rows: list[Row]
    token: int
    old_xmin: str
    old_mac: bytes
    wake: anyio.Event = field(default_factory=anyio.Event)
    """Set when the turn is finished or its caller is given the lead."""
    finished: anyio.Event = field(default_factory=anyio.Event)
    """Set when the turn is finished (a leader whose turn another leader took waits)."""
    done: bool | None = None
    xmin: str = ""
    lead: bool = False
    memory: tuple[MemoryItem, ...] = ()


def group_params(group: list[GroupTurn]) -> tuple[Any, ...]:
    """:data:`GROUP_SQL`'s parameters: the sessions' columns, then the records'."""
    states = [(t.state, t.token, t.old_xmin, t.old_mac) for t in group]
    rows = [(t.state.id, *r) for t in group for r in t.rows]
    return (
        [st.id for st, *_ in states],
        [token for _, token, _, _ in states],
        [xmin for _, _, xmin, _ in states],
        [mac for *_, mac in states],
        *([getattr(st, name) for st, *_ in states] for name in WRITTEN_COLUMNS),
        *(list(col) for col in zip(*rows, strict=True)),
    )


def _statement(group: list[GroupTurn]) -> tuple[str, tuple[Any, ...]]:
    """The group's statement and parameters, with its memory insert if any turn has one."""
    if not any(t.memory for t in group):
        return GROUP_SQL, group_params(group)
    remembered = [(t.state.id, t.state.agent_id, t.memory) for t in group]
    return GROUP_MEMORY_SQL, (*group_params(group), *memory_params(remembered))


class GroupCommit:
    """Turns of different sessions committed together, without a background task.

    A caller whose turn is queued while fewer than ``max_groups`` groups are running
    leads: it takes the queue (at most ``max_size`` turns, one per session) and runs it
    as one statement; the others wait.  A leader that finishes hands the lead to the
    first turn still queued, so nobody waits for a timer and a lone turn goes at once.
    A caller cancelled while queued leaves the queue (nothing written); a leader
    cancelled while its group runs cancels the statement, and the group's other turns
    are refused (not lost): their callers retry them on the locked path.
    """

    def __init__(
        self, run: Callable[[list[GroupTurn]], Awaitable[None]], max_groups: int, max_size: int
    ) -> None:
        self._run = run
        self._max_groups = max_groups
        self._max_size = max_size
        self._queue: deque[GroupTurn] = deque()
        self._leaders = 0

    @property
    def enabled(self) -> bool:
        """Whether turns may be grouped at all (``max_groups`` > 0)."""
        return self._max_groups > 0

    @property
    def size(self) -> int:
        """How many groups may run at once."""
        return self._max_groups

    async def commit(self, turn: GroupTurn) -> bool:
        """Queue ``turn`` and wait until it is written (True) or refused (False)."""
        self._queue.append(turn)
        if self._leaders < self._max_groups:
            self._leaders += 1
            turn.lead = True
        else:
            try:
                await turn.wake.wait()
            except BaseException:
                self._abandon(turn)
                raise
        if turn.lead:
            try:
                await self._lead(turn)
            finally:
                self._leaders -= 1
                self._promote()
        return bool(turn.done)

    async def _lead(self, turn: GroupTurn) -> None:
        """Run groups until ``turn`` is finished (or wait if another leader has it)."""
        while turn.done is None:
            if turn in self._queue:
                await self._run_group()
            else:  # in another leader's group
                await turn.finished.wait()

    def _abandon(self, turn: GroupTurn) -> None:
        """A queued caller was cancelled: drop its turn; pass on a lead it was given."""
        if turn.done is None and turn in self._queue:
            self._queue.remove(turn)
        if turn.lead:
            self._leaders -= 1
            self._promote()

    def _promote(self) -> None:
        """Give the lead to queued turns while fewer than ``max_groups`` groups run."""
        for turn in self._queue:
            if self._leaders >= self._max_groups:
                return
            if not turn.lead:
                turn.lead = True
                self._leaders += 1
                turn.wake.set()

    def _take(self) -> list[GroupTurn]:
        """The next group: queued turns in order, at most one per session."""
        group: list[GroupTurn] = []
        seen: set[str] = set()
        later: deque[GroupTurn] = deque()
        while self._queue and len(group) < self._max_size:
            turn = self._queue.popleft()
            if turn.state.id in seen:
                later.append(turn)
            else:
                seen.add(turn.state.id)
                group.append(turn)
        self._queue.extendleft(reversed(later))
        return group

    async def _run_group(self) -> None:
        group = self._take()
        try:
            await self._run(group)
        finally:
            for turn in group:
                if turn.done is None:
                    turn.done = False
                turn.wake.set()
                turn.finished.set()


async def set_up_group_connection(conn: Conn) -> None:
    """Group commit connections give up on a row lock held elsewhere after 100 ms: the
    group then fails, writing nothing, and its turns go one by one on the locked path,
    so one busy session waits alone instead of holding up the group.

    They also keep one generic plan of :data:`GROUP_SQL` (the same plan suits every
    group size) instead of planning it again on every execution.
    """
    await conn.execute("SET lock_timeout = 100")
    await conn.execute("SET plan_cache_mode = force_generic_plan")


class WrittenRows:
    """Per session, the row this store wrote last and that row version's ``xmin``,
    the most recently written :data:`_WRITTEN_MAX` of them."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[StateRow, str]] = {}
        self.witness: Witness | None = None
        """The rollback witness told each committed head, if the store keeps one."""

    def remember(self, st: StateRow, xmin: str) -> None:
        """Keep ``st`` as the row written last (committed as row version ``xmin``)."""
        if self.witness is not None:
            self.witness.seen(st.id, st.record_count, st.head_mac)
        rows = self.rows
        rows.pop(st.id, None)
        if len(rows) >= _WRITTEN_MAX:
            del rows[next(iter(rows))]  # the least recently written
        rows[st.id] = (st, xmin)

    def forget(self, sid: str) -> None:
        """The session's row may change under another writer: take the locked path."""
        self.rows.pop(sid, None)


class GroupWriter:
    """A store's fast path for turns: plan on the remembered row, commit in a group.

    ``connection`` gives one of the group's own connections (see
    :func:`set_up_group_connection`); ``groups`` is how many groups may run at once
    (0: never group).
    """

    def __init__(
        self,
        url: str,
        written: WrittenRows,
        connection: Callable[[], Any],
        groups: int,
    ) -> None:
        self.url, self.written, self._connection = url, written, connection
        self.group = GroupCommit(self._write, groups, GROUP_MAX)

    async def commit(
        self, sid: str, commit: TurnCommit, token: int, signer: Signer
    ) -> tuple[bool, StateRow | None]:
        """Try the turn in a group: ``(True, _)`` if written; else ``(False, tried)``
        where ``tried`` is the row the group would have written (or ``None``)."""
        turn = self._plan(sid, commit, token, signer)
        if turn is None:
            return False, None
        return await self.group.commit(turn), turn.state

    def _plan(self, sid: str, commit: TurnCommit, token: int, signer: Signer) -> GroupTurn | None:
        """The turn planned on the row this store wrote last, if it can go fast."""
        written = self.written.rows.get(sid)
        if written is None or written[0].version != token or not self.group.enabled:
            return None
        old, xmin = written
        st = old.copy()  # plan_turn advances the row it is given
        try:
            rows = plan_turn(st, commit, signer, self.url, now=time.time())
        except StoreError:  # the locked path decides, on the stored row
            self.written.forget(sid)
            return None
        return GroupTurn(st, rows, token, xmin, old.state_mac, memory=commit.memory)

    async def _write(self, group: list[GroupTurn]) -> None:
        """One statement (one transaction) for ``group``; mark the turns it wrote.

        A failed statement wrote nothing: its turns are left unmarked and retry one by
        one on the locked path, where only the turn at fault fails.
        """
        try:
            async with self._connection() as conn:
                cur = await conn.execute(*_statement(group))
                written: dict[str, str] = dict(await cur.fetchall())
        except (psycopg.Error, StoreError):
            written = {}
        for turn in group:
            xmin = written.get(turn.state.id)
            if xmin is None:
                self.written.forget(turn.state.id)
            else:
                turn.done, turn.xmin = True, str(xmin)
                self.written.remember(turn.state, turn.xmin)
