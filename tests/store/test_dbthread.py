"""The SQLite store's database thread: order, errors, cancellation, shutdown."""

from __future__ import annotations

import threading
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from sessions.errors import StoreError
from sessions.store import SQLiteStore, open_store
from sessions.store.base import SessionMeta
from sessions.store.dbthread import DBThread, ThreadClosed, _Job

from . import SECRET, commit, fill


async def _blocked(db: DBThread) -> threading.Event:
    """Occupy ``db``'s thread until the returned event is set."""
    started, release = threading.Event(), threading.Event()

    def block() -> None:
        started.set()
        release.wait(10.0)

    async def run_block() -> None:
        await db.run(block)

    # Submitted from a task so the caller can go on while the thread is busy.
    async with anyio.create_task_group() as tg:
        tg.start_soon(run_block)
        await anyio.to_thread.run_sync(started.wait, 10.0)
        tg.cancel_scope.cancel()  # the blocking call keeps running in the thread
    return release


async def test_calls_run_in_order_in_one_thread_and_return_results() -> None:
    """Every call runs in the same non-loop thread, in submission order."""
    db = DBThread("t")
    seen: list[tuple[int, str]] = []

    def record(i: int) -> int:
        seen.append((i, threading.current_thread().name))
        return i * 10

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(db.run, record, i)
    assert await db.run(record, 99) == 990
    assert [i for i, _ in seen[:-1]] == list(range(20))
    assert {name for _, name in seen} == {"t"}
    await db.stop()


async def test_exceptions_propagate_with_their_type() -> None:
    """An exception raised in the thread reaches the caller; the thread keeps serving."""
    db = DBThread("t")

    def fail() -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        await db.run(fail)
    assert await db.run(int, "7") == 7
    await db.stop()


async def test_cancelled_while_queued_never_runs() -> None:
    """A caller cancelled before its call started removes it: it never runs."""
    db = DBThread("t")
    release = await _blocked(db)
    ran: list[str] = []
    with anyio.move_on_after(0.05) as scope:
        await db.run(ran.append, "queued")
    assert scope.cancelled_caught
    release.set()
    await db.run(ran.append, "after")
    assert ran == ["after"]
    await db.stop()


async def test_cancelled_while_running_finishes_the_call() -> None:
    """A caller cancelled mid-call stops waiting; the call still completes, in order."""
    db = DBThread("t")
    started, release = threading.Event(), threading.Event()
    done: list[str] = []

    def slow() -> None:
        started.set()
        release.wait(10.0)
        done.append("slow")

    async def cancel_when_started(scope: anyio.CancelScope) -> None:
        await anyio.to_thread.run_sync(started.wait, 10.0)
        scope.cancel()

    async with anyio.create_task_group() as tg:
        with anyio.CancelScope() as scope:
            tg.start_soon(cancel_when_started, scope)
            await db.run(slow)
    assert scope.cancelled_caught and done == []
    release.set()
    await db.run(done.append, "next")
    assert done == ["slow", "next"]
    await db.stop()


async def test_stop_runs_queued_calls_then_ends_the_thread() -> None:
    """stop() lets earlier calls finish, joins the thread, and refuses later calls."""
    db = DBThread("t")
    ran: list[int] = []
    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(db.run, ran.append, i)
        await anyio.lowlevel.checkpoint()
        await db.stop()
    assert sorted(ran) == [0, 1, 2, 3, 4]
    assert not db.thread.is_alive()
    with pytest.raises(ThreadClosed):
        await db.run(ran.append, 5)
    await db.stop()  # idempotent


async def test_sqlite_close_ends_the_thread(tmp_path: Path) -> None:
    """Closing the store runs pending calls, then joins its database thread."""
    store = SQLiteStore("sqlite:///t", tmp_path / "t.db", secret=SECRET)
    await store.open()
    db = store._db
    assert db is not None
    await store.create(SessionMeta(id="s1"))
    await store.close()
    assert not db.thread.is_alive()
    with pytest.raises(StoreError, match="not open"):
        await store.exists("s1")
    await store.close()  # idempotent
    async with store:  # and it can be opened again
        assert await store.exists("s1")


