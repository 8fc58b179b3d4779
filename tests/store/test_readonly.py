"""Read-only and full disks: a store that cannot be written can still be read, a write is
refused with a typed error that says why and names the file.

Read-only is made real: as root (who may write any file whatever its mode) a small
tmpfs mounted read-only; otherwise file and folder modes.  The full disk is a tiny tmpfs,
so it needs root (skipped otherwise, with the reason).  PostgreSQL: a read-only role.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from sessions import Limits, SessionManager
from sessions.errors import StoreFull, StoreReadOnly
from sessions.store import open_store
from sessions.store.postgres import PostgresStore
from sessions.store.sqlite import SQLiteStore

from ..sessions.session_kit import chain_graph, reply_registry
from . import SECRET

ROOT = os.geteuid() == 0


def _mount(where: Path, size: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)


def _umount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], check=False)


def _manager(store: object) -> SessionManager:
    return SessionManager(
        store,  # type: ignore[arg-type]
        registry=reply_registry(),
        turn_graph=chain_graph(),
        limits=Limits(compaction_threshold_tokens=None),
        store_secret=SECRET,
    )


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    """A folder that :func:`_make_read_only` can make read-only (a tmpfs as root)."""
    where = tmp_path / "mnt"
    if ROOT:
        try:
            _mount(where, "8m")
        except (OSError, subprocess.CalledProcessError) as exc:
            pytest.skip(f"cannot mount a tmpfs here: {exc}")
    else:
        where.mkdir()
    try:
        yield where
    finally:
        if ROOT:
            _umount(where)
        else:
            for p in (where, *where.iterdir()):
                p.chmod(0o700)


async def _one_turn_then_read_only(url: str, folder: Path) -> None:
    """Session s1 takes one turn ("hello"); then ``folder`` turns read-only."""
    async with open_store(url, secret=SECRET) as store, _manager(store) as m:
        s = await m.get_or_create("s1")
        assert (await s.send("hello")).ok
    _make_read_only(folder)


def _make_read_only(folder: Path) -> None:
    if ROOT:
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    else:
        for p in folder.iterdir():
            p.chmod(0o400)
        folder.chmod(0o500)


async def test_a_read_only_sqlite_store_reads_and_refuses_writes(folder: Path) -> None:
    """On a read-only folder, a store opens, loads and lists sessions; a write raises
    StoreReadOnly naming the file; ``sessions list``/``show`` work from the CLI."""
    db = folder / "s.db"
    url = f"sqlite:///{db}"
    await _one_turn_then_read_only(url, folder)
    async with open_store(url, secret=SECRET, create=False) as store:
        assert [meta.id for meta in await store.list_sessions()] == ["s1"]
        loaded = await store.load("s1")
        assert [msg.content for msg in loaded.recent] == ["hello", "re: hello"]
        with pytest.raises(StoreReadOnly, match=r"read-only") as info:
            await store.acquire("s1", "me", 30.0)
        assert str(db) in str(info.value)
    async with SQLiteStore(url, db, secret=SECRET) as store:  # create=True: still opens
        assert await store.exists("s1")
    env = {**os.environ, "TURNGRAPH_SECRET": SECRET.decode()}
    for argv, shown in ((["list"], "s1"), (["show", "s1"], "hello")):
        cmd = [sys.executable, "-m", "engine.run", "sessions", *argv, "--store", url]
        run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)  # noqa: ASYNC221
        assert run.returncode == 0, run.stderr
        assert shown in run.stdout


@pytest.mark.skipif(not ROOT, reason="a full disk is a tiny tmpfs, which needs root to mount")
async def test_a_full_disk_is_store_full_and_the_session_goes_on(tmp_path: Path) -> None:
    """SQLITE_FULL is StoreFull naming the file; nothing half-written; once space is
    free again the same session takes its next turn."""
    where = tmp_path / "full"
    _mount(where, "1m")
    try:
        db = where / "s.db"
        async with open_store(f"sqlite:///{db}", secret=SECRET) as store, _manager(store) as m:
            s = await m.get_or_create("s1")
            assert (await s.send("hello")).ok
            filler = where / "filler"
            with open(filler, "wb") as f, pytest.raises(OSError, match="space"):  # noqa: ASYNC230
                f.write(b"x" * (2 << 20))  # fills the disk (ENOSPC)
            f.close()
            # Then leave a little room: a few turns fit, not twenty.
            os.truncate(filler, max(0, filler.stat().st_size - 300_000))

            async def fill() -> None:
                for _ in range(20):
                    await s.send("y" * 50_000)

            with pytest.raises(StoreFull, match="disk full") as info:
                await fill()
            assert str(db) in str(info.value) and s.phase == "idle"
            count = s.turn_count
            filler.unlink()
            assert (await s.send("after")).ok and s.turn_count == count + 1
        async with open_store(f"sqlite:///{db}", secret=SECRET) as store:
            assert (await store.load("s1")).meta.turn_count == count + 1
    finally:
        _umount(where)


async def test_a_read_only_postgres_role_reads_without_ddl(pg_url: str) -> None:
    """A role that may only SELECT opens an existing store (no DDL), reads, and gets
    StoreReadOnly-or-permission errors as typed StoreErrors when it writes."""
    async with PostgresStore(pg_url, secret=SECRET) as store, _manager(store) as m:
        assert (await (await m.get_or_create("s1")).send("hello")).ok
    role = f"tg_ro_{uuid.uuid4().hex[:8]}"
    schema = pg_url.rsplit("search_path%3D", 1)[1]
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
        admin.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"')
        admin.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"')
    ro_url = pg_url.replace("postgres@", f"{role}@", 1)
    try:
        async with PostgresStore(ro_url, secret=SECRET, create=False) as store:
            assert [meta.id for meta in await store.list_sessions()] == ["s1"]
            loaded = await store.load("s1")
            assert [msg.content for msg in loaded.recent] == ["hello", "re: hello"]
            with pytest.raises(StoreReadOnly, match="read-only"):
                await store.acquire("s1", "me", 30.0)
    finally:
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(f'DROP OWNED BY "{role}"')
            admin.execute(f'DROP ROLE "{role}"')


@pytest.mark.skipif(not ROOT, reason="a read-only mount (EROFS) needs root to remount")
async def test_a_read_only_data_folder_still_reads_with_its_witness(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Store, key and rollback witness all on one read-only mount (a backup mounted to
    be inspected): the store opens and reads, checked against the witness read-only
    (it used to refuse to open at all: the witness could not be opened for writing)."""
    monkeypatch.setenv("TURNGRAPH_HOME", str(folder / "home"))
    db = folder / "s.db"
    url = f"sqlite:///{db}"
    await _one_turn_then_read_only(url, folder)
    async with open_store(url, secret=SECRET, create=False) as store:
        assert [meta.id for meta in await store.list_sessions()] == ["s1"]
        assert (await store.load("s1")).meta.turn_count == 1
