"""The SQLite store's small writes in the event loop's thread, and its WAL checkpoints.

A turn's commit runs in the loop's own thread when that delays nobody, and in the
database thread otherwise; these tests pin down when each happens, that a write never
waits for another process's lock in the loop, and that the log is checkpointed.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from sessions.store import SQLiteStore, open_store
from sessions.store.base import Checkpoint, SessionMeta
from sessions.store.sqlite_core import CHECKPOINT_WRITES, SQLiteCore

from . import SECRET, commit, fill


def _url(tmp_path: Path, options: str = "") -> str:
    return f"sqlite:///{tmp_path / 'store.db'}{options}"


def _sqlite(store: object) -> SQLiteStore:
    assert isinstance(store, SQLiteStore)
    return store


@pytest.fixture
def threads_of_commits(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of the thread each ``append_turn`` transaction ran in, in order."""
    names: list[str] = []
    original = SQLiteCore.append_turn

    def spy(self: SQLiteCore, *args: Any) -> None:
        names.append(threading.current_thread().name)
        original(self, *args)

    monkeypatch.setattr(SQLiteCore, "append_turn", spy)
    return names


async def test_a_lone_commit_runs_in_the_loops_thread(
    tmp_path: Path, threads_of_commits: list[str]
) -> None:
    """With the database thread idle, no hand-off is made."""
    async with open_store(_url(tmp_path), secret=SECRET) as store:
        await fill(store, "s1", 3)
        assert await store.verify("s1") == 9
    assert threads_of_commits == [threading.current_thread().name] * 3


async def test_a_commit_lets_the_ready_tasks_run_first(
    tmp_path: Path, threads_of_commits: list[str]
) -> None:
    """A commit that will hold the loop yields to it first: a task already ready to
    run goes before it, and is not delayed by the commit."""
    async with open_store(_url(tmp_path), secret=SECRET) as store:
        token = await fill(store, "s1", 0)
        threads_of_commits.clear()
        order: list[str] = []

        async def write() -> None:
            await store.append_turn("s1", commit(1, 0), token=token)
            order.append("commit")

        async def other() -> None:
            order.append("other")

        async with anyio.create_task_group() as tg:
            tg.start_soon(write)
            tg.start_soon(other)
        assert (await store.load("s1")).meta.turn_count == 1
    assert order == ["other", "commit"]
    assert threads_of_commits == [threading.current_thread().name]


async def test_a_commit_queues_behind_the_database_threads_work(
    tmp_path: Path, threads_of_commits: list[str]
) -> None:
    """While the store's database thread is busy, a commit does not overtake it in
    the loop's thread: it runs in the database thread after that work, and lands."""
    async with open_store(_url(tmp_path), secret=SECRET) as store:
        token = await fill(store, "s1", 0)
        threads_of_commits.clear()
        started, gate = threading.Event(), threading.Event()

        def busy() -> None:
            started.set()
            gate.wait(30)

        db = _sqlite(store)._db
        assert db is not None
        db.post(busy)
        await anyio.to_thread.run_sync(started.wait)
        async with anyio.create_task_group() as tg:
            tg.start_soon(functools.partial(store.append_turn, "s1", commit(1, 0), token=token))
            await anyio.wait_all_tasks_blocked()
            assert threads_of_commits == []  # still queued behind the busy thread
            gate.set()
        assert (await store.load("s1")).meta.turn_count == 1
    assert threads_of_commits == [db.thread.name]


async def test_inline_writes_can_be_turned_off(
    tmp_path: Path, threads_of_commits: list[str]
) -> None:
    """``?inline_writes=off`` keeps every write in the database thread."""
    async with open_store(_url(tmp_path, "?inline_writes=off"), secret=SECRET) as store:
        await fill(store, "s1", 2)
    assert threads_of_commits and threading.current_thread().name not in threads_of_commits


def test_a_bad_inline_writes_option_is_refused(tmp_path: Path) -> None:
    """Anything but on/off (or true/false, 1/0) is a clear error naming the option."""
    from sessions.errors import StoreError

    with pytest.raises(StoreError, match="inline_writes"):
        open_store(_url(tmp_path, "?inline_writes=maybe"), secret=SECRET)


