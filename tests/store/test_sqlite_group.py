"""SQLite group commit: concurrent turns of different sessions share one transaction,
and every guarantee still holds per turn (isolation of refused turns, order, fencing)."""

from __future__ import annotations

import functools
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from sessions.errors import CommitUnknown, Fenced, StoreError, Unstorable
from sessions.store import SQLiteStore, open_store
from sessions.store.base import SessionMeta, TurnCommit
from sessions.store.sqlite_group import BATCH_MAX, BATCH_MIN, Committer, QueuedTurn, batch_limit

from . import SECRET, commit


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    """An open SQLite store (FULL, group commit on, the default)."""
    async with open_store(f"sqlite:///{tmp_path / 'g.db'}", secret=SECRET) as s:
        assert isinstance(s, SQLiteStore)
        yield s


def count_commits(store: SQLiteStore) -> list[str]:
    """Every ``COMMIT`` statement the store's connection runs from now on."""
    seen: list[str] = []
    core = store._core
    assert core is not None
    core.conn.set_trace_callback(lambda sql: seen.append(sql) if sql == "COMMIT" else None)
    return seen


async def new_sessions(store: SQLiteStore, n: int) -> dict[str, int]:
    """``n`` sessions ``s0``... with their leases: id → token."""
    out: dict[str, int] = {}
    for i in range(n):
        await store.create(SessionMeta(id=f"s{i}"))
        out[f"s{i}"] = await store.acquire(f"s{i}", "w", 60.0)
    return out


async def outcomes(store: SQLiteStore, turns: list[tuple[str, TurnCommit, int]]) -> list[object]:
    """Append every turn at once; each one's ``None`` or the error it raised."""
    got: list[object] = [None] * len(turns)

    async def one(i: int, sid: str, c: TurnCommit, token: int) -> None:
        try:
            await store.append_turn(sid, c, token=token)
        except StoreError as exc:
            got[i] = exc

    async with anyio.create_task_group() as tg:
        for i, (sid, c, token) in enumerate(turns):
            tg.start_soon(one, i, sid, c, token)
    return got


async def test_concurrent_turns_share_transactions(store: SQLiteStore) -> None:
    """50 sessions' turns sent at once take fewer commits (fsyncs) than turns."""
    tokens = await new_sessions(store, 50)
    commits = count_commits(store)
    got = await outcomes(store, [(sid, commit(1, 0), tok) for sid, tok in tokens.items()])
    assert got == [None] * 50
    assert 1 <= len(commits) < 50
    for sid in tokens:
        assert [t.turn for t in await store.turns(sid)] == [1]
        assert await store.verify(sid) == 3


async def test_a_refused_turn_in_a_batch_fails_alone(store: SQLiteStore) -> None:
    """In one batch: a fenced turn and a turn whose data cannot be stored each raise
    their own typed error and write nothing; the other turns commit."""
    tokens = await new_sessions(store, 4)
    stale = tokens["s1"]
    await store.release("s1", "w", stale)  # the version moves on: ``stale`` is fenced
    commits = count_commits(store)
    turns = [
        ("s0", commit(1, 0), tokens["s0"]),
        ("s1", commit(1, 0), stale),
        ("s2", commit(1, 0, working_memory={"not json": {1, 2}}), tokens["s2"]),
        ("s3", commit(1, 0), tokens["s3"]),
    ]
    got = await outcomes(store, turns)
    assert len(commits) == 1  # one transaction held all four
    assert got[0] is None and got[3] is None
    assert isinstance(got[1], Fenced) and "s1" in str(got[1])
    assert type(got[2]) is Unstorable and "not JSON-serialisable" in str(got[2])
    for sid, turns_stored in (("s0", 1), ("s1", 0), ("s2", 0), ("s3", 1)):
        loaded = await store.load(sid, recent=10)
        assert loaded.meta.turn_count == turns_stored
        assert len(loaded.recent) == 2 * turns_stored
        assert await store.verify(sid) == 3 * turns_stored
    # The refused sessions are intact: their next turn (with a good token) commits.
    token = await store.acquire("s1", "w", 60.0)
    await store.append_turn("s1", commit(1, 0), token=token)
    await store.append_turn("s2", commit(1, 0), token=tokens["s2"])
    assert await store.verify("s1") == await store.verify("s2") == 3


