"""Reading a SQLite store: a session's row and its HMAC chain, verified as they are read.

:class:`SQLiteReader` runs in whichever thread holds the connection (the database
thread, or the event loop's during an inline write); every read of several
statements runs inside one ``BEGIN`` so it sees one snapshot.
"""

from __future__ import annotations

import hmac
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

from sessions.errors import SessionNotFound, SessionTampered
from sessions.store.base import (
    Checkpoint,
    Listed,
    LoadedSession,
    Message,
    SessionMatch,
    SessionMeta,
    TurnRecord,
    keyset_page,
)
from sessions.store.codec import KIND_MESSAGE, KIND_SUMMARY, KIND_TURN, messages_of_bodies
from sessions.store.durable import (
    STATE_COLUMNS,
    ListingSQL,
    StateRow,
    check_index,
    latest_summary,
    listed_meta,
    matched_sql,
    messages_of,
    open_checkpoint,
    scanned_to,
    split_chain,
    turns_of,
)
from sessions.store.export import sign_doc
from sessions.store.signing import GENESIS, Chain, Signer, Slim, verify_span
from sessions.store.sqlite_memory import remembered
from sessions.store.sqlite_open import tx
from sessions.store.witness import Witness

__all__ = ["SQLiteReader"]

_ROW: Final = "rseq, kind, key, body, prev_mac, mac"
_INDEX: Final = (
    "SELECT rseq, kind, key, prev_mac, mac FROM records WHERE session_id=? ORDER BY rseq"
)
_END: Final = 2**62  # past any rseq: "through the head"
_NEXT_OF_KIND: Final = (
    "SELECT rseq, key FROM records WHERE session_id=? AND rseq>=? AND rseq<? AND kind=? "
    "ORDER BY rseq LIMIT 1"
)