async def test_a_write_never_waits_for_another_writer_in_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another connection (another process, say) holds the write lock: the commit,
    tried in the loop's thread, finds it busy at once (it does not wait there), goes
    to the database thread to wait, and lands when the lock is freed."""
    attempts: list[tuple[bool, int]] = []
    here = SQLiteCore.try_inline

    def spy(self: SQLiteCore, fn: Any, args: tuple[Any, ...]) -> tuple[bool, Any]:
        done, result = here(self, fn, args)
        busy_ms = self.conn.execute("PRAGMA busy_timeout").fetchone()[0]
        attempts.append((done, busy_ms))
        return done, result

    monkeypatch.setattr(SQLiteCore, "try_inline", spy)
    async with open_store(_url(tmp_path), secret=SECRET) as store:
        token = await fill(store, "s1", 1)
        other = sqlite3.connect(
            tmp_path / "store.db", isolation_level=None, check_same_thread=False
        )
        other.execute("BEGIN IMMEDIATE")  # the write lock, held

        def free_later() -> None:
            time.sleep(0.3)
            other.execute("ROLLBACK")

        freer = threading.Thread(target=free_later)
        freer.start()
        attempts.clear()
        started = time.monotonic()
        await store.append_turn("s1", commit(2, 2), token=token)
        waited = time.monotonic() - started
        freer.join()
        other.close()
        [(done, busy_ms)] = attempts
        assert not done and busy_ms == 0  # tried here, without waiting for the lock
        assert waited >= 0.25  # then really waited for it, in the database thread
        assert (await store.load("s1")).meta.turn_count == 2
        assert await store.verify("s1") == 6


async def test_the_loop_keeps_running_while_a_write_waits_for_a_lock(tmp_path: Path) -> None:
    """While a commit waits for another writer's lock, other tasks keep running."""
    async with open_store(_url(tmp_path), secret=SECRET) as store:
        token = await fill(store, "s1", 1)
        other = sqlite3.connect(
            tmp_path / "store.db", isolation_level=None, check_same_thread=False
        )
        other.execute("BEGIN IMMEDIATE")
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await anyio.sleep(0.005)

        def free_later() -> None:
            time.sleep(0.3)
            other.execute("ROLLBACK")

        freer = threading.Thread(target=free_later)
        async with anyio.create_task_group() as tg:
            tg.start_soon(tick)
            freer.start()
            await store.append_turn("s1", commit(2, 2), token=token)
            tg.cancel_scope.cancel()
        freer.join()
        other.close()
        assert ticks >= 10
        assert await store.verify("s1") == 6


