"""A SQLite store waiting for another process's lock, given up (Ctrl-C, a timeout).

The lock is real: a thread with its own connection holds ``BEGIN EXCLUSIVE`` until the
test lets go or :data:`HOLD` seconds have passed.  The store's busy timeout is longer
than that, so a wait that is not given up lasts until the lock is freed, and "the store
was done before the lock was freed" tells the two apart without measuring time.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from sessions.store import SQLiteStore
from sessions.store.base import SessionMeta
from sessions.store.dbthread import DBThread

from . import SECRET, fill

HOLD = 60.0  # seconds the lock is held at most: a hang guard, not a speed check
WAIT = 2 * HOLD  # the store's busy timeout: longer than the lock is ever held


class Lock:
    """Another connection holding ``BEGIN EXCLUSIVE`` on the file, in a thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.taken, self.let_go, self.freed = threading.Event(), threading.Event(), False
        self.thread = threading.Thread(target=self._hold, daemon=True)

    def _hold(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute("BEGIN EXCLUSIVE")
            self.taken.set()
            self.let_go.wait(HOLD)
            self.freed = True  # before the rollback: a waiter may get the lock at once
            conn.execute("ROLLBACK")
        finally:
            conn.close()

    def __enter__(self) -> Lock:
        self.thread.start()
        assert self.taken.wait(HOLD)
        return self

    def __exit__(self, *exc: object) -> None:
        self.let_go.set()
        self.thread.join()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "s.db"


def _store(path: Path) -> SQLiteStore:
    return SQLiteStore(f"sqlite:///{path}", path, secret=SECRET, busy_timeout=WAIT)


async def _filled(path: Path) -> int:
    """Session ``kept`` with two turns; how many records its verification checks."""
    async with _store(path) as store:
        await fill(store, "kept", 2)
        return await store.verify("kept")


async def _intact(path: Path, records: int) -> None:
    """The file verifies whole and holds only what was written before the lock."""
    async with _store(path) as store:
        assert [m.id for m in await store.list_sessions()] == ["kept"]
        assert await store.verify("kept") == records
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


async def test_a_cancelled_write_waiting_for_the_lock_lets_the_store_close(
    db_path: Path,
) -> None:
    """A write cancelled while it waits for the lock stops the caller at once, the
    store closes without waiting for the lock, and nothing of the write is stored."""
    records = await _filled(db_path)
    store = _store(db_path)
    await store.open()
    with Lock(db_path) as lock:
        with anyio.move_on_after(0.2) as scope:
            await store.create(SessionMeta(id="never"))
        assert scope.cancelled_caught
        await store.close()
        assert not lock.freed, "close waited for the other process's lock"
    await _intact(db_path, records)


async def test_a_cancelled_open_waiting_for_the_lock_returns_at_once(db_path: Path) -> None:
    """An open cancelled while its migration check waits for the lock gives up: the
    store is not open, its database thread has ended (no connection left behind), and
    it opens later as usual."""
    records = await _filled(db_path)
    store = _store(db_path)
    with Lock(db_path) as lock:
        with anyio.move_on_after(0.2) as scope:
            await store.open()
        assert scope.cancelled_caught
        assert not store.is_open
        for thread in threading.enumerate():
            if thread.name == f"turngraph-sqlite:{db_path.name}":
                await anyio.to_thread.run_sync(thread.join, HOLD)
        assert not lock.freed, "the open waited for the other process's lock"
    await _intact(db_path, records)
    async with store:
        assert await store.exists("kept")


async def test_a_call_someone_waits_for_is_not_interrupted_by_close(db_path: Path) -> None:
    """Only abandoned calls are cut short: a write whose caller still waits gets the
    lock once it is freed, and close lets it finish."""
    await _filled(db_path)
    store = _store(db_path)
    await store.open()
    created: list[SessionMeta] = []

    async def create() -> None:
        created.append(await store.create(SessionMeta(id="later")))

    with Lock(db_path) as lock:
        async with anyio.create_task_group() as tg:
            tg.start_soon(create)
            await anyio.sleep(0.2)  # the write is waiting for the lock now
            tg.start_soon(store.close)
            await anyio.sleep(0.2)
            assert not created
            lock.let_go.set()  # the waiting write gets the lock, then the store closes
    assert [m.id for m in created] == ["later"]
    async with _store(db_path) as again:
        assert await again.exists("later")


async def test_interrupting_reaches_only_an_abandoned_running_call() -> None:
    """``interrupt_abandoned`` calls its callback only while the running call's caller
    has given up, and ``interrupted`` says so in the thread until that call ends."""
    db = DBThread("t")
    started, release = threading.Event(), threading.Event()
    seen: list[bool] = []
    interrupted = db.interrupted

    def block() -> None:
        started.set()
        release.wait(HOLD)
        seen.append(interrupted())

    calls: list[str] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(db.run, block)
        await anyio.to_thread.run_sync(started.wait, HOLD)
        assert not db.interrupt_abandoned(lambda: calls.append("awaited"))
        tg.cancel_scope.cancel()  # the caller gives up; the call goes on in the thread
    assert db.interrupt_abandoned(lambda: calls.append("abandoned"))
    release.set()
    await db.run(lambda: seen.append(interrupted()))  # the next call: not interrupted
    assert calls == ["abandoned"]
    assert seen == [True, False]
    assert not db.interrupt_abandoned(lambda: calls.append("idle"))
    await db.stop()


async def test_an_abandoned_call_waiting_for_a_claim_is_not_interrupted() -> None:
    """While a claim holds the resource in another thread (a batch's ``COMMIT`` in the
    committer thread), the call queued behind it is not running yet: interrupting the
    resource then would hit the claim's work.  The call is only told to stop waiting."""
    db = DBThread("t")
    assert db.claim()  # the resource is in use elsewhere
    seen: list[bool] = []
    interrupted = db.interrupted
    calls: list[str] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(db.run, lambda: seen.append(interrupted()))
        # The thread took the call (it waits for use); no event says so.
        while db._shared.running is None:  # noqa: ASYNC110 - polling the thread's state
            await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert db.interrupt_abandoned(lambda: calls.append("interrupted"))
    assert calls == []
    db.release()
    await db.run(lambda: seen.append(interrupted()))
    assert seen == [True, False]
    await db.stop()
