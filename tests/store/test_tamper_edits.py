"""Every kind of edit made directly in the database: a typed error naming the session.

One table of edits, each applied to session ``s1`` of a store that also holds ``s0``
and ``s2``.  After each edit every read of ``s1`` (load, paging, verify, export)
raises :class:`SessionTampered` naming ``s1``; ``list_sessions`` still lists all three
(``s1`` flagged when its row was edited); ``s0`` and ``s2`` still load.  Storage-class
edits (a body stored as BLOB, a MAC stored as text) exist only in SQLite, whose
columns hold any type; NULLs need the ``NOT NULL`` constraint dropped first, which a
person with the database file (or a superuser) can do.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest

from sessions.errors import SessionTampered
from sessions.store import OpenStore

from . import fill
from .conftest import Raw

Read = Callable[[OpenStore], Awaitable[object]]

# Three turns of two messages: records 0..8 (message, message, turn) x 3; 8 is the head.
READS: dict[str, tuple[Read, range]] = {
    "load": (lambda s: s.load("s1", recent=50), range(0, 9)),
    "load_recent_1": (lambda s: s.load("s1", recent=1), range(7, 9)),
    "messages": (lambda s: s.messages("s1", 0, 100), range(0, 8)),
    "turns": (lambda s: s.turns("s1", 0, 100), range(2, 9)),
    "verify": (lambda s: s.verify("s1"), range(0, 9)),
    "export": (lambda s: s.export("s1"), range(0, 9)),
}
"""Each read of s1 and the records it verifies: a read must refuse an edit among them.
(A load verifies from its oldest message to the head, not the older records.)"""


@dataclass(frozen=True)
class Edit:
    """SQL run against the store behind its back (``None``: not possible there)."""

    name: str
    sqlite: tuple[str, ...] | None
    postgres: tuple[str, ...] | None
    row: bool = False
    """Whether the edit touches the ``sessions`` row (list flags the session)."""

    @property
    def index_only(self) -> bool:
        """Whether only unsigned index columns changed (``rseq``, ``key``, ``prev_mac``):
        the signed content is intact, so a read may still return it, but ``verify``
        refuses the store."""
        return self.name in _INDEX_EDITS

    @property
    def at(self) -> int:
        """The first record the edit touches (0 if it names none)."""
        sql = " ".join(self.sqlite or self.postgres or ())
        return min((int(n) for n in re.findall(r"rseq>?=(\d+)", sql)), default=0)


def _where(rseq: int) -> str:
    return f" WHERE session_id='s1' AND rseq={rseq}"


def _sqlite_null(table: str, column: str, where: str) -> tuple[str, ...]:
    # The table rebuilt without its constraints (NOT NULL among them), types kept.
    return (
        f"CREATE TABLE relaxed AS SELECT * FROM {table}",
        f"DROP TABLE {table}",
        f"ALTER TABLE relaxed RENAME TO {table}",
        f"UPDATE {table} SET {column}=NULL{where}",
    )


def _pg_null(table: str, column: str, where: str) -> tuple[str, ...]:
    return (
        f"ALTER TABLE {table} ALTER COLUMN {column} DROP NOT NULL",
        f"UPDATE {table} SET {column}=NULL{where}",
    )


def _both(*sql: str, row: bool = False, name: str) -> Edit:
    return Edit(name, sql, sql, row)


def _null(table: str, column: str, where: str, *, row: bool = False) -> Edit:
    name = f"null_{table}_{column}"
    return Edit(name, _sqlite_null(table, column, where), _pg_null(table, column, where), row)


def _lite(name: str, *sql: str, row: bool = False) -> Edit:
    return Edit(name, sql, None, row)


_S1 = " WHERE id='s1'"
_INDEX_EDITS = {
    "prev_mac_text", "prev_mac_text_window", "null_records_prev_mac", "key_changed",
    "key_text", "null_records_key", "rseq_gap",
}  # fmt: skip
_SHIFT = (
    "UPDATE records SET rseq=rseq+100 WHERE session_id='s1' AND rseq>=4",
    "UPDATE records SET rseq=rseq-99 WHERE session_id='s1' AND rseq>=100",
)

EDITS: tuple[Edit, ...] = (
    # bodies
    _lite("body_blob", "UPDATE records SET body=CAST(body AS BLOB)" + _where(4)),
    _lite("body_blob_head", "UPDATE records SET body=CAST(body AS BLOB)" + _where(8)),
    _lite("body_blob_message_head", "UPDATE records SET body=CAST(body AS BLOB)" + _where(7)),
    _lite("body_invalid_utf8", "UPDATE records SET body=CAST(body AS BLOB) || X'FF'" + _where(4)),
    _lite(
        "body_invalid_utf8_head",
        "UPDATE records SET body=X'FFFE' || CAST(body AS BLOB)" + _where(7),
    ),
    _lite("body_integer", "UPDATE records SET body=12345" + _where(4)),
    _both("UPDATE records SET body=body || ' '" + _where(4), name="body_appended"),
    _null("records", "body", _where(7)),
    # MACs
    _lite("mac_text", "UPDATE records SET mac=hex(mac)" + _where(4)),
    _lite("mac_text_head", "UPDATE records SET mac=hex(mac)" + _where(8)),
    _lite("mac_integer", "UPDATE records SET mac=7" + _where(7)),
    _lite("prev_mac_text", "UPDATE records SET prev_mac=hex(prev_mac)" + _where(4)),
    _lite("prev_mac_text_window", "UPDATE records SET prev_mac=hex(prev_mac)" + _where(6)),
    _both("UPDATE records SET mac=substr(mac, 1, 16)" + _where(4), name="mac_short"),
    _both("UPDATE records SET mac=substr(mac, 1, 16)" + _where(8), name="mac_short_head"),
    _null("records", "mac", _where(7)),
    _null("records", "prev_mac", _where(6)),
    # the unsigned columns of a record
    _both("UPDATE records SET kind='turn'" + _where(6), name="kind_changed"),
    _lite("kind_blob", "UPDATE records SET kind=CAST(kind AS BLOB)" + _where(6)),
    _both("UPDATE records SET key=key+100" + _where(6), name="key_changed"),
    _lite("key_text", "UPDATE records SET key='six'" + _where(6)),
    _null("records", "kind", _where(6)),
    _null("records", "key", _where(6)),
    # positions
    _both(*_SHIFT, name="rseq_gap"),
    _both("DELETE FROM records WHERE session_id='s1' AND rseq=7", name="record_deleted"),
    _both("DELETE FROM records WHERE session_id='s1' AND rseq>=6", name="head_truncated"),
    _both("DELETE FROM records WHERE session_id='s1'", name="all_records_deleted"),
    _both(
        "UPDATE records SET rseq=rseq+100 WHERE session_id='s1' AND rseq IN (6, 7)",
        "UPDATE records SET rseq=7 WHERE session_id='s1' AND rseq=106",
        "UPDATE records SET rseq=6 WHERE session_id='s1' AND rseq=107",
        name="rows_swapped",
    ),
    _both(
        "DELETE FROM records WHERE session_id='s1' AND rseq=3",
        "INSERT INTO records SELECT 's1', rseq, kind, key, body, prev_mac, mac FROM records "
        "WHERE session_id='s0' AND rseq=3",
        name="row_from_another_session",
    ),
    # the session row
    _lite("head_mac_text", "UPDATE sessions SET head_mac=hex(head_mac)" + _S1, row=True),
    _lite("state_mac_text", "UPDATE sessions SET state_mac=hex(state_mac)" + _S1, row=True),
    _lite("state_mac_integer", "UPDATE sessions SET state_mac=1" + _S1, row=True),
    _both(
        "UPDATE sessions SET state_mac=substr(state_mac, 1, 8)" + _S1,
        name="state_mac_short",
        row=True,
    ),
    _lite("turn_count_text", "UPDATE sessions SET turn_count='three'" + _S1, row=True),
    _lite("record_count_real", "UPDATE sessions SET record_count=8.5" + _S1, row=True),
    _lite("created_at_text", "UPDATE sessions SET created_at='yesterday'" + _S1, row=True),
    _lite("config_blob", "UPDATE sessions SET config=CAST(config AS BLOB)" + _S1, row=True),
    _lite("goals_blob_invalid_utf8", "UPDATE sessions SET goals=X'5BFF5D'" + _S1, row=True),
    _lite(
        "goals_text_invalid_utf8",
        "UPDATE sessions SET goals=CAST(goals AS BLOB) || X'FF'" + _S1,
        row=True,
    ),
    _lite("id_text_invalid_utf8", "UPDATE sessions SET cognitive_mode=X'FF' || id" + _S1, row=True),
    _both("UPDATE sessions SET turn_count=turn_count-1" + _S1, name="turn_count_lowered", row=True),
    _lite("version_text", "UPDATE sessions SET version='v2'" + _S1, row=True),
    _lite("owner_blob", "UPDATE sessions SET owner=X'00FF'" + _S1, row=True),
    _lite("lease_text", "UPDATE sessions SET lease_expires='soon'" + _S1, row=True),
    _null("sessions", "head_mac", _S1, row=True),
    _null("sessions", "state_mac", _S1, row=True),
    _null("sessions", "turn_count", _S1, row=True),
    _null("sessions", "version", _S1, row=True),
    _both(
        "UPDATE sessions SET (agent_id, type, created_at, updated_at, turn_count, message_count, "
        "record_count, head_mac, config, working_memory, goals, cognitive_mode, summary_upto, "
        "state_mac) = (SELECT agent_id, type, created_at, updated_at, turn_count, message_count, "
        "record_count, head_mac, config, working_memory, goals, cognitive_mode, summary_upto, "
        "state_mac FROM sessions WHERE id='s0')" + _S1,
        name="session_row_from_another_session",
        row=True,
    ),
)


def _edits() -> list[object]:
    out: list[object] = []
    for e in EDITS:
        for backend in ("sqlite", "postgres"):
            sql = e.sqlite if backend == "sqlite" else e.postgres
            if sql is None:
                continue
            marks = [pytest.mark.postgres] if backend == "postgres" else []
            out.append(pytest.param(backend, e, sql, id=f"{backend}-{e.name}", marks=marks))
    return out


async def _error_of(read: Awaitable[object]) -> Exception | None:
    """The exception ``read`` raised, if any."""
    try:
        await read
    except Exception as exc:  # the caller checks its type
        return exc
    return None


@pytest.fixture
def edited_url(request: pytest.FixtureRequest, tmp_path: object) -> str:
    """The URL of the backend a case names (a fresh schema for PostgreSQL)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    return str(request.getfixturevalue("pg_url"))