class SQLiteReader:
    """Verified reads over one open connection, signed with ``signer``."""

    def __init__(
        self, url: str, conn: sqlite3.Connection, signer: Signer, witness: Witness | None = None
    ) -> None:
        self.url, self.conn, self.signer = url, conn, signer
        self.witness = witness
        """The rollback witness every verified state row is checked against, if any."""

    @contextmanager
    def _read(self, sid: str) -> Iterator[None]:
        """One read snapshot (``BEGIN``) of session ``sid``.

        A ``TEXT`` value that is not UTF-8 (only an edit made behind the store writes
        one) makes :mod:`sqlite3` fail the fetch; it becomes the
        :class:`~engine.errors.SessionTampered` of this session.
        """
        try:
            with tx(self.conn, immediate=False):
                yield
        except sqlite3.OperationalError as exc:
            if not _undecodable(exc):
                raise
            raise SessionTampered(self.url, sid, -1, _NOT_UTF8) from None

    def listing(
        self, offset: int, limit: int, match: SessionMatch | None = None
    ) -> tuple[SessionMeta, ...]:
        """A page of sessions (:meth:`Store.list_sessions`, :func:`matched_sql`), each
        row's MAC checked (a failing row is listed as tampered).

        A row holding text that is not UTF-8 fails the whole fetch, so then the rows are
        read one by one and only the undecodable ones are listed as tampered.
        """
        match = match or SessionMatch()
        q = matched_sql(match, offset, limit, "?", sqlite=True)
        try:
            with tx(self.conn, immediate=False):  # the page and its span: one snapshot
                found = self.conn.execute(q.rows, q.params).fetchall()
                span = self.conn.execute(q.span, q.window_params).fetchone() if q.text else None
        except sqlite3.OperationalError as exc:
            if not _undecodable(exc):
                raise
            window = self._listing_row_by_row(q)
            if not q.text:
                return keyset_page(window, max(1, limit))
            last = window[-1].id if len(window) == max(1, limit) else None
            return Listed.of([m for m in window if match.matches(m)], last)
        metas = [listed_meta(r, self.signer, self.url) for r in found]
        if span is None:
            return keyset_page(metas, max(1, limit))
        return Listed.of(metas, scanned_to(span, limit))

    def _listing_row_by_row(self, q: ListingSQL) -> list[SessionMeta]:
        keys = self.conn.execute(f"SELECT CAST(id AS BLOB) {q.window}", q.window_params)
        out = []
        for (key,) in keys.fetchall():
            sid = bytes(key).decode(errors="backslashreplace")
            try:
                row = self.conn.execute(
                    f"SELECT {STATE_COLUMNS} FROM sessions WHERE CAST(id AS BLOB)=?", (key,)
                ).fetchone()
            except sqlite3.OperationalError as exc:
                if not _undecodable(exc):
                    raise
                out.append(SessionMeta(id=sid, tampered=True))
                continue
            out.append(listed_meta(row, self.signer, self.url))
        return out

    def state(self, sid: str, *, check: bool = True) -> StateRow:
        """The session's row (``SessionNotFound``), its MAC verified unless not ``check``."""
        row = self.conn.execute(
            f"SELECT {STATE_COLUMNS} FROM sessions WHERE id=?", (sid,)
        ).fetchone()
        if row is None:
            if self.witness is not None:
                self.witness.check_missing(sid)
            raise SessionNotFound(sid, "no such session")
        state = StateRow.of(row, self.url)
        if not check:
            return state
        state.check(self.signer, self.url)
        if self.witness is not None:
            self._check_witness(self.witness, state)
        return state

    def _check_witness(self, witness: Witness, st: StateRow) -> None:
        """:class:`~engine.errors.RolledBack` unless ``st`` is at or past its witnessed
        head (one more read, of one MAC, only when the store is ahead of the witness)."""
        at = witness.behind(st.id, st.record_count)
        mac = None
        if at is not None:
            row = self.conn.execute(
                "SELECT mac FROM records WHERE session_id=? AND rseq=?", (st.id, at)
            ).fetchone()
            mac = row[0] if row is not None and type(row[0]) is bytes else None
        witness.check(st.id, st.record_count, st.head_mac, mac)

    def load(self, sid: str, recent: int) -> tuple[LoadedSession, StateRow]:
        """Metadata, the last ``recent`` messages, summary and checkpoint, verified; and
        the verified row (for the store to remember)."""
        with self._read(sid):
            st = self.state(sid)
            msgs = self._tail(st, max(0, min(recent, st.message_count)))
            summary = self._summary(st)
            cp = self.checkpoint(sid)
        return LoadedSession(st.to_meta(self.url), msgs, summary, cp), st

    def checkpoint(self, sid: str) -> Checkpoint | None:
        """The session's saved checkpoint, verified, if any."""
        row = self.conn.execute(
            "SELECT body, mac FROM checkpoints WHERE session_id=?", (sid,)
        ).fetchone()
        return None if row is None else open_checkpoint(sid, row[0], row[1], self.signer, self.url)

    def messages(self, sid: str, offset: int, limit: int) -> tuple[Message, ...]:
        """Messages ``offset <= seq < offset + limit``, verified."""
        with self._read(sid):
            st = self.state(sid)
            end = min(offset + limit, st.message_count)
            if offset >= end:
                return ()
            data = self._span(st, KIND_MESSAGE, offset, end - 1)
        return messages_of(data, self.url, sid, offset)

    def turns(self, sid: str, offset: int, limit: int) -> tuple[TurnRecord, ...]:
        """Turn records ``offset+1 ... offset+limit``, verified."""
        with self._read(sid):
            st = self.state(sid)
            end = min(offset + limit, st.turn_count)
            if offset >= end:
                return ()
            data = self._span(st, KIND_TURN, offset + 1, end)
        return turns_of(data, self.url, sid, offset + 1)

    def verify(self, sid: str) -> int:
        """Verify the whole chain, the session row and the checkpoint; the record count."""
        with self._read(sid):
            st, data, _ = self._whole(sid)
            index = self.conn.execute(_INDEX, (sid,)).fetchall()
        split_chain(data, self.url, sid)
        check_index(self.url, sid, index)
        return st.record_count

    def export(self, sid: str) -> dict[str, Any]:
        """The signed export document of the whole session (verified as it is read)."""
        with self._read(sid):
            st, data, cp = self._whole(sid)
            memory = remembered(self.conn, sid)
        parts = split_chain(data, self.url, sid)
        return sign_doc(st.to_meta(self.url), parts, cp, self.signer, memory)

    def _whole(self, sid: str) -> tuple[StateRow, Chain, Checkpoint | None]:
        st = self.state(sid)
        return st, self._chain(st, 0, None), self.checkpoint(sid)

    def _rseq_of(self, st: StateRow, kind: str, key: int) -> int:
        """The ``rseq`` of the message with ``seq == key`` or the turn record of turn
        ``key`` (``kind``), found without an index.

        Both keys grow with ``rseq`` and each record holds one, so record ``r`` of
        ``kind`` with key ``k`` puts key ``key`` at least ``key - k`` records later (or
        ``k - key`` earlier).  A probe reads the first record of ``kind`` at or after
        a position; the next probe is placed by the session's records-per-key ratio
        (interpolation), every other one halves the range, so a session of any shape
        costs at most twice a binary search, and a usual one a handful of probes.
        """
        if kind == KIND_MESSAGE:
            first, count = 0, st.message_count  # keys 0 .. count-1
        else:
            first, count = 1, st.turn_count  # turns 1 .. count
        if not first <= key < first + count:
            raise SessionTampered(self.url, st.id, -1, f"{kind} {key} is missing")
        # Counting alone bounds it: ``key - first`` keys before, ``last - key`` after.
        lo, hi = key - first, st.record_count - (first + count - 1 - key)  # [lo, hi)
        ratio = st.record_count / count
        guess, step = int(key * ratio), 0
        probe = self.conn.execute
        while lo < hi:
            mid = min(max(guess, lo), hi - 1) if step % 2 == 0 else (lo + hi) // 2
            step += 1
            row = probe(_NEXT_OF_KIND, (st.id, mid, hi, kind)).fetchone()
            if row is None:  # nothing of ``kind`` in [mid, hi)
                hi = mid
                continue
            r, k = row
            if type(r) is not int or type(k) is not int:  # edited behind the store
                raise SessionTampered(self.url, st.id, -1, f"{kind} record {r!r} key {k!r}")
            if k == key:
                return r
            if k < key:
                lo = max(lo, r + (key - k))
                guess = r + round((key - k) * ratio)
            else:  # nothing of ``kind`` in [mid, r), and ``k - key`` of them before r
                hi = min(mid, r - (k - key) + 1)
                guess = r - round((k - key) * ratio)
        raise SessionTampered(self.url, st.id, -1, f"{kind} {key} is missing")

    def _tail(self, st: StateRow, count: int) -> tuple[Message, ...]:
        """The last ``count`` messages, verified from the first of them to the head."""
        start = st.message_count - count
        # With no messages wanted, still check the head record.
        first = self._rseq_of(st, KIND_MESSAGE, start) if count else max(0, st.record_count - 1)
        msgs = self._bulk_messages(st, first, start) if count else None
        if msgs is None:
            data = self._chain(st, first, None)
            msgs = messages_of(data, self.url, st.id, start) if count else ()
        if len(msgs) != count:
            raise SessionTampered(self.url, st.id, -1, "messages are missing before the head")
        return msgs

    def _bulk_messages(
        self, st: StateRow, first: int, first_seq: int
    ) -> tuple[Message, ...] | None:
        """The messages from record ``first`` through the head, verified, the fast way.

        Bodies are read as bytes and checked by :meth:`Signer.bodies_to_head`, then
        decoded in one call (:func:`~sessions.store.codec.messages_of_bodies`).  ``None``
        if anything does not verify or decode: the caller's careful path then reads the
        span again and raises the error that names the problem.
        """
        rows = self.conn.execute(
            # A body of another storage class (BLOB) reads as NULL and fails here, as
            # it does on every other path, even if its bytes are the signed ones.
            "SELECT kind, CASE typeof(body) WHEN 'text' THEN CAST(body AS BLOB) END, mac "
            "FROM records "
            "WHERE session_id=? AND rseq BETWEEN ? AND ? ORDER BY rseq",
            (st.id, first, _END),
        ).fetchall()
        prev = GENESIS if first == 0 else self._prev_mac(st.id, first)
        if prev is None:
            return None
        head = (st.record_count, st.head_mac)
        bodies = self.signer.bodies_to_head(rows, first, prev, head, KIND_MESSAGE)
        return None if bodies is None else messages_of_bodies(bodies, first_seq)

    def _summary(self, st: StateRow) -> Message | None:
        row = self.conn.execute(
            # The kind is written out: only then can SQLite use the partial index.
            f"SELECT {_ROW} FROM records WHERE session_id=? AND kind='{KIND_SUMMARY}' "
            "ORDER BY key DESC LIMIT 1",
            (st.id,),
        ).fetchone()
        return latest_summary(row, st, self.signer, self.url)

    def _span(self, st: StateRow, kind: str, lo: int, hi: int) -> Chain:
        """Verified chain data from record ``kind lo`` through ``kind hi`` (inclusive)."""
        first, last = self._rseq_of(st, kind, lo), self._rseq_of(st, kind, hi)
        return self._chain(st, first, None if last == st.record_count - 1 else last)

    def _chain(self, st: StateRow, first: int, last: int | None) -> Chain:
        """Verified records ``first..last`` (``None``: through the session's head).

        Reads only ``kind, body, mac`` and checks them in :meth:`Signer.check_chain`'s
        tight loop; on any doubt, reads the full rows again and lets
        :func:`verify_span` name the first bad record.  The ``prev_mac`` column is read
        for the first record only: every later link is proven by recomputing its MAC
        from the previous record's, which that column merely repeats.
        """
        args = (st.id, first, _END if last is None else last)
        where = "WHERE session_id=? AND rseq BETWEEN ? AND ? ORDER BY rseq"
        rows = self.conn.execute(f"SELECT kind, body, mac FROM records {where}", args).fetchall()
        prev = GENESIS if first == 0 else self._prev_mac(st.id, first)
        ok = prev is not None and self.signer.check_chain(st.id, rows, first, prev)
        if ok and (last is not None or _at_head(st, first, rows, prev)):
            return rows
        full = self.conn.execute(f"SELECT {_ROW} FROM records {where}", args).fetchall()
        head = (st.record_count, st.head_mac) if last is None else None
        prev_arg = None if first else GENESIS
        return verify_span(
            self.signer, self.url, st.id, full, first=first, prev=prev_arg, head=head
        )

    def _prev_mac(self, sid: str, rseq: int) -> bytes | None:
        row = self.conn.execute(
            "SELECT prev_mac FROM records WHERE session_id=? AND rseq=?", (sid, rseq)
        ).fetchone()
        return None if row is None or type(row[0]) is not bytes or not row[0] else row[0]


_NOT_UTF8: Final = "a stored text is not valid UTF-8 (edited in the database)"


def _undecodable(exc: sqlite3.OperationalError) -> bool:
    """Whether :mod:`sqlite3` failed to decode a ``TEXT`` value as UTF-8."""
    return str(exc).startswith("Could not decode to UTF-8")


def _at_head(st: StateRow, first: int, rows: list[Slim], prev: bytes | None) -> bool:
    """Whether verified ``rows`` from ``first`` end exactly at the session's head."""
    last = rows[-1][2] if rows else prev
    n = first + len(rows)
    return last is not None and n == st.record_count and hmac.compare_digest(last, st.head_mac)
