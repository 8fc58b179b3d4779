"""Schema 6 (the listing indexes on ``sessions``): an older store gains them on open, in
the migration's one transaction, keeping every session; killed mid-migration (SIGKILL,
after the first index was built) the store is still the old version, whole, and the
next open migrates it."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from sessions.store import SQLiteStore, open_store
from sessions.store.base import Listed, SessionMatch, SessionMeta
from sessions.store.migrations import POSTGRES, SCHEMA_VERSION, SQLITE, SQLITE_VERSION

from . import SECRET, fill

ROOT = Path(__file__).resolve().parents[2]
INDEXES = {"sessions_by_agent", "sessions_by_agent_type", "sessions_by_type"}

# Runs the open with version 6's statements replaced by a generator that builds the
# first index, then kills the process: the transaction is neither committed nor rolled
# back by the dying process (argv: backend, URL).
_DIE_MID_MIGRATION = """
import os, signal, sys
import anyio
from sessions.store import open_store
from sessions.store.migrations import SQLITE, POSTGRES

backend, url = sys.argv[1], sys.argv[2]
steps = SQLITE if backend == "sqlite" else POSTGRES

def dying():
    yield steps[6][0]
    os.kill(os.getpid(), signal.SIGKILL)

import sessions.store.pg_db as pg_db
import sessions.store.sqlite_open as sqlite_open

if backend == "sqlite":
    sqlite_open.SQLITE = {**steps, 6: dying()}
else:
    pg_db.POSTGRES = {**steps, 6: dying()}

async def main():
    async with open_store(url, secret=b"test-secret-key"):
        pass

anyio.run(main)
"""


def _die_mid_migration(backend: str, url: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _DIE_MID_MIGRATION, backend, url],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def _sqlite_v5(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    for step in range(1, 6):
        for statement in SQLITE[step]:
            conn.execute(statement)
    conn.execute("PRAGMA user_version=5")
    conn.close()


def _sqlite_layout(path: Path) -> tuple[int, set[str]]:
    conn = sqlite3.connect(path)
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    names = conn.execute("SELECT name FROM sqlite_master WHERE tbl_name='sessions'").fetchall()
    conn.close()
    return version, {n for (n,) in names if n.startswith("sessions_by")}


async def _written_at_v5(path: Path) -> None:
    """Sessions written by version 5's code (the open migrates nothing)."""
    v5 = SQLiteStore(f"sqlite:///{path}", path, secret=SECRET)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sessions.store.sqlite_open._migrate", lambda *args: None)
        await v5.open()
    async with v5:
        for i in range(40):
            await v5.create(SessionMeta(f"s{i:02d}", agent_id="rare" if i % 13 == 5 else "plain"))
        for sid in ("s05", "s18"):
            await fill(v5, sid, 3)


async def _check_migrated(url: str) -> None:
    async with open_store(url, secret=SECRET) as store:
        rare = await store.list_sessions(0, 10, match=SessionMatch(agent_id="rare"))
        assert [m.id for m in rare] == ["s05", "s18", "s31"]
        assert isinstance(rare, Listed) and rare.scanned_to is None
        assert await store.verify("s18") == 9  # 3 turns of 3 records, unchanged
        turns = (await store.load("s05")).meta.turn_count
        await fill(store, "s05", 1)  # writing goes on
        assert await store.verify("s05") == (turns + 1) * 3


async def test_a_version_5_sqlite_store_gains_the_listing_indexes(tmp_path: Path) -> None:
    path = tmp_path / "v5.db"
    _sqlite_v5(path)
    await _written_at_v5(path)
    assert _sqlite_layout(path) == (5, set())
    await _check_migrated(f"sqlite:///{path}")
    assert _sqlite_layout(path) == (SQLITE_VERSION, INDEXES) and SQLITE_VERSION == 6
    await _check_migrated(f"sqlite:///{path}")  # a second open changes nothing
    assert _sqlite_layout(path) == (6, INDEXES)


async def test_a_sqlite_migration_killed_midway_leaves_version_5(tmp_path: Path) -> None:
    """SIGKILL after the first index is built: the file is version 5 without any of the
    indexes (the transaction never committed); the next open migrates it."""
    path = tmp_path / "v5.db"
    _sqlite_v5(path)
    await _written_at_v5(path)
    _die_mid_migration("sqlite", f"sqlite:///{path}")
    assert _sqlite_layout(path) == (5, set())
    await _check_migrated(f"sqlite:///{path}")
    assert _sqlite_layout(path) == (6, INDEXES)


def _pg_layout(url: str) -> tuple[int, set[str]]:
    with psycopg.connect(url, autocommit=True) as pg:
        row = pg.execute("SELECT max(version) FROM turngraph_schema").fetchone()
        names = pg.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename='sessions' "
            "AND schemaname=current_schema()"
        ).fetchall()
    assert row is not None
    return row[0], {n for (n,) in names if n.startswith("sessions_by")}


async def _pg_v4(url: str) -> None:
    """A version 4 PostgreSQL store (its tables as that version made them), with
    sessions written by today's code without migrating."""
    with psycopg.connect(url, autocommit=True) as pg:
        for step in range(1, 5):
            for statement in POSTGRES[step]:
                pg.execute(statement)
        pg.execute("CREATE TABLE turngraph_schema (version INTEGER)")
        pg.execute("INSERT INTO turngraph_schema VALUES (4)")
    with pytest.MonkeyPatch.context() as mp:

        async def no_migration(*args: object, **kwargs: object) -> None:
            return None

        mp.setattr("sessions.store.pg_db._migrate", no_migration)
        async with open_store(url, secret=SECRET) as v4:
            for i in range(40):
                agent = "rare" if i % 13 == 5 else "plain"
                await v4.create(SessionMeta(f"s{i:02d}", agent_id=agent))
            for sid in ("s05", "s18"):
                await fill(v4, sid, 3)


@pytest.mark.postgres
async def test_a_version_4_postgres_store_gains_the_listing_indexes(pg_url: str) -> None:
    await _pg_v4(pg_url)
    assert _pg_layout(pg_url) == (4, set())
    await _check_migrated(pg_url)
    assert _pg_layout(pg_url) == (SCHEMA_VERSION, INDEXES) and SCHEMA_VERSION == 6
    await _check_migrated(pg_url)
    assert _pg_layout(pg_url) == (6, INDEXES)


@pytest.mark.postgres
async def test_a_postgres_migration_killed_midway_leaves_version_4(pg_url: str) -> None:
    await _pg_v4(pg_url)
    _die_mid_migration("postgres", pg_url)
    assert _pg_layout(pg_url) == (4, set())
    await _check_migrated(pg_url)
    assert _pg_layout(pg_url) == (6, INDEXES)