@pytest.mark.parametrize(("edited_url", "edit", "sql"), _edits(), indirect=["edited_url"])
async def test_edit_is_a_typed_error_naming_the_session(
    edited_url: str, edit: Edit, sql: tuple[str, ...]
) -> None:
    """The edit makes every read of s1 raise SessionTampered naming s1; the store still
    lists every session and the others still load."""
    from sessions.store import open_store

    from . import SECRET

    async with open_store(edited_url, secret=SECRET) as store:
        for sid in ("s0", "s1", "s2"):
            await fill(store, sid, 3)
    raw = Raw(edited_url)
    for statement in sql:
        raw.execute(statement)
    async with open_store(edited_url, secret=SECRET) as store:
        for name, (read, covers) in READS.items():
            error = await _error_of(read(store))
            if error is None:  # a read of records the edit did not touch, or of content
                index_only = edit.index_only and name != "verify"
                assert index_only or (not edit.row and edit.at not in covers), name
            else:
                assert isinstance(error, SessionTampered), (name, error)
                assert error.session_id == "s1" and "'s1'" in str(error), name
        listed = await store.list_sessions()
        assert [(m.id, m.tampered) for m in listed] == [
            ("s0", False),
            ("s1", edit.row),
            ("s2", False),
        ]
        for sid in ("s0", "s2"):
            assert len((await store.load(sid)).recent) == 6
