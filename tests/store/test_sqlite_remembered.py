"""The SQLite store's fast paths: the remembered session row and the bulk load.

A write may skip reading and verifying the session row when the store remembers it,
but only while the stored row is exactly that one; these tests change the row behind
the store's back in every way that matters and check nothing slips through.
"""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from sessions.errors import Fenced, SessionTampered, StoreError
from sessions.store import ManualClock, SQLiteStore, open_store
from sessions.store.base import SessionMeta

from . import SECRET, commit, fill
from .conftest import Raw


def _url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}"


def _sqlite(store: object) -> SQLiteStore:
    assert isinstance(store, SQLiteStore)
    return store


@pytest.fixture
def raw(tmp_path: Path) -> Raw:
    """Raw SQL on the test's SQLite file (these tests are SQLite's only)."""
    return Raw(_url(tmp_path))


async def test_a_new_lease_elsewhere_fences_a_remembered_row(tmp_path: Path) -> None:
    """Another store takes the lease over: our next commit raises Fenced and writes
    nothing, although our remembered row still carries the old token."""
    clock = ManualClock()  # both stores' lease clock
    async with open_store(_url(tmp_path), secret=SECRET, clock=clock) as a:
        await a.create(SessionMeta(id="s1"))
        token = await a.acquire("s1", "a", 0.05)
        await a.append_turn("s1", commit(1, 0), token=token)  # remembered, token current
        clock.advance(0.1)  # a's lease expires
        async with open_store(_url(tmp_path), secret=SECRET, clock=clock) as b:
            new = await b.acquire("s1", "b", 60.0)
            with pytest.raises(Fenced, match=f"token {token} is stale, store has {new}"):
                await a.append_turn("s1", commit(2, 2), token=token)
            meta = (await b.load("s1")).meta
            assert (meta.turn_count, meta.message_count) == (1, 2)
            await b.append_turn("s1", commit(2, 2), token=new)
            assert await b.verify("s1") == 6


async def test_a_write_under_the_same_token_elsewhere_is_not_overwritten(
    tmp_path: Path,
) -> None:
    """Two stores sharing one owner share its token: each commit still starts from the
    row as stored, not from a row one of them remembers."""
    async with (
        open_store(_url(tmp_path), secret=SECRET) as a,
        open_store(_url(tmp_path), secret=SECRET) as b,
    ):
        token = await fill(a, "s1", 1, owner="w")
        assert await b.acquire("s1", "w", 60.0) == token  # same owner, same token
        await b.append_turn("s1", commit(2, 2), token=token)
        await a.append_turn("s1", commit(3, 4), token=token)  # a remembers turn 1
        await b.update_state("s1", working_memory={"by": "b"}, token=token)
        await a.append_turn("s1", commit(4, 6), token=token)
        loaded = await b.load("s1", recent=100)
        assert [m.seq for m in loaded.recent] == list(range(8))
        assert dict(loaded.meta.working_memory) == {"by": "b"}
        assert await a.verify("s1") == 12


async def test_a_failed_commit_leaves_the_remembered_row_usable(tmp_path: Path, raw: Raw) -> None:
    """A commit that fails after its state UPDATE ran (its records collide) rolls back
    whole, and the remembered row is still the stored one: the next commit works."""
    async with open_store(_url(tmp_path), secret=SECRET) as store:
        token = await fill(store, "s1", 2)
        [(count,)] = raw.execute("SELECT record_count FROM sessions WHERE id='s1'")
        raw.execute("INSERT INTO records VALUES ('s1', ?, 'junk', 0, 'x', x'00', x'00')", (count,))
        with pytest.raises(StoreError, match="UNIQUE"):
            await store.append_turn("s1", commit(3, 4), token=token)
        stored = raw.execute("SELECT record_count, state_mac FROM sessions WHERE id='s1'")
        kept = _sqlite(store)._c.remembered.rows["s1"]
        assert stored == [(count, kept.state_mac)] and kept.record_count == count
        raw.execute("DELETE FROM records WHERE session_id='s1' AND kind='junk'")
        await store.append_turn("s1", commit(3, 4), token=token)
        assert await store.verify("s1") == count + 3


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("config", '{"x":1}'),
        ("agent_id", "other"),
        ("created_at", 1.0),
        ("turn_count", 9),
        ("head_mac", bytes(32)),
        ("state_mac", bytes(32)),
    ],
)
async def test_an_edited_row_is_never_written_over(
    tmp_path: Path, raw: Raw, column: str, value: object
) -> None:
    """Any signed column edited behind the store's back: the next write refuses the row
    (SessionTampered) instead of re-signing over it from the remembered copy."""
    async with open_store(_url(tmp_path), secret=SECRET) as store:
        token = await fill(store, "s1", 1)
        raw.execute(f"UPDATE sessions SET {column}=? WHERE id='s1'", (value,))
        with pytest.raises(SessionTampered):
            await store.append_turn("s1", commit(2, 2), token=token)
        with pytest.raises(SessionTampered):
            await store.update_state("s1", goals=("g",), token=token)


