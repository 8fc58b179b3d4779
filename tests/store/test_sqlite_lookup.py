"""SQLite finds messages and turns by ``rseq`` search (schema 2), and migrates to it.

Version 2 dropped the ``(session_id, kind, key)`` index: a message or a turn record is
found by an interpolating binary search over ``rseq``.  These tests check the search
against the truth on sessions of every shape (turns of one to many messages,
summaries in between), count its probes, and open a version-1 file.
"""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sessions.errors import SessionTampered
from sessions.store import SQLiteStore, open_store
from sessions.store.base import Message, SessionMeta
from sessions.store.migrations import SQLITE, SQLITE_VERSION

from . import SECRET, commit, fill


def _run(coro_fn: object) -> None:
    import anyio

    anyio.run(coro_fn)  # type: ignore[arg-type]


async def _shaped(store: SQLiteStore, per_turn: list[int], summary_every: int) -> None:
    """Session ``s`` with ``per_turn[i]`` messages in turn ``i + 1`` and a summary
    after every ``summary_every``-th turn (0: none)."""
    await store.create(SessionMeta(id="s"))
    token = await store.acquire("s", "w", 60.0)
    seq = 0
    for turn, n in enumerate(per_turn, start=1):
        await store.append_turn("s", commit(turn, seq, n), token=token)
        seq += n
        if summary_every and turn % summary_every == 0:
            summary = Message(turn, "summary", f"upto {seq}", 0, 1.0)
            await store.append_summary("s", summary, seq - 1, token=token)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    per_turn=st.lists(st.integers(1, 9), min_size=1, max_size=40),
    summary_every=st.integers(0, 5),
    data=st.data(),
)
def test_every_message_and_turn_is_found(
    tmp_path_factory: object, per_turn: list[int], summary_every: int, data: st.DataObject
) -> None:
    """Any page of messages or turns, of a session of any shape, is exactly right."""
    path = tmp_path_factory.mktemp("lookup") / "s.db"  # type: ignore[attr-defined]
    total = sum(per_turn)
    offsets = data.draw(st.lists(st.integers(0, total), min_size=1, max_size=6))
    limits = data.draw(st.lists(st.integers(0, 12), min_size=len(offsets), max_size=len(offsets)))

    async def check() -> None:
        async with SQLiteStore(f"sqlite:///{path}", path, secret=SECRET) as store:
            await _shaped(store, per_turn, summary_every)
            for off, lim in zip(offsets, limits, strict=True):
                got = [m.seq for m in await store.messages("s", off, lim)]
                assert got == list(range(off, min(off + lim, total)))
                turns = [t.turn for t in await store.turns("s", off, lim)]
                assert turns == list(range(off + 1, min(off + lim, len(per_turn)) + 1))
            recent = (await store.load("s", recent=7)).recent
            assert [m.seq for m in recent] == list(range(max(0, total - 7), total))

    _run(check)


async def test_a_lookup_takes_few_probes(tmp_path: Path) -> None:
    """The recent window of a 3,000-message session is found in a handful of reads,
    far fewer than a plain binary search; an uneven session stays within twice one."""
    async with open_store(f"sqlite:///{tmp_path}/s.db", secret=SECRET) as store:
        assert isinstance(store, SQLiteStore)
        await fill(store, "even", 1_500)
        await _shaped_uneven(store)
        probes: list[str] = []
        store._c.conn.set_trace_callback(probes.append)
        try:
            await store.load("even", recent=50)
            even = sum(p.startswith("SELECT rseq, key FROM") for p in probes)
            probes.clear()
            await store.messages("uneven", 1_234, 3)
            uneven = sum(p.startswith("SELECT rseq, key FROM") for p in probes)
        finally:
            store._c.conn.set_trace_callback(None)
    assert 1 <= even <= 4
    assert 1 <= uneven <= 2 * math.ceil(math.log2(4_500)) + 2


async def _shaped_uneven(store: SQLiteStore) -> None:
    """Session ``uneven``: runs of one-message turns, then turns of 40 messages."""
    await store.create(SessionMeta(id="uneven"))
    token = await store.acquire("uneven", "w", 60.0)
    seq = 0
    for turn in range(1, 301):
        n = 40 if turn % 50 > 40 else 1
        await store.append_turn("uneven", commit(turn, seq, n), token=token)
        seq += n


