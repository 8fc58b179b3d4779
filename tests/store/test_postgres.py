"""The PostgreSQL store: schema versions, reconnects, shared use, unreachable servers,
the single-statement turn write (rows, fencing, rollback, cancellation)."""

from __future__ import annotations

import itertools
import logging

import anyio
import psycopg
import pytest

from sessions.errors import (
    Fenced,
    SessionBusy,
    SessionNotFound,
    StoreError,
    StoreVersionUnsupported,
)
from sessions.store import open_store
from sessions.store.base import Checkpoint, SessionMeta
from sessions.store.codec import KIND_MESSAGE as M
from sessions.store.codec import KIND_TURN as T
from sessions.store.migrations import SCHEMA_VERSION
from sessions.store.postgres import PostgresStore

from . import SECRET, commit, fill

pytestmark = pytest.mark.postgres


async def test_schema_is_created_once_and_versioned(pg_url: str) -> None:
    """Opening creates the tables and records the schema version; reopening keeps it."""
    async with open_store(pg_url, secret=SECRET) as s:
        await fill(s, "s1", 3)
    async with open_store(pg_url, secret=SECRET) as s:
        assert await s.verify("s1") == 9
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT version FROM turngraph_schema").fetchall() == [
            (SCHEMA_VERSION,)
        ]


async def test_concurrent_first_opens_migrate_once(pg_url: str) -> None:
    """Several processes opening an empty database at once agree on one schema."""
    stores = [open_store(pg_url, secret=SECRET) for _ in range(4)]
    async with anyio.create_task_group() as tg:
        for s in stores:
            tg.start_soon(s.open)
    await stores[0].create(SessionMeta(id="x"))
    assert await stores[3].exists("x")
    for s in stores:
        await s.close()


async def test_newer_schema_is_refused(pg_url: str) -> None:
    """A database written by newer code raises StoreVersionUnsupported."""
    async with open_store(pg_url, secret=SECRET):
        pass
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE turngraph_schema SET version=%s", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreVersionUnsupported, match="newer"):
        await open_store(pg_url, secret=SECRET).open()


async def test_two_stores_share_leases(pg_url: str) -> None:
    """Two pools on one database (two workers) see each other's leases and data."""
    async with open_store(pg_url, secret=SECRET) as a, open_store(pg_url, secret=SECRET) as b:
        await fill(a, "s1", 2, owner="A")
        with pytest.raises(SessionBusy):
            await b.acquire("s1", "B", 30)
        assert [m.seq for m in (await b.load("s1")).recent] == [0, 1, 2, 3]


async def test_unreachable_server_is_a_store_error() -> None:
    """A server that does not answer gives one StoreError, with the password hidden."""
    store = PostgresStore(
        "postgresql://u:secretpw@127.0.0.1:1/x", secret=SECRET, connect_timeout=1.0
    )
    with pytest.raises(StoreError, match="cannot connect") as info:
        await store.open()
    assert "secretpw" not in str(info.value)


async def test_refused_connection_is_one_reason_at_once(caplog: pytest.LogCaptureFixture) -> None:
    """A refused connection fails on the first try with the OS's reason, in one line,
    and the pool never starts (so it logs no retries)."""
    store = PostgresStore("postgresql://u:secretpw@127.0.0.1:1/x", secret=SECRET)
    with pytest.raises(StoreError, match="cannot connect") as info:
        await store.open()
    assert "Connection refused" in info.value.reason and "\n" not in str(info.value)
    assert "secretpw" not in str(info.value)
    assert [r for r in caplog.records if r.name.startswith("psycopg")] == []


async def test_read_only_open_creates_no_tables(pg_url: str) -> None:
    """create=False on a database without turngraph's tables is "no such store" and
    creates nothing; once the store exists it opens normally."""
    with pytest.raises(StoreError, match="no such store"):
        await open_store(pg_url, secret=SECRET, create=False).open()
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT to_regclass('turngraph_schema')").fetchone() == (None,)
    async with open_store(pg_url, secret=SECRET) as s:
        await fill(s, "s1", 1)
    async with open_store(pg_url, secret=SECRET, create=False) as s:
        assert [m.id for m in await s.list_sessions()] == ["s1"]


