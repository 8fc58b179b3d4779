"""The rollback witness: a session put back to an earlier, validly signed state is
refused with :class:`RolledBack` naming the session and both record counts.

Every rollback here leaves a chain that verifies (nothing is forged: older rows and
files are put back), so without the witness each load would succeed.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sessions.errors import RolledBack, SessionNotFound
from sessions.store import OpenStore, open_store
from sessions.store import witness as witness_mod
from sessions.store.durable import STATE_COLUMNS

from . import SECRET, fill
from .conftest import Raw


@pytest.fixture(autouse=True)
def _witness_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL keeps a witness only when asked; SQLite by default."""
    monkeypatch.setenv("TURNGRAPH_WITNESS", "on")


def _witness_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "home" / "witness").glob("*.log"))


async def _filled(url: str, turns: int, *sids: str) -> None:
    async with open_store(url, secret=SECRET) as s:
        for sid in sids:
            await fill(s, sid, turns)


def _put_row_back(raw: Raw, old: tuple[object, ...]) -> None:
    """Write an earlier ``sessions`` row of s1 over the current one (an UPDATE: in
    PostgreSQL, deleting the row would cascade to its records)."""
    sets = ", ".join(f"{c}=?" for c in STATE_COLUMNS.split(", "))
    raw.execute(f"UPDATE sessions SET {sets} WHERE id='s1'", old)


async def _rolled_back(url: str, sid: str = "s1") -> RolledBack:
    async with open_store(url, secret=SECRET) as s:
        with pytest.raises(RolledBack) as info:
            await s.load(sid)
        for read in (s.verify(sid), s.messages(sid), s.export(sid)):
            with pytest.raises(RolledBack):
                await read
    assert info.value.session_id == sid and f"'{sid}'" in str(info.value)
    return info.value


async def test_old_row_put_back_and_newer_records_deleted(durable_url: str, raw: Raw) -> None:
    """The session row of turn 2 put back, turns 3-4's records deleted: the chain
    verifies, the witness (4 turns, 12 records) does not match it."""
    await _filled(durable_url, 2, "s0", "s1")
    [old] = raw.execute(f"SELECT {STATE_COLUMNS} FROM sessions WHERE id='s1'")
    await _filled(durable_url, 2, "s1")
    raw.execute("DELETE FROM records WHERE session_id='s1' AND rseq>=6")
    _put_row_back(raw, old)
    err = await _rolled_back(durable_url)
    assert (err.witnessed, err.stored) == (12, 6)
    assert "12 records" in str(err) and "has 6" in str(err)
    async with open_store(durable_url, secret=SECRET) as s:
        assert len((await s.load("s0")).recent) == 4  # the others are untouched
        with pytest.raises(RolledBack):  # and no write builds on the old state
            await fill(s, "s1", 1)


async def test_rolled_back_then_advanced_past_the_witness(durable_url: str, raw: Raw) -> None:
    """Put back to turn 1, then a writer without the witness appends three turns: the
    store is now longer than the witness, but the witnessed head is not in its chain."""
    await _filled(durable_url, 1, "s1")
    [old] = raw.execute(f"SELECT {STATE_COLUMNS} FROM sessions WHERE id='s1'")
    await _filled(durable_url, 1, "s1")
    raw.execute("DELETE FROM records WHERE session_id='s1' AND rseq>=3")
    _put_row_back(raw, old)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TURNGRAPH_WITNESS", "off")
        async with open_store(durable_url, secret=SECRET) as s:
            await fill(s, "s1", 3, per_turn=4)  # other turns than the lost one
    err = await _rolled_back(durable_url)
    assert (err.witnessed, err.stored) == (6, 18)
    assert "not in it" in err.reason


async def test_honest_history_passes_and_a_lagging_witness_catches_up(
    durable_url: str, raw: Raw
) -> None:
    """Turns written without the witness (another tool, a crash before the witness
    line) leave the store ahead of it: that is no rollback, and the next verified load
    moves the witness up to the store's head, so a later rollback to turn 2 is caught."""
    await _filled(durable_url, 2, "s1")
    [old] = raw.execute(f"SELECT {STATE_COLUMNS} FROM sessions WHERE id='s1'")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TURNGRAPH_WITNESS", "off")
        await _filled(durable_url, 2, "s1")
    async with open_store(durable_url, secret=SECRET) as s:
        assert (await s.load("s1")).meta.turn_count == 4
    raw.execute("DELETE FROM records WHERE session_id='s1' AND rseq>=6")
    _put_row_back(raw, old)
    err = await _rolled_back(durable_url)
    assert (err.witnessed, err.stored) == (12, 6)