async def test_the_wal_is_checkpointed_in_the_background(tmp_path: Path) -> None:
    """Every CHECKPOINT_WRITES writes queue a checkpoint in the database thread, which
    catches up with the log, so the log restarts instead of growing without bound."""
    async with open_store(_url(tmp_path), secret=SECRET) as store:
        sqlite = _sqlite(store)
        await fill(store, "s1", CHECKPOINT_WRITES // 2)
        assert sqlite._c.checkpoints == 0  # too few writes to bother
        turns = 12 * CHECKPOINT_WRITES
        await fill(store, "s1", turns)
        await store.exists("s1")  # a call queued behind the last checkpoint
        assert sqlite._c.checkpoints >= 10
        # A turn writes 4-8 pages (frames of 4,096 + 24 bytes) to the log.  Without
        # restarts the log would hold every one of them; with them, it never holds
        # much more than two checkpoint intervals' worth.
        frame = 4096 + 24
        assert (tmp_path / "store.db-wal").stat().st_size < 2 * CHECKPOINT_WRITES * 10 * frame
        assert 2 * CHECKPOINT_WRITES * 10 * frame < turns * 4 * frame
        assert await store.verify("s1") == (CHECKPOINT_WRITES // 2 + turns) * 3


def _checkpoint(turn: int) -> Checkpoint:
    return Checkpoint(turn, "g" * 8, f"trace-{turn}", "hi", "recall", "llm_call", {}, (), 1.0)


async def test_a_commit_after_a_saved_checkpoint_deletes_it(tmp_path: Path) -> None:
    """The commit skips deleting a checkpoint only when it knows there is none: after
    one was saved, or the session was replaced by an import carrying one, the next
    commit removes it."""
    async with open_store(_url(tmp_path), secret=SECRET) as store:
        token = await fill(store, "s1", 2)
        await store.save_checkpoint("s1", _checkpoint(3), token=token)
        await store.append_turn("s1", commit(3, 4), token=token)
        assert (await store.load("s1")).checkpoint is None

        await store.save_checkpoint("s1", _checkpoint(4), token=token)
        doc = await store.export("s1")
        await store.append_turn("s1", commit(4, 6), token=token)  # deletes it again
        await store.import_(doc, replace=True)  # back to turn 3, with its checkpoint
        token = await store.acquire("s1", "w2", 60.0)
        loaded = await store.load("s1")
        assert loaded.checkpoint is not None and loaded.meta.turn_count == 3
        await store.append_turn("s1", commit(4, 6), token=token)
        assert (await store.load("s1")).checkpoint is None


async def test_a_session_recreated_after_delete_commits_cleanly(tmp_path: Path) -> None:
    """Deleting a session forgets what the store knew of it; a new one of that id works."""
    async with open_store(_url(tmp_path), secret=SECRET) as store:
        await fill(store, "s1", 2)
        assert await store.delete("s1")
        await store.create(SessionMeta(id="s1"))
        token = await store.acquire("s1", "w1", 60.0)
        await store.save_checkpoint("s1", _checkpoint(1), token=token)
        await store.append_turn("s1", commit(1, 0), token=token)
        loaded = await store.load("s1")
        assert loaded.checkpoint is None and loaded.meta.turn_count == 1


async def test_a_checkpoint_saved_through_another_store_ends_with_the_turn(
    tmp_path: Path,
) -> None:
    """Two stores on one file, the same owner and so the same live token: a checkpoint
    saved through one is deleted by the turn commit made through the other."""
    url = _url(tmp_path)
    async with open_store(url, secret=SECRET) as a, open_store(url, secret=SECRET) as b:
        await a.create(SessionMeta(id="s"))
        token = await a.acquire("s", "worker", 60.0)
        assert await b.acquire("s", "worker", 60.0) == token
        await a.append_turn("s", commit(1, 0), token=token)
        await b.save_checkpoint("s", _checkpoint(2), token=token)
        await a.append_turn("s", commit(2, 2), token=token)
        loaded = await b.load("s")
        assert loaded.meta.turn_count == 2 and loaded.checkpoint is None


async def test_short_lived_writers_beside_a_reader_keep_the_log_bounded(tmp_path: Path) -> None:
    """Stores that each write a few turns and close (one CLI run each), while another
    store keeps the file open: each checkpoints what it wrote as it closes, so the log
    does not grow with the number of runs."""
    url = _url(tmp_path)
    wal = tmp_path / "store.db-wal"
    sizes = []
    async with open_store(url, secret=SECRET) as reader:
        await reader.create(SessionMeta(id="s"))
        seq = turn = 0
        for run in range(12):
            async with open_store(url, secret=SECRET) as writer:
                token = await writer.acquire("s", f"run-{run}", 60.0)
                for _ in range(CHECKPOINT_WRITES // 2):  # too few for a checkpoint
                    turn += 1
                    await writer.append_turn("s", commit(turn, seq), token=token)
                    seq += 2
                await writer.release("s", f"run-{run}", token)
            await reader.load("s", recent=5)
            sizes.append(wal.stat().st_size)
        assert await reader.verify("s") == turn * 3
    # Each run writes ~32 turns of 4+ pages; a log holding them all would grow by
    # 0.5 MB a run.  It stays at what one run writes (give or take the few pages by
    # which page splits vary one run's frames).
    assert max(sizes) < 2 * sizes[0]