async def test_a_sessions_turns_queued_together_keep_their_order(store: SQLiteStore) -> None:
    """Two turns of one session queued at once go in two batches, in queue order."""
    tokens = await new_sessions(store, 3)
    group = store._group
    assert group is not None
    turns = [("s0", commit(1, 0), tokens["s0"]), ("s1", commit(1, 0), tokens["s1"])]
    turns += [("s0", commit(2, 2), tokens["s0"]), ("s2", commit(1, 0), tokens["s2"])]
    before = group.batches
    assert await outcomes(store, turns) == [None] * 4
    assert group.batches - before == 2
    assert [t.turn for t in await store.turns("s0")] == [1, 2]
    assert await store.verify("s0") == 6


async def test_a_batch_whose_commit_fails_writes_and_acknowledges_nothing(
    store: SQLiteStore,
) -> None:
    """If the transaction itself fails, every turn of the batch raises and none is kept."""
    tokens = await new_sessions(store, 3)
    core = store._core
    assert core is not None
    # A trigger that aborts the transaction when the third session's turn is written.
    core.conn.execute(
        "CREATE TEMP TRIGGER boom BEFORE INSERT ON records WHEN NEW.session_id='s2' "
        "BEGIN SELECT RAISE(ROLLBACK, 'disk on fire'); END"
    )
    got = await outcomes(store, [(sid, commit(1, 0), tok) for sid, tok in tokens.items()])
    assert all(isinstance(e, StoreError) and "disk on fire" in str(e) for e in got), got
    core.conn.execute("DROP TRIGGER boom")
    for sid, tok in tokens.items():
        assert (await store.load(sid)).meta.turn_count == 0
        await store.append_turn(sid, commit(1, 0), token=tok)  # remembered rows not stale
        assert await store.verify(sid) == 3


async def test_group_commit_can_be_turned_off(tmp_path: Path) -> None:
    """``?group_commit=off``: every turn commits alone."""
    url = f"sqlite:///{tmp_path / 'g.db'}?group_commit=off"
    async with open_store(url, secret=SECRET) as s:
        assert isinstance(s, SQLiteStore) and s._group is None
        tokens = await new_sessions(s, 5)
        commits = count_commits(s)
        await outcomes(s, [(sid, commit(1, 0), tok) for sid, tok in tokens.items()])
        assert len(commits) == 5


def test_a_bad_group_commit_option_is_refused(tmp_path: Path) -> None:
    """An unknown value names the option."""
    with pytest.raises(StoreError, match=r"group_commit=on\|off"):
        open_store(f"sqlite:///{tmp_path / 'g.db'}?group_commit=sometimes", secret=SECRET)


async def test_each_sessions_order_holds_under_1000_concurrent_sends(tmp_path: Path) -> None:
    """1,000 sends at once (100 to each of 10 sessions) on one SQLite store: each
    session stores its inputs in the order they were sent, in shared transactions."""
    from sessions import Limits, SessionManager

    url = f"sqlite:///{tmp_path / 'g.db'}"
    limits = Limits(max_active_sessions=20, queue_size=200, max_messages=10_000)
    async with SessionManager(url, limits=limits, log_nodes=False, store_secret=SECRET) as m:
        sessions = [await m.get_or_create(f"s{i}") for i in range(10)]
        store = m.store
        assert isinstance(store, SQLiteStore) and store._group is not None
        commits = count_commits(store)
        replies: dict[str, list[str]] = {s.id: [] for s in sessions}

        async def send(i: int, k: int) -> None:
            result = await sessions[i].send(f"{k}")
            assert result.ok, result.error
            replies[sessions[i].id].append(f"{k}")  # the order the turns were answered

        async with anyio.create_task_group() as tg:
            for k in range(100):
                for i in range(10):
                    tg.start_soon(send, i, k)
        for s in sessions:
            stored = await store.messages(s.id, 0, 1_000)
            inputs = [msg.content for msg in stored if msg.role == "user"]
            assert inputs == [str(k) for k in range(100)], s.id
            assert replies[s.id] == inputs
            assert await store.verify(s.id) > 0
        assert len(commits) < 1_000  # the sends were grouped