async def test_delete_recreate_and_import_are_not_rollbacks(durable: OpenStore) -> None:
    """A delete through the store clears the witness; a create or an import sets it."""
    await fill(durable, "s1", 3)
    doc = await durable.export("s1")
    await fill(durable, "s1", 2)
    await durable.import_(doc, replace=True)  # back to 3 turns, on purpose
    assert (await durable.load("s1")).meta.turn_count == 3
    assert await durable.delete("s1")
    await fill(durable, "s1", 1)
    assert (await durable.load("s1")).meta.turn_count == 1


@pytest.mark.postgres
async def test_one_postgres_store_spelled_two_ways_is_one_witness(pg_url: str) -> None:
    """A tool that reaches the same database with the password in the query and an
    application name (here: deletes and recreates s1) advances the same witness as the
    worker's URL does, so the worker sees no false rollback; a real one is still caught."""
    other = f"{pg_url}&password=hunter2&application_name=tool"
    raw = Raw(pg_url)
    await _filled(pg_url, 4, "s1")
    async with open_store(other, secret=SECRET) as s:
        assert await s.delete("s1")
        await fill(s, "s1", 1)
    async with open_store(pg_url, secret=SECRET) as s:
        assert (await s.load("s1")).meta.turn_count == 1
    [old] = raw.execute(f"SELECT {STATE_COLUMNS} FROM sessions WHERE id='s1'")
    await _filled(other, 2, "s1")
    raw.execute("DELETE FROM records WHERE session_id='s1' AND rseq>=3")
    _put_row_back(raw, old)
    err = await _rolled_back(pg_url)
    assert (err.witnessed, err.stored) == (9, 3)


async def test_session_missing_from_an_older_store(durable_url: str, raw: Raw) -> None:
    """A session that vanished without a delete through the store (its rows removed,
    or an older database put back) is RolledBack on load and on create, not silently
    started over; deleting it through the store clears that."""
    await _filled(durable_url, 1, "s1")
    raw.execute("DELETE FROM records WHERE session_id='s1'")
    raw.execute("DELETE FROM sessions WHERE id='s1'")
    async with open_store(durable_url, secret=SECRET) as s:
        with pytest.raises(RolledBack, match="missing from the store"):
            await s.load("s1")
        with pytest.raises(RolledBack):
            await fill(s, "s1", 1)
        assert not await s.delete("s1")
        with pytest.raises(SessionNotFound):
            await s.load("s1")
        await fill(s, "s1", 1)


def _copy(db: Path, to: Path) -> None:
    for suffix in ("", "-wal"):
        src = Path(f"{db}{suffix}")
        if src.exists():
            shutil.copyfile(src, f"{to}{suffix}")


def _put_back(saved: Path, db: Path) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    _copy(saved, db)


async def test_older_database_file_copied_over(tmp_path: Path) -> None:
    """Yesterday's database file copied over today's: every session that advanced is
    RolledBack, one made since is missing, one unchanged still loads."""
    db = tmp_path / "store.db"
    url = f"sqlite:///{db}"
    await _filled(url, 2, "s0", "s1")
    _copy(db, tmp_path / "saved.db")
    await _filled(url, 1, "s1", "s2")
    _put_back(tmp_path / "saved.db", db)
    err = await _rolled_back(url, "s1")
    assert (err.witnessed, err.stored) == (9, 6)
    async with open_store(url, secret=SECRET) as s:
        assert len((await s.load("s0")).recent) == 4
        with pytest.raises(RolledBack, match="missing"):
            await s.load("s2")


async def test_truncated_wal(tmp_path: Path) -> None:
    """The log cut back to where it ended after turn 2 (the last turns' frames lost):
    SQLite reads a valid, older database; the witness refuses it."""
    db = tmp_path / "store.db"
    url = f"sqlite:///{db}"
    async with open_store(url, secret=SECRET) as s:
        await fill(s, "s1", 2)
        size = os.stat(f"{db}-wal").st_size
        await fill(s, "s1", 2)
        _copy(db, tmp_path / "crashed.db")  # as a crash would leave them: log not applied
    _put_back(tmp_path / "crashed.db", db)
    os.truncate(f"{db}-wal", size)
    err = await _rolled_back(url, "s1")
    assert (err.witnessed, err.stored) == (12, 6)


