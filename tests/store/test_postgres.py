"""The PostgreSQL store: schema versions, reconnects, shared use, unreachable servers."""

from __future__ import annotations

import anyio
import psycopg
import pytest

from engine.errors import SessionBusy, StoreError, StoreVersionUnsupported
from sessions.store import open_store
from sessions.store.base import SessionMeta
from sessions.store.migrations import SCHEMA_VERSION
from sessions.store.postgres import PostgresStore

from . import SECRET, fill

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
