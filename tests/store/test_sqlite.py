"""The SQLite store: URLs, defaults, pragmas, schema versions, bad files, keys."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sessions.errors import (
    SessionBusy,
    SessionTampered,
    StoreCorrupt,
    StoreError,
    StorePathInvalid,
    StoreVersionUnsupported,
)
from sessions.store import (
    MemoryStore,
    SQLiteStore,
    data_dir,
    default_store_url,
    open_store,
)
from sessions.store.base import SessionMeta
from sessions.store.migrations import SQLITE_VERSION as SCHEMA_VERSION

from . import SECRET, fill

ROOT = Path(__file__).parents[2]


def test_relative_and_absolute_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sqlite:///rel.db is relative to the cwd; sqlite:////abs.db is absolute."""
    monkeypatch.chdir(tmp_path)
    rel = open_store("sqlite:///data/rel.db", secret=SECRET)
    assert isinstance(rel, SQLiteStore) and rel.path == Path("data/rel.db")
    absolute = open_store(f"sqlite:///{tmp_path}/abs.db", secret=SECRET)
    assert isinstance(absolute, SQLiteStore) and absolute.path == tmp_path / "abs.db"
    assert isinstance(open_store("memory:"), MemoryStore)
    fast = open_store(f"sqlite:///{tmp_path}/f.db?synchronous=normal", secret=SECRET)
    assert isinstance(fast, SQLiteStore) and fast.path == tmp_path / "f.db"


async def test_missing_parent_directory_is_refused(tmp_path: Path) -> None:
    """A store in a folder that does not exist is an error, not a new directory tree
    (only the data directory is made: tests/store/test_portable.py)."""
    with pytest.raises(StorePathInvalid, match="does not exist"):
        async with open_store(f"sqlite:///{tmp_path}/a/b/s.db", secret=SECRET):
            pass
    assert not (tmp_path / "a").exists()
    async with open_store(f"sqlite:///{tmp_path}/s.db", secret=SECRET) as s:
        await s.create(SessionMeta(id="x"))
    assert stat.S_IMODE((tmp_path / "s.db").stat().st_mode) == 0o600


async def test_read_only_open_of_a_missing_file_creates_nothing(tmp_path: Path) -> None:
    """create=False: a missing file is "no such store"; no folder, database or key file
    is made.  An existing store opens normally."""
    path = tmp_path / "no" / "such" / "s.db"
    with pytest.raises(StoreError, match=f"no such store: {path}"):
        await open_store(f"sqlite:///{path}", create=False).open()
    assert not (tmp_path / "no").exists() and not (tmp_path / "home").exists()
    path.parent.mkdir(parents=True)
    async with open_store(f"sqlite:///{path}", secret=SECRET) as s:
        await s.create(SessionMeta(id="x"))
    async with open_store(f"sqlite:///{path}", secret=SECRET, create=False) as s:
        assert [m.id for m in await s.list_sessions()] == ["x"]


def test_default_url_and_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Default: $TURNGRAPH_STORE, else <data dir>/turngraph.db; data dir from $TURNGRAPH_HOME."""
    monkeypatch.setenv("TURNGRAPH_HOME", str(tmp_path / "h"))
    assert data_dir() == tmp_path / "h"
    assert default_store_url() == f"sqlite:///{tmp_path}/h/turngraph.db"
    store = open_store(secret=SECRET)
    assert isinstance(store, SQLiteStore) and store.path == tmp_path / "h" / "turngraph.db"
    monkeypatch.delenv("TURNGRAPH_HOME")
    assert data_dir() == Path.home() / ".local" / "share" / "turngraph"
    monkeypatch.setenv("TURNGRAPH_STORE", "memory:")
    assert isinstance(open_store(), MemoryStore)


@pytest.mark.parametrize(
    "url", ["redis://localhost", "sqlite://", "sqlite:///", "nonsense", "sqlite:///x.db?foo=1"]
)
def test_bad_urls_are_clear_errors(url: str) -> None:
    """An unknown scheme or a SQLite URL without a file raises StoreError."""
    with pytest.raises(StoreError) as info:
        open_store(url)
    assert "sqlite:///" in str(info.value)


def test_password_is_redacted() -> None:
    """A store's url never shows the password."""
    pytest.importorskip("psycopg")
    store = open_store("postgresql://bob:hunter2@db.example:5432/x")
    assert store.url == "postgresql://bob:***@db.example:5432/x"


async def test_pragmas_and_schema_version(tmp_path: Path) -> None:
    """WAL, synchronous=FULL, foreign keys, and the schema version are set on open."""
    store = SQLiteStore("sqlite:///t", tmp_path / "t.db", secret=SECRET)
    async with store:
        conn = store._c.conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_data_survives_reopen(tmp_path: Path) -> None:
    """A committed session is there, verified, after closing and reopening the file."""
    url = f"sqlite:///{tmp_path}/s.db"
    async with open_store(url, secret=SECRET) as s:
        await fill(s, "s1", 4)
    async with open_store(url, secret=SECRET) as s:
        loaded = await s.load("s1", recent=3)
        assert loaded.meta.turn_count == 4 and [m.seq for m in loaded.recent] == [5, 6, 7]
        assert await s.verify("s1") == 12