async def test_sqlite_errors_propagate_from_the_thread(tmp_path: Path) -> None:
    """A store error raised inside the database thread reaches the caller as is."""
    async with open_store(f"sqlite:///{tmp_path}/t.db", secret=SECRET) as store:
        token = await fill(store, "s1", 1)
        with pytest.raises(StoreError, match="does not follow"):
            await store.append_turn("s1", commit(5, 2), token=token)
        assert (await store.load("s1")).meta.turn_count == 1


@pytest.mark.parametrize("delay", [0.0, 0.0002, 0.0005, 0.001, 0.002])
async def test_cancelled_commit_lands_whole_or_not_at_all(tmp_path: Path, delay: float) -> None:
    """Cancelling append_turn at any moment leaves a consistent, verifiable session."""
    async with open_store(f"sqlite:///{tmp_path}/t.db", secret=SECRET) as store:
        token = await fill(store, "s1", 2)
        with anyio.move_on_after(delay):
            await store.append_turn("s1", commit(3, 4), token=token)
        # The next call queues behind the cancelled one: it sees its outcome.
        meta = (await store.load("s1", recent=10)).meta
        assert (meta.turn_count, meta.message_count) in ((2, 4), (3, 6))
        assert await store.verify("s1") == meta.message_count + meta.turn_count
        await store.append_turn("s1", commit(meta.turn_count + 1, meta.message_count), token=token)
        assert await store.verify("s1") == meta.message_count + meta.turn_count + 3


async def test_posted_work_runs_in_order_in_the_thread_and_its_errors_are_dropped() -> None:
    """post() queues work in order with calls; nobody waits for it, a failure is dropped."""
    db = DBThread("t")
    seen: list[tuple[str, str]] = []

    def fail() -> None:
        raise RuntimeError("dropped")

    db.post(lambda: seen.append(("posted", threading.current_thread().name)))
    db.post(fail)
    await db.run(lambda: seen.append(("call", threading.current_thread().name)))
    assert seen == [("posted", "t"), ("call", "t")]
    await db.stop()
    db.post(fail)  # after stop: ignored, not an error


async def test_a_claim_is_refused_while_a_call_is_queued_or_running() -> None:
    """claim() never overtakes a pending call and never waits: it says no at once."""
    db = DBThread("t")
    assert db.claim()  # idle: the caller may use the resource itself
    db.release()
    release = await _blocked(db)  # a call is running (its caller gave up waiting)
    assert not db.claim()
    release.set()
    await db.run(int)  # drained: nothing pending any more
    assert db.claim()
    db.release()
    await db.stop()
    assert not db.claim()  # a stopped thread lends nothing


async def test_a_claim_excludes_calls_and_posted_work_until_released() -> None:
    """While claimed, the thread's calls and posted work wait; they run after release."""
    db = DBThread("t")
    ran = threading.Event()
    assert db.claim()
    db.post(ran.set)
    assert not await anyio.to_thread.run_sync(ran.wait, 0.05)  # held off by the claim
    db.release()
    assert await anyio.to_thread.run_sync(ran.wait, 5.0)
    assert db.claim()  # posted work does not count as pending
    db.release()
    await db.stop()


async def test_the_path_for_other_event_loops_returns_and_raises() -> None:
    """Outside asyncio (trio), a call waits through a worker thread: same results, errors."""
    db = DBThread("t")
    assert await db._run_elsewhere(_Job(int, ("5",))) == 5
    with pytest.raises(ValueError, match="invalid literal"):
        await db._run_elsewhere(_Job(int, ("x",)))
    await db.stop()


async def test_a_cancelled_close_still_closes(tmp_path: Path) -> None:
    """close() from a cancelled scope still closes the connection and ends the thread."""
    store = SQLiteStore("sqlite:///t", tmp_path / "t.db", secret=SECRET)
    await store.open()
    db = store._db
    assert db is not None
    with anyio.CancelScope() as scope:
        scope.cancel()
        await store.close()
    assert store._core is None and not db.thread.is_alive()