async def test_a_turn_cancelled_while_queued_is_not_written(store: SQLiteStore) -> None:
    """A caller cancelled while its turn waits for the next batch: nothing of it is
    written; the turns queued around it commit."""
    tokens = await new_sessions(store, 3)
    db = store._db
    assert db is not None
    started, gate = threading.Event(), threading.Event()

    def busy() -> None:
        started.set()
        gate.wait(30)

    group = store._group
    assert group is not None
    before = group.batches
    db.post(busy)  # the first batch waits behind this in the database thread
    await anyio.to_thread.run_sync(started.wait)
    async with anyio.create_task_group() as tg:
        tg.start_soon(functools.partial(store.append_turn, "s0", commit(1, 0), token=tokens["s0"]))
        await anyio.wait_all_tasks_blocked()  # s0's batch is written (waiting in the thread)
        with anyio.CancelScope() as scope:
            tg.start_soon(
                functools.partial(store.append_turn, "s2", commit(1, 0), token=tokens["s2"])
            )
            scope.cancel()
            await store.append_turn("s1", commit(1, 0), token=tokens["s1"])
        assert scope.cancelled_caught
        gate.set()
    assert group.batches - before == 2  # s0's, then s2's: s1 left the queue
    assert [(await store.load(sid)).meta.turn_count for sid in ("s0", "s1", "s2")] == [1, 0, 1]
    assert await store.verify("s0") == await store.verify("s2") == 3
    await store.append_turn("s1", commit(1, 0), token=tokens["s1"])
    assert await store.verify("s1") == 3


async def test_turns_in_a_batch_keep_their_recall_memory(store: SQLiteStore) -> None:
    """Each turn of a batch writes what it remembers (recall memory) with its rows."""
    from engine.messages import MemoryItem

    tokens = await new_sessions(store, 3)
    commits = count_commits(store)
    turns = [
        (sid, commit(1, 0, memory=(MemoryItem(f"zebra number {sid}"),)), tok)
        for sid, tok in tokens.items()
    ]
    assert await outcomes(store, turns) == [None] * 3
    assert len(commits) == 1
    for sid in tokens:
        found = await store.recall_memory("zebra", session_id=sid)
        assert [item.text for item in found] == [f"zebra number {sid}"]


async def test_a_turn_whose_recall_memory_cannot_be_stored_fails_alone(
    store: SQLiteStore,
) -> None:
    """In one batch: a memory text with a lone surrogate and memory meta that is not
    JSON each raise Unstorable (typed, naming the session) and write nothing; the other
    turn commits with its memory."""
    from engine.messages import MemoryItem

    tokens = await new_sessions(store, 3)
    commits = count_commits(store)
    memories = [
        (MemoryItem("bad \ud800 text"),),
        (MemoryItem("ok", "fact", 0.0, {"x": {1, 2}}),),
        (MemoryItem("zebra fine"),),
    ]
    turns = [
        (sid, commit(1, 0, memory=memory), tok)
        for (sid, tok), memory in zip(tokens.items(), memories, strict=True)
    ]
    got = await outcomes(store, turns)
    assert len(commits) == 1
    assert [type(e) for e in got] == [Unstorable, Unstorable, type(None)]
    assert [e.session_id for e in got if isinstance(e, Unstorable)] == ["s0", "s1"]
    assert "recall memory" in str(got[0])
    assert [(await store.load(sid)).meta.turn_count for sid in tokens] == [0, 0, 1]
    found = await store.recall_memory("zebra", session_id="s2")
    assert [item.text for item in found] == ["zebra fine"]
    assert await store.recall_memory("ok", session_id="s1") == ()


class GatedCommit:
    """A ``COMMIT`` that records its start and end in ``events`` and waits, before
    running the real statement (its log write and fsync), until its gate (one per
    call, in ``gates``) is set; ``fail``: it raises SQLite's I/O error instead."""

    def __init__(self, events: list[str], fail: bool = False) -> None:
        self.events, self.fail = events, fail
        self.gates: list[threading.Event] = []
        self.started = threading.Semaphore(0)

    def __call__(self, conn: sqlite3.Connection) -> None:
        gate = threading.Event()
        self.gates.append(gate)
        self.events.append("commit-start")
        self.started.release()
        gate.wait(30)
        if self.fail:
            raise sqlite3.OperationalError("disk I/O error")
        conn.execute("COMMIT")
        self.events.append("commit-end")


