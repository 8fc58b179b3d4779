"""Reading a PostgreSQL store: a session's row and its HMAC chain, verified as read.

Multi-statement reads run in one ``REPEATABLE READ`` transaction, so a concurrent
append can never make a consistent chain look truncated.  Verifying a whole chain is
CPU work and runs in a worker thread.
"""

from __future__ import annotations

from typing import Any, Final

import anyio.to_thread

from sessions.errors import SessionNotFound, SessionTampered
from sessions.store.base import Checkpoint, LoadedSession, Message, TurnRecord
from sessions.store.codec import KIND_MESSAGE, KIND_SUMMARY, KIND_TURN
from sessions.store.durable import (
    STATE_COLUMNS,
    StateRow,
    check_index,
    latest_summary,
    messages_of,
    open_checkpoint,
    split_chain,
    turns_of,
)
from sessions.store.export import Parts, sign_doc
from sessions.store.pg_db import Conn, PgDatabase, one
from sessions.store.pg_memory import remembered
from sessions.store.signing import GENESIS, Chain, Row, Signer, verify_span
from sessions.store.witness import Witness

__all__ = ["PgReader"]

_ROW: Final = "rseq, kind, key, body, prev_mac, mac"


class PgReader:
    """Verified reads of the store in ``db``, signed with ``signer``."""

    def __init__(
        self, url: str, db: PgDatabase, signer: Signer, witness: Witness | None = None
    ) -> None:
        self.url, self.db, self.signer = url, db, signer
        self.witness = witness
        """The rollback witness every verified state row is checked against, if any."""

    async def state(self, c: Conn, sid: str, *, lock: bool = False) -> StateRow:
        """The session's row, its MAC verified and checked against the rollback
        witness (``lock``: ``FOR UPDATE``)."""
        sql = f"SELECT {STATE_COLUMNS} FROM sessions WHERE id=%s" + (" FOR UPDATE" if lock else "")
        row = await one(c, sql, (sid,))
        witness = self.witness
        if row is None:
            if witness is not None:
                witness.check_missing(sid)
            raise SessionNotFound(sid, "no such session")
        st = StateRow.of(row, self.url).check(self.signer, self.url)
        if witness is not None:
            at = witness.behind(sid, st.record_count)
            mac = None
            if at is not None:
                found = await one(
                    c, "SELECT mac FROM records WHERE session_id=%s AND rseq=%s", (sid, at)
                )
                mac = None if found is None else bytes(found[0])
            witness.check(sid, st.record_count, st.head_mac, mac)
        return st

    async def load(self, sid: str, recent: int) -> LoadedSession:
        """Metadata, the last ``recent`` messages, latest summary and checkpoint, verified."""
        async with self.db.tx(read=True) as c:
            st = await self.state(c, sid)
            msgs = await self._tail(c, st, max(0, min(recent, st.message_count)))
            summary = await self._summary(c, st)
            cp = await self._checkpoint(c, sid)
        return LoadedSession(st.to_meta(self.url), msgs, summary, cp)

    async def messages(self, sid: str, offset: int, limit: int) -> tuple[Message, ...]:
        """Messages ``offset <= seq < offset + limit``, verified."""
        async with self.db.tx(read=True) as c:
            st = await self.state(c, sid)
            end = min(offset + limit, st.message_count)
            if offset >= end:
                return ()
            data = await self._span(c, st, KIND_MESSAGE, offset, end - 1)
        return messages_of(data, self.url, sid, offset)

    async def turns(self, sid: str, offset: int, limit: int) -> tuple[TurnRecord, ...]:
        """Turn records ``offset+1 ... offset+limit``, verified."""
        async with self.db.tx(read=True) as c:
            st = await self.state(c, sid)
            end = min(offset + limit, st.turn_count)
            if offset >= end:
                return ()
            data = await self._span(c, st, KIND_TURN, offset + 1, end)
        return turns_of(data, self.url, sid, offset + 1)

    async def verify(self, sid: str) -> int:
        """Verify the whole chain, the session state and the checkpoint."""
        st, _, _ = await self._whole(sid)
        return st.record_count

    async def export(self, sid: str) -> dict[str, Any]:
        """The signed export document of the whole session (verified as it is read)."""
        st, parts, cp = await self._whole(sid)
        async with self.db.tx() as c:
            memory = await remembered(c, sid)
        meta = st.to_meta(self.url)
        return await anyio.to_thread.run_sync(sign_doc, meta, parts, cp, self.signer, memory)

    async def _checkpoint(self, c: Conn, sid: str) -> Checkpoint | None:
        row = await one(c, "SELECT body, mac FROM checkpoints WHERE session_id=%s", (sid,))
        return None if row is None else open_checkpoint(sid, row[0], row[1], self.signer, self.url)

    async def _rseq_of(self, c: Conn, st: StateRow, kind: str, key: int) -> int:
        row = await one(
            c,
            "SELECT rseq FROM records WHERE session_id=%s AND kind=%s AND key=%s",
            (st.id, kind, key),
        )
        if row is None:
            raise SessionTampered(self.url, st.id, -1, f"{kind} {key} is missing")
        return int(row[0])

    async def _rows(self, c: Conn, sid: str, first: int, last: int | None) -> list[Row]:
        if last is None:
            sql = f"SELECT {_ROW} FROM records WHERE session_id=%s AND rseq>=%s ORDER BY rseq"
            cur = await c.execute(sql, (sid, first))
        else:
            sql = (
                f"SELECT {_ROW} FROM records WHERE session_id=%s AND rseq BETWEEN %s AND %s "
                "ORDER BY rseq"
            )
            cur = await c.execute(sql, (sid, first, last))
        return await cur.fetchall()

    async def _tail(self, c: Conn, st: StateRow, count: int) -> tuple[Message, ...]:
        """The last ``count`` messages, verified from the first of them to the head."""
        start = st.message_count - count
        if count:
            first = await self._rseq_of(c, st, KIND_MESSAGE, start)
        else:  # still check the head record
            first = max(0, st.record_count - 1)
        rows = await self._rows(c, st.id, first, None)
        data = self._verified(st, rows, first, (st.record_count, st.head_mac))
        msgs = messages_of(data, self.url, st.id, start) if count else ()
        if len(msgs) != count:
            raise SessionTampered(self.url, st.id, -1, "messages are missing before the head")
        return msgs

    async def _summary(self, c: Conn, st: StateRow) -> Message | None:
        row = await one(
            c,
            f"SELECT {_ROW} FROM records WHERE session_id=%s AND kind=%s ORDER BY key DESC LIMIT 1",
            (st.id, KIND_SUMMARY),
        )
        return latest_summary(row, st, self.signer, self.url)

    async def _span(self, c: Conn, st: StateRow, kind: str, lo: int, hi: int) -> Chain:
        first = await self._rseq_of(c, st, kind, lo)
        last = await self._rseq_of(c, st, kind, hi)
        rows = await self._rows(c, st.id, first, last)
        head = (st.record_count, st.head_mac) if last == st.record_count - 1 else None
        return self._verified(st, rows, first, head)

    def _verified(
        self, st: StateRow, rows: list[Row], first: int, head: tuple[int, bytes] | None
    ) -> Chain:
        prev = None if first else GENESIS
        return verify_span(self.signer, self.url, st.id, rows, first=first, prev=prev, head=head)

    async def _whole(self, sid: str) -> tuple[StateRow, Parts, Checkpoint | None]:
        """The whole session, verified in a worker thread (long chains are CPU work)."""
        async with self.db.tx(read=True) as c:
            st = await self.state(c, sid)
            rows = await self._rows(c, sid, 0, None)
            cp = await self._checkpoint(c, sid)
        return st, await anyio.to_thread.run_sync(self._check_whole, st, rows), cp

    def _check_whole(self, st: StateRow, rows: list[Row]) -> Parts:
        chain = self._verified(st, rows, 0, (st.record_count, st.head_mac))
        parts = split_chain(chain, self.url, st.id)
        check_index(self.url, st.id, ((r, k, key, p, m) for r, k, key, _, p, m in rows))
        return parts
