"""Salvage: read a tampered session, read-only, up to its first bad record.

A session whose chain fails verification cannot be loaded (every read refuses it), but
the records before the first bad one are still the session's own: each MAC covers the
previous one, so record ``r`` verifying from the genesis means records ``0..r`` are as
they were signed.  :func:`salvage` walks the chain from record 0 with the store's key,
keeps every record that verifies, and stops at the first that does not, saying where
and why, so a user can recover the conversation instead of only deleting it.

Nothing is written: SQLite files are opened ``mode=ro``, PostgreSQL in a read-only
transaction.  The session row (metadata, head) is checked too and reported apart: its
values are shown only when its own MAC verifies.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sessions.errors import SessionNotFound, SessionTampered, StoreError
from sessions.store.base import Message, TurnRecord
from sessions.store.codec import (
    KIND_MESSAGE,
    KIND_SUMMARY,
    KIND_TURN,
    ShapeError,
    message_from_dict,
    record_data,
    turn_from_dict,
)
from sessions.store.durable import STATE_COLUMNS, StateRow
from sessions.store.signing import GENESIS, Row, Signer, verify_span

__all__ = ["Salvage", "salvage", "salvage_rows"]

_ROWS = (
    "SELECT rseq, kind, key, body, prev_mac, mac FROM records WHERE session_id={p} ORDER BY rseq"
)
_STATE = f"SELECT {STATE_COLUMNS} FROM sessions WHERE id={{p}}"


@dataclass(frozen=True, slots=True)
class Salvage:
    """What a salvage read recovered of one session.

    ``verified`` records (``0 .. verified - 1``) verified; ``stopped_at`` is the first
    bad record (``None``: the whole stored chain verified) and ``reason`` why it, or the
    session row, failed.  ``state_ok`` says whether the session row's MAC verified.
    """

    session_id: str
    messages: tuple[Message, ...]
    turns: tuple[TurnRecord, ...]
    summaries: tuple[tuple[int, Message], ...]
    verified: int
    stored: int
    stopped_at: int | None
    reason: str | None
    state_ok: bool

    @property
    def intact(self) -> bool:
        """Whether nothing was wrong: every record and the session row verified."""
        return self.stopped_at is None and self.reason is None and self.state_ok


def salvage_rows(
    url: str, signer: Signer, session_id: str, state: StateRow, rows: Sequence[Row]
) -> Salvage:
    """Walk ``rows`` (the session's stored records, by ``rseq``) from the genesis and
    keep what verifies and decodes, stopping at the first record that does not."""
    state_ok, reason = True, None
    try:
        state.check(signer, url)
    except SessionTampered as exc:
        state_ok, reason = False, exc.reason
    kept = _Kept()
    expect, stopped = GENESIS, None
    for r, row in enumerate(rows):
        problem = _check(url, signer, session_id, r, row, expect) or kept.add(row[1], row[3])
        if problem is not None:
            stopped, reason = r, problem
            break
        expect = bytes(row[5])
    else:
        if state_ok and (len(rows) != state.record_count or expect != bytes(state.head_mac)):
            stopped = len(rows)
            reason = f"chain ends at record {len(rows)} but the session has {state.record_count}"
    return Salvage(
        session_id,
        tuple(kept.messages),
        tuple(kept.turns),
        tuple(kept.summaries),
        kept.count,
        len(rows),
        stopped,
        reason,
        state_ok,
    )


def _check(
    url: str, signer: Signer, session_id: str, r: int, row: Row, expect: bytes
) -> str | None:
    """Why record ``r`` does not verify as the successor of MAC ``expect`` (or ``None``)."""
    if not isinstance(row[3], str):
        return f"record body is stored as {type(row[3]).__name__}, not text"
    try:
        verify_span(signer, url, session_id, [row], first=r, prev=expect)
    except SessionTampered as exc:
        return exc.reason.split(": ", 1)[-1]
    except StoreError as exc:  # a record in a newer format than this code reads
        return exc.reason
    return None


class _Kept:
    """The decoded records kept so far; messages and turns must stay dense."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.turns: list[TurnRecord] = []
        self.summaries: list[tuple[int, Message]] = []
        self.count = 0

    def add(self, kind: str, body: str) -> str | None:
        """Keep one verified record; why it cannot be kept, or ``None``."""
        try:
            data = record_data(body)
            if kind == KIND_MESSAGE:
                m = message_from_dict(data)
                if m.seq != len(self.messages):
                    return f"message {len(self.messages)} is missing"
                self.messages.append(m)
            elif kind == KIND_TURN:
                t = turn_from_dict(data)
                if t.turn != len(self.turns) + 1:
                    return f"turn {len(self.turns) + 1} is missing"
                self.turns.append(t)
            elif kind == KIND_SUMMARY:
                upto = data.get("upto")
                if type(upto) is not int:
                    return "summary record has no 'upto'"
                self.summaries.append((upto, message_from_dict(data.get("message"))))
            else:
                return f"unknown record kind {kind!r}"
        except ShapeError as exc:
            return f"record does not decode: {exc}"
        self.count += 1
        return None


async def salvage(url: str, signer: Signer, session_id: str) -> Salvage:
    """Salvage ``session_id`` from the SQLite or PostgreSQL store at ``url``, read-only.

    :class:`~engine.errors.SessionNotFound` if it has no session row;
    :class:`~engine.errors.StoreError` for a store that cannot be salvaged (memory).
    """
    import anyio.to_thread

    from sessions.store.redact import redact_url

    shown = redact_url(url)
    if url.startswith("sqlite:"):
        read = _read_sqlite
    elif url.split(":", 1)[0] in ("postgresql", "postgres"):
        read = _read_postgres
    else:
        raise StoreError(shown, "salvage reads SQLite and PostgreSQL stores only")
    state, rows = await anyio.to_thread.run_sync(read, url, session_id)
    if state is None:
        raise SessionNotFound(session_id, "no such session")
    return salvage_rows(shown, signer, session_id, StateRow.of(state, shown), rows)


def _read_sqlite(url: str, session_id: str) -> tuple[Any, list[Row]]:
    from sessions.store import sqlite_path

    path = sqlite_path(url)
    if not path.is_file():
        raise StoreError(url, f"no such store: {path}")
    conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    try:
        state = conn.execute(_STATE.format(p="?"), (session_id,)).fetchone()
        rows = conn.execute(_ROWS.format(p="?"), (session_id,)).fetchall()
    except sqlite3.Error as exc:
        raise StoreError(url, f"{path}: cannot read: {exc}") from None
    finally:
        conn.close()
    return state, _rows(rows)


def _read_postgres(url: str, session_id: str) -> tuple[Any, list[Row]]:
    import psycopg

    from sessions.store.redact import redact_url, scrub

    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            conn.read_only = True
            state = conn.execute(_STATE.format(p="%s"), (session_id,)).fetchone()
            rows = conn.execute(_ROWS.format(p="%s"), (session_id,)).fetchall()
    except psycopg.Error as exc:
        raise StoreError(redact_url(url), f"cannot read: {scrub(str(exc), url)}") from None
    return state, _rows(rows)


def _rows(rows: Iterable[Any]) -> list[Row]:
    return [(r, k, key, body, _mac(p), _mac(m)) for r, k, key, body, p, m in rows]


def _mac(value: Any) -> bytes:
    """A stored MAC as bytes; anything else (NULL, text) as empty: "record is unsigned"."""
    return bytes(value) if isinstance(value, bytes | memoryview) else b""