def gate_commits(store: SQLiteStore, events: list[str], fail: bool = False) -> GatedCommit:
    """Route the commits of the store's batches through a :class:`GatedCommit`, and
    record the start of each write transaction (``BEGIN IMMEDIATE``) in ``events``."""
    gated = GatedCommit(events, fail)
    assert store._committer is not None and store._core is not None
    store._committer.stop()
    store._committer = Committer("test-commit", gated)
    store._core.conn.set_trace_callback(
        lambda sql: events.append("write") if sql == "BEGIN IMMEDIATE" else None
    )
    return gated


async def test_a_batch_formed_during_a_commit_is_acknowledged_after_its_own(
    store: SQLiteStore,
) -> None:
    """While one batch's commit (log write and fsync) runs in the committer thread,
    turns of other sessions queue and are not written; once it ends, that batch is
    acknowledged and the queued turns are written as the next batch, whose callers
    wait for its own commit (on the real file)."""
    tokens = await new_sessions(store, 4)
    events: list[str] = []
    fsync = gate_commits(store, events)

    async def send(sid: str) -> None:
        await store.append_turn(sid, commit(1, 0), token=tokens[sid])
        events.append(f"ack {sid}")

    async with anyio.create_task_group() as tg:
        tg.start_soon(send, "s0")
        tg.start_soon(send, "s1")
        await anyio.to_thread.run_sync(fsync.started.acquire)  # s0 and s1: committing
        tg.start_soon(send, "s2")
        tg.start_soon(send, "s3")
        await anyio.wait_all_tasks_blocked()
        assert events == ["write", "commit-start"]  # nobody acknowledged yet
        reader = sqlite3.connect(store.path)  # another connection: the batch is not visible
        assert reader.execute("SELECT count(*) FROM records").fetchone() == (0,)
        reader.close()
        fsync.gates[0].set()
        await anyio.to_thread.run_sync(fsync.started.acquire)  # s2 and s3: theirs
        await anyio.wait_all_tasks_blocked()
        assert events[2:4] == ["commit-end", "write"]
        assert sorted(events[4:]) == ["ack s0", "ack s1", "commit-start"]
        fsync.gates[1].set()
    assert events[-3:-2] == ["commit-end"] and sorted(events[-2:]) == ["ack s2", "ack s3"]
    for sid in tokens:
        assert await store.verify(sid) == 3


async def test_a_failed_commit_fails_its_batch_and_writes_nothing(store: SQLiteStore) -> None:
    """If a batch's commit fails in the committer thread, each of its callers gets a
    typed error, nothing of it is written, and the sessions write on afterwards."""
    tokens = await new_sessions(store, 2)
    fsync = gate_commits(store, [], fail=True)
    got: list[object] = []

    async def send(sid: str) -> None:
        try:
            await store.append_turn(sid, commit(1, 0), token=tokens[sid])
        except StoreError as exc:
            got.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(send, "s0")
        tg.start_soon(send, "s1")
        await anyio.to_thread.run_sync(fsync.started.acquire)
        fsync.gates[0].set()
    assert len(got) == 2
    assert all(isinstance(e, StoreError) and "disk I/O error" in str(e) for e in got), got
    assert store._committer is not None
    store._committer.stop()
    store._committer = Committer("test-commit")
    for sid, tok in tokens.items():
        assert (await store.load(sid)).meta.turn_count == 0
        await store.append_turn(sid, commit(1, 0), token=tok)
        assert await store.verify(sid) == 3


async def test_a_batch_takes_half_of_the_sessions_at_work(store: SQLiteStore) -> None:
    """40 sessions' turns at once go in two batches of 20: while one is fsynced, the
    other half of the sessions can prepare their next turns."""
    tokens = await new_sessions(store, 40)
    group = store._group
    assert group is not None
    commits = count_commits(store)
    before = group.batches
    got = await outcomes(store, [(sid, commit(1, 0), tok) for sid, tok in tokens.items()])
    assert got == [None] * 40
    assert group.batches - before == 2 and len(commits) == 2