async def test_a_version_1_file_is_migrated_and_reads_the_same(tmp_path: Path) -> None:
    """A file at schema 1 (with its index) opens at the current version: the index
    is replaced, the data verifies, and lookups and summaries work."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    for statement in SQLITE[1]:
        conn.execute(statement)
    conn.execute("PRAGMA user_version=1")
    conn.close()
    # Written through version 1's index: open without migrating, as old code would
    # (today's code also reads version 3's fences table: there for the writes only).
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(SQLITE[3][0])
    conn.close()
    v1 = SQLiteStore(f"sqlite:///{path}", path, secret=SECRET)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sessions.store.sqlite_open._migrate", lambda *args: None)
        await v1.open()
    async with v1:
        token = await fill(v1, "s1", 20)
        await v1.append_summary("s1", Message(0, "summary", "early", 0, 1.0), 9, token=token)
        await fill(v1, "s1", 5)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TABLE fences")
    conn.close()
    async with open_store(f"sqlite:///{path}", secret=SECRET) as store:
        assert await store.verify("s1") == 25 * 3 + 1
        assert [m.seq for m in await store.messages("s1", 11, 3)] == [11, 12, 13]
        assert [t.turn for t in await store.turns("s1", 20, 2)] == [21, 22]
        loaded = await store.load("s1", recent=4)
        assert loaded.summary is not None and loaded.summary.content == "early"
        assert [m.seq for m in loaded.recent] == [46, 47, 48, 49]
    conn = sqlite3.connect(path)
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SQLITE_VERSION
    conn.close()
    assert "records_by_key" not in indexes and "records_summaries" in indexes
    async with open_store(f"sqlite:///{path}", secret=SECRET) as store:
        assert await store.delete("s1")  # version 3's fences table is there and used
        await store.create(SessionMeta(id="s1"))
        assert (await store.load("s1")).meta.version > token


@pytest.mark.parametrize(
    ("edit", "read"),
    [
        ("UPDATE records SET key='x' WHERE kind='message' AND key=35", "load"),
        ("UPDATE records SET key=35.5 WHERE kind='message' AND key=35", "load"),
        ("UPDATE records SET key='x' WHERE kind='turn' AND key=5", "turns"),
    ],
)
async def test_an_edited_key_column_is_reported_as_tampering(
    tmp_path: Path, edit: str, read: str
) -> None:
    """The unsigned ``key`` column edited to another type: the search over it reports
    the session as tampered (naming it), never a raw TypeError."""
    url = f"sqlite:///{tmp_path}/s.db"
    async with open_store(url, secret=SECRET) as store:
        await fill(store, "s", 20)
    conn = sqlite3.connect(tmp_path / "s.db")
    conn.execute(edit)
    conn.commit()
    conn.close()
    async with open_store(url, secret=SECRET) as store:
        call = store.load("s", recent=5) if read == "load" else store.turns("s", 3, 4)
        with pytest.raises(SessionTampered, match="'s'"):
            await call


def _sqlite_schema(path: Path, version: int) -> None:
    """An empty store file at schema ``version``, as that version's code made it."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    for step in range(1, version + 1):
        for statement in SQLITE[step]:
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version={version}")
    conn.close()


def _all_records(path: Path) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT * FROM records ORDER BY session_id, rseq").fetchall()
    conn.close()
    return rows


def _records_layout(path: Path) -> tuple[str, set[str]]:
    """The ``records`` table's definition and the names of its indexes."""
    conn = sqlite3.connect(path)
    sql = conn.execute("SELECT sql FROM sqlite_master WHERE name='records'").fetchone()[0]
    names = conn.execute("SELECT name FROM sqlite_master WHERE tbl_name='records'").fetchall()
    conn.close()
    return sql, {n for (n,) in names if n != "records"}


async def test_a_version_4_file_moves_its_records_to_a_rowid_table(tmp_path: Path) -> None:
    """A store written at schema 4 (records clustered by session) opens at version 5:
    every record is copied unchanged (each chain verifies, reads answer the same), the
    table has a rowid and an index on (session_id, rseq), and writing goes on."""
    path = tmp_path / "v4.db"
    _sqlite_schema(path, 4)
    v4 = SQLiteStore(f"sqlite:///{path}", path, secret=SECRET)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sessions.store.sqlite_open._migrate", lambda *args: None)
        await v4.open()
    async with v4:
        tokens = {sid: await fill(v4, sid, 12) for sid in ("a", "b")}
        await v4.append_summary("a", Message(0, "summary", "early", 0, 1.0), 9, token=tokens["a"])
    before = _all_records(path)
    assert "WITHOUT ROWID" in _records_layout(path)[0]
    async with open_store(f"sqlite:///{path}", secret=SECRET) as store:
        assert isinstance(store, SQLiteStore)
        assert await store.verify("a") == 12 * 3 + 1 and await store.verify("b") == 12 * 3
        assert _all_records(path) == before
        assert [m.seq for m in await store.messages("b", 5, 3)] == [5, 6, 7]
        loaded = await store.load("a", recent=2)
        assert loaded.summary is not None and loaded.summary.content == "early"
        await fill(store, "b", 2)
        assert await store.verify("b") == 14 * 3
    sql, indexes = _records_layout(path)
    assert "WITHOUT ROWID" not in sql
    assert indexes == {"records_by_seq", "records_summaries"}
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SQLITE_VERSION
    conn.close()


async def test_a_version_4_file_is_read_where_it_cannot_be_migrated(tmp_path: Path) -> None:
    """Read-only, a schema 4 file (records clustered by session) is read as it is."""
    from sessions.store.sqlite_open import connect_read_only

    path = tmp_path / "v4.db"
    _sqlite_schema(path, 4)
    conn = connect_read_only(f"sqlite:///{path}", path, busy_ms=100)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 4
    conn.close()