async def test_a_stale_turn_number_is_judged_on_the_stored_row(tmp_path: Path) -> None:
    """A commit that does not follow the remembered row but follows the stored one
    (another store wrote meanwhile) succeeds; one that follows neither is refused."""
    async with (
        open_store(_url(tmp_path), secret=SECRET) as a,
        open_store(_url(tmp_path), secret=SECRET) as b,
    ):
        token = await fill(a, "s1", 1, owner="w")
        await b.acquire("s1", "w", 60.0)
        await b.append_turn("s1", commit(2, 2), token=token)
        with pytest.raises(StoreError, match="does not follow"):
            await a.append_turn("s1", commit(2, 2), token=token)
        await a.append_turn("s1", commit(3, 4), token=token)
        assert (await a.load("s1")).meta.turn_count == 3


async def test_bulk_load_falls_back_to_the_careful_check(tmp_path: Path, raw: Raw) -> None:
    """Loading every message takes the bulk path; an edited or relabelled record makes
    it fall back to the careful path, which names the record."""
    async with open_store(_url(tmp_path), secret=SECRET) as store:
        await fill(store, "s1", 4)
        assert [m.seq for m in (await store.load("s1", recent=8)).recent] == list(range(8))
        raw.execute("UPDATE records SET kind='summary' WHERE session_id='s1' AND rseq=4")
        with pytest.raises(SessionTampered) as info:
            await store.load("s1", recent=8)
        assert info.value.record == 4 and "another session or position" in info.value.reason
        raw.execute("UPDATE records SET kind='message' WHERE session_id='s1' AND rseq=4")
        raw.execute(
            "UPDATE records SET body=replace(body, 'hello 3', 'HELLO 3') "
            "WHERE session_id='s1' AND rseq=4"
        )
        with pytest.raises(SessionTampered) as info:
            await store.load("s1", recent=8)
        assert info.value.record == 4 and "MAC mismatch" in info.value.reason


async def test_a_load_leaves_garbage_collection_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Library code never switches the process's garbage collector off, not even for
    a large load."""

    def refuse() -> None:
        raise AssertionError("gc.disable() called")

    monkeypatch.setattr(gc, "disable", refuse)
    async with open_store(_url(tmp_path), secret=SECRET) as store:
        await fill(store, "s1", 200)
        assert len((await store.load("s1", recent=400)).recent) == 400
        assert await store.verify("s1") == 600
    assert gc.isenabled()


async def test_remembered_rows_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store remembers a bounded number of rows, the most recently used."""
    monkeypatch.setattr("sessions.store.sqlite_core.REMEMBERED_MAX", 2)
    async with open_store(_url(tmp_path), secret=SECRET) as store:
        for sid in ("a", "b", "c"):
            await store.create(SessionMeta(id=sid))
        assert list(_sqlite(store)._c.remembered.rows) == ["b", "c"]
        await store.load("b")
        await store.delete("c")
        assert list(_sqlite(store)._c.remembered.rows) == ["b"]


async def test_a_whole_number_creation_time_reads_back_verified(tmp_path: Path) -> None:
    """``created_at=5`` is stored and signed as 5.0, so the row verifies when read back."""
    async with open_store(_url(tmp_path), secret=SECRET) as store:
        await store.create(SessionMeta(id="s1", created_at=5))
        assert (await store.load("s1")).meta.created_at == 5.0