def test_the_batch_limit() -> None:
    """Half the sessions at work (last batch's and queued, counted once), between
    BATCH_MIN and BATCH_MAX."""
    queued = [QueuedTurn(f"q{i}", commit(1, 0), 0, 0.0) for i in range(60)]
    assert batch_limit(queued, frozenset(f"b{i}" for i in range(40))) == 50
    assert batch_limit(queued, frozenset(f"q{i}" for i in range(40))) == 30
    assert batch_limit(queued[:3], frozenset()) == BATCH_MIN
    assert batch_limit(queued * 20, frozenset(f"b{i}" for i in range(2000))) == BATCH_MAX


def block_until_deleted(path: Path, sid: str, events: list[str]) -> None:
    """Block the event loop until the gated commit has ended and ``sid`` is gone from
    the file (deleted in the database thread) or two seconds have passed: the loop
    handles nothing meanwhile, the commit's end included."""
    for _ in range(6000):
        if "commit-end" in events:
            break
        time.sleep(0.005)
    reader = sqlite3.connect(path)
    try:
        for _ in range(400):
            if reader.execute("SELECT 1 FROM sessions WHERE id=?", (sid,)).fetchone() is None:
                return
            time.sleep(0.005)
    finally:
        reader.close()


async def test_a_session_deleted_as_its_batch_commits_is_not_reported_rolled_back(
    store: SQLiteStore,
) -> None:
    """A delete waiting for the connection while a batch commits runs once the commit
    ends; the batch's heads reach the rollback witness before that delete can run, so
    the delete's "forget it" is the last word: making the session again is no
    RolledBack."""
    tokens = await new_sessions(store, 2)
    events: list[str] = []
    fsync = gate_commits(store, events)

    async def send(sid: str) -> None:
        await store.append_turn(sid, commit(1, 0), token=tokens[sid])

    async with anyio.create_task_group() as tg:
        tg.start_soon(send, "s0")
        tg.start_soon(send, "s1")
        await anyio.to_thread.run_sync(fsync.started.acquire)
        tg.start_soon(store.delete, "s0")  # queued in the database thread
        await anyio.wait_all_tasks_blocked()
        fsync.gates[0].set()
        block_until_deleted(store.path, "s0", events)
    assert not await store.exists("s0")
    await store.create(SessionMeta(id="s0"))  # not RolledBack
    assert (await store.load("s0")).meta.turn_count == 0
    assert await store.verify("s1") == 3


async def test_a_turn_cancelled_before_its_batch_is_written_is_not_written(
    store: SQLiteStore,
) -> None:
    """A caller cancelled at the yield before it writes the batch it leads: its own
    turn leaves the batch (nothing of it is written, as the cancellation says), and
    the turns that joined meanwhile still commit."""
    tokens = await new_sessions(store, 2)
    async with anyio.create_task_group() as tg:
        with anyio.CancelScope() as scope:
            scope.cancel()  # delivered at the first yield
            tg.start_soon(
                functools.partial(store.append_turn, "s1", commit(1, 0), token=tokens["s1"])
            )
            await store.append_turn("s0", commit(1, 0), token=tokens["s0"])
        assert scope.cancelled_caught
    assert (await store.load("s0")).meta.turn_count == 0
    assert await store.verify("s1") == 3
    await store.append_turn("s0", commit(1, 0), token=tokens["s0"])
    assert await store.verify("s0") == 3


async def test_a_commit_that_raises_another_error_ends_its_batch(store: SQLiteStore) -> None:
    """An error of the commit that is not SQLite's (so it may come after the commit
    ended) still ends the batch: each caller gets CommitUnknown instead of waiting
    forever, and the store writes on (here the commit never ran: nothing is stored)."""
    tokens = await new_sessions(store, 2)

    def broken(conn: sqlite3.Connection) -> None:
        raise RuntimeError("the committer broke")

    assert store._committer is not None
    store._committer.stop()
    store._committer = Committer("test-commit", broken)
    with anyio.fail_after(30):
        got = await outcomes(store, [(sid, commit(1, 0), tok) for sid, tok in tokens.items()])
    assert all(isinstance(e, CommitUnknown) and "the committer broke" in str(e) for e in got), got
    store._committer.stop()
    store._committer = Committer("test-commit")
    for sid, tok in tokens.items():
        assert (await store.load(sid)).meta.turn_count == 0
        await store.append_turn(sid, commit(1, 0), token=tok)
        assert await store.verify(sid) == 3