async def test_missing_witness_is_not_checked_and_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With the witness file deleted, a rolled-back store loads (nothing to check
    against) and one warning says so; no error."""
    db = tmp_path / "store.db"
    url = f"sqlite:///{db}"
    await _filled(url, 1, "s1", "s2")
    _copy(db, tmp_path / "saved.db")
    await _filled(url, 1, "s1", "s2")
    _put_back(tmp_path / "saved.db", db)
    for path in _witness_files(tmp_path):
        path.unlink()
    with caplog.at_level(logging.WARNING, logger="turngraph.witness"):
        async with open_store(url, secret=SECRET) as s:
            assert (await s.load("s1")).meta.turn_count == 1
            assert (await s.load("s2")).meta.turn_count == 1
    [warning] = [r.getMessage() for r in caplog.records]
    assert "no rollback witness" in warning and str(db) in warning


async def test_witness_off_by_url(tmp_path: Path) -> None:
    """``?witness=off`` keeps no witness file."""
    db = tmp_path / "store.db"
    url = f"sqlite:///{db}?witness=off"
    await _filled(url, 1, "s1")
    assert _witness_files(tmp_path) == []


async def test_two_stores_share_one_witness_and_compaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two stores open on one file (as two processes would be) append to one witness;
    a compaction (here every 2 KiB) rewrites it whole; rollback is still caught."""
    monkeypatch.setattr(witness_mod, "COMPACT_BYTES", 2048)
    db = tmp_path / "store.db"
    url = f"sqlite:///{db}"
    async with open_store(url, secret=SECRET) as a, open_store(url, secret=SECRET) as b:
        for _ in range(10):
            await fill(a, "s1", 1)
            await fill(b, "s2", 1)
        _copy(db, tmp_path / "saved.db")  # mid-way: both at 10 turns
        await fill(a, "s1", 5)
        await fill(b, "s2", 5)
    [log] = _witness_files(tmp_path)
    assert log.stat().st_size < 2048 + 200  # compacted, not 30 turns of lines
    _put_back(tmp_path / "saved.db", db)
    for sid in ("s1", "s2"):
        err = await _rolled_back(url, sid)
        assert (err.witnessed, err.stored) == (45, 30)


_ROOT = Path(__file__).resolve().parents[2]
_WRITER = """
import sys, anyio
from sessions.store import open_store, witness
from tests.store import SECRET, fill
witness.COMPACT_BYTES = 2048  # compact often, while the other process appends
async def main() -> None:
    async with open_store(sys.argv[1], secret=SECRET) as s:
        await fill(s, sys.argv[2], 40)
anyio.run(main)
"""


def _run_writers(url: str, sids: tuple[str, ...]) -> list[int]:
    """Run one writer process per session at once; their exit codes."""
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, url, sid], cwd=_ROOT) for sid in sids]
    return [p.wait(timeout=300) for p in procs]


async def test_two_processes_share_the_witness(tmp_path: Path) -> None:
    """Two processes append to one store's witness at once, each compacting it under
    the exclusive lock while the other appends: neither loses the other's heads (no
    false alarm, and both rollbacks are caught)."""
    db = tmp_path / "store.db"
    url = f"sqlite:///{db}"
    await _filled(url, 2, "s1", "s2")
    _copy(db, tmp_path / "saved.db")
    assert _run_writers(url, ("s1", "s2")) == [0, 0]
    [log] = _witness_files(tmp_path)
    assert log.stat().st_size < 2 * 2048  # compacted: not 80 turns of lines
    async with open_store(url, secret=SECRET) as s:
        assert [(await s.load(sid)).meta.turn_count for sid in ("s1", "s2")] == [42, 42]
    _put_back(tmp_path / "saved.db", db)
    for sid in ("s1", "s2"):
        err = await _rolled_back(url, sid)
        assert (err.witnessed, err.stored) == (126, 6)


def test_torn_and_foreign_lines_are_skipped(tmp_path: Path) -> None:
    """A line cut by a crash or edited by hand is ignored; an A line never moves a head
    back; R and D set and clear it."""
    path = tmp_path / "w.log"
    mac = bytes(range(32)).hex()
    path.write_text(
        f"# header\nA s1 9 {mac}\nA s1 3 {mac}\nA s2 x {mac}\nA s3 4 abcd\nR s4 2 {mac}\n"
        f"D s4\nA s5 7 {mac}"  # no newline: torn
    )
    w = witness_mod.Witness(path, "u")
    w.open()
    try:
        assert w.expected("s1") == (9, bytes(range(32)))
        assert [w.expected(s) for s in ("s2", "s3", "s4", "s5")] == [None] * 4
    finally:
        w.close()