def _checkpoint(turn: int) -> Checkpoint:
    return Checkpoint(turn, "h", "t", "in", "a", "b", {"k": 1}, (), 1.0)


def _raw_records(url: str, sid: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        cur = conn.execute(
            "SELECT rseq, kind, key, body, prev_mac, mac FROM records WHERE session_id=%s "
            "ORDER BY rseq",
            (sid,),
        )
        return cur.fetchall()


async def test_a_turn_is_written_as_rows_that_verify(pg_url: str) -> None:
    """A turn's records (sent as column arrays) land as one row each, in order, with
    awkward text intact and MACs chaining; the turn's commit deletes the checkpoint."""
    text = 'ünïcode ✓ "q" \\ {a,b} NULL \n\t\x01 end'
    async with PostgresStore(pg_url, secret=SECRET) as s:
        token = await fill(s, "s1", 1, per_turn=3)
        await s.save_checkpoint("s1", _checkpoint(2), token=token)
        await s.append_turn("s1", commit(2, 3, 3, content=text), token=token)
        assert (await s.load("s1")).checkpoint is None
        assert await s.verify("s1") == 8
        assert [m.content for m in await s.messages("s1", 3)] == [f"{text} {i}" for i in (3, 4, 5)]
    rows = _raw_records(pg_url, "s1")
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (i, k, key)
        for i, (k, key) in enumerate(
            [(M, 0), (M, 1), (M, 2), (T, 1), (M, 3), (M, 4), (M, 5), (T, 2)]
        )
    ]
    assert all(cur[4] == prev[5] for prev, cur in itertools.pairwise(rows))


async def test_stale_or_missing_leaves_the_connection_clean(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """On one pooled connection: a stale token is Fenced and writes nothing, a missing
    session is not found, and each time the transaction is rolled back before the
    connection goes back (the pool has nothing to clean up; the next commit works)."""
    caplog.set_level(logging.WARNING)
    async with PostgresStore(pg_url, secret=SECRET, max_connections=1) as s:
        old = await fill(s, "s1", 1)
        await s.save_checkpoint("s1", _checkpoint(2), token=old)
        await s.acquire("s1", "w1", 0.0)  # expires at once: another owner may take it
        new = await s.acquire("s1", "w2", 30.0)
        rows = _raw_records(pg_url, "s1")
        with pytest.raises(Fenced) as info:
            await s.append_turn("s1", commit(2, 2), token=old)
        assert (info.value.expected, info.value.actual) == (old, new)
        with pytest.raises(SessionNotFound):
            await s.append_turn("nope", commit(1, 0), token=new)
        assert _raw_records(pg_url, "s1") == rows
        assert (await s.load("s1")).checkpoint == _checkpoint(2)
        await s.append_turn("s1", commit(2, 2), token=new)
        assert (await s.load("s1")).meta.turn_count == 2
    assert [r for r in caplog.records if r.name.startswith("psycopg")] == []


async def test_a_cancelled_commit_writes_nothing(pg_url: str) -> None:
    """A commit cancelled while it waits for the session's row lock writes nothing and
    leaves the store's only connection usable."""
    async with PostgresStore(pg_url, secret=SECRET, max_connections=1) as s:
        token = await fill(s, "s1", 1)
        with psycopg.connect(pg_url) as other:  # holds the row lock until it ends
            other.execute("SELECT 1 FROM sessions WHERE id='s1' FOR UPDATE")
            with anyio.move_on_after(0.3) as scope:
                await s.append_turn("s1", commit(2, 2), token=token)
            assert scope.cancelled_caught
        assert (await s.load("s1")).meta.turn_count == 1
        await s.append_turn("s1", commit(2, 2), token=token)
        assert await s.verify("s1") == 6