async def test_two_stores_on_one_file_share_leases(tmp_path: Path) -> None:
    """Two store objects (as two processes would) see each other's leases."""
    url = f"sqlite:///{tmp_path}/s.db"
    async with open_store(url, secret=SECRET) as a, open_store(url, secret=SECRET) as b:
        await fill(a, "s1", 1, owner="A")
        with pytest.raises(SessionBusy):
            await b.acquire("s1", "B", 30)
        assert (await b.load("s1")).meta.turn_count == 1


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A file written by newer code raises StoreVersionUnsupported, untouched."""
    path = tmp_path / "new.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreVersionUnsupported, match="newer"):
        await open_store(f"sqlite:///{path}", secret=SECRET).open()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    conn.close()


@pytest.mark.parametrize(
    "content",
    [b"this is a text file, not a database\n" * 10, os.urandom(8192), b"SQLite format 3\x00"],
    ids=["text", "binary", "short-header"],
)
async def test_not_a_database(tmp_path: Path, content: bytes) -> None:
    """A text file, binary junk or a stub header raises StoreCorrupt naming the path,
    and is left untouched."""
    path = tmp_path / "junk.db"
    path.write_bytes(content)
    with pytest.raises(StoreCorrupt) as info:
        await open_store(f"sqlite:///{path}", secret=SECRET).open()
    assert str(path) in str(info.value)
    # Refused up front, before SQLite opened it: no translated SQLite error, and the
    # file is left exactly as it was, without a log beside it.
    assert info.value.__cause__ is None
    assert path.read_bytes() == content
    assert not Path(f"{path}-wal").exists()  # noqa: ASYNC240  # a test's quick stat


def cut_file(path: Path, extra: int) -> None:
    """Truncate a cleanly closed database to about half, plus ``extra`` bytes."""
    assert not Path(f"{path}-wal").exists()  # closed cleanly: everything is in the file
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2 // 4096 * 4096 + extra)


@pytest.mark.parametrize("cut", [100, 0], ids=["mid-page", "page-boundary"])
async def test_truncated_database(tmp_path: Path, cut: int) -> None:
    """A real store cut short raises StoreCorrupt naming the path."""
    path = tmp_path / "cut.db"
    async with open_store(f"sqlite:///{path}", secret=SECRET) as s:
        await fill(s, "s1", 50)
    cut_file(path, cut)
    with pytest.raises(StoreCorrupt, match="truncated") as info:
        await open_store(f"sqlite:///{path}", secret=SECRET).open()
    assert str(path) in str(info.value)


async def test_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    """Without a secret, a 0600 key file is created in the data dir and reused."""
    url = f"sqlite:///{tmp_path}/s.db"
    async with open_store(url) as s:
        await fill(s, "s1", 1)
    key = data_dir() / "secret.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    async with open_store(url) as s:
        assert await s.verify("s1") == 3
    async with open_store(url, secret=b"wrong") as s:
        with pytest.raises(SessionTampered):
            await s.load("s1")


def test_racing_processes_agree_on_one_key(tmp_path: Path) -> None:
    """Many processes creating the key file at once all end up with the same key."""
    code = "from sessions.store import load_key; print(load_key().hex())"
    env = dict(os.environ, TURNGRAPH_HOME=str(tmp_path / "race-home"), PYTHONPATH=str(ROOT))
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    keys = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert len(keys) == 1 and len(keys.pop()) == 64
    assert sorted(p.name for p in (tmp_path / "race-home").iterdir()) == ["secret.key"]


async def test_loose_key_file_is_refused(tmp_path: Path) -> None:
    """A key file readable by group or others is refused with a fix in the message."""
    key = data_dir() / "secret.key"
    key.parent.mkdir(parents=True)
    key.write_text("a passphrase\n")
    key.chmod(0o644)
    with pytest.raises(StoreError, match="chmod 600"):
        await open_store(f"sqlite:///{tmp_path}/s.db").open()


async def test_env_secret_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$TURNGRAPH_SECRET is the key when set (same derivation as secret=)."""
    monkeypatch.setenv("TURNGRAPH_SECRET", "correct horse")
    url = f"sqlite:///{tmp_path}/s.db"
    async with open_store(url) as s:
        await fill(s, "s1", 1)
    assert not (data_dir() / "secret.key").exists()
    async with open_store(url, secret="correct horse") as s:
        assert await s.verify("s1") == 3


async def test_store_must_be_open(tmp_path: Path) -> None:
    """Using a store before open() is a clear StoreError."""
    store = open_store(f"sqlite:///{tmp_path}/s.db", secret=SECRET)
    with pytest.raises(StoreError, match="not open"):
        await store.exists("x")
    with pytest.raises(StoreError, match="not open"):
        await store.create(SessionMeta(id="x"))
