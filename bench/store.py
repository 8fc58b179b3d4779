"""Store benchmarks (issue 4): SQLite commits, loads, export/import; PostgreSQL.

Targets:

* SQLite per-turn commit (``append_turn``: two messages and a 7-node trace) p50 ≤ 250 µs,
  p99 ≤ 2 ms, flat from turn 1 to 10,000 (mean of the last 50 ≤ 1.15 × first 50);
* load a 1,000-message session ≤ 5 ms and a 10,000-message one ≤ 40 ms (all messages);
  the recent 50 of 10,000 ≤ 1 ms;
* signed export of 1,000 messages ≤ 20 ms; import with verification ≤ 30 ms;
* PostgreSQL (``$TURNGRAPH_TEST_PG``, default loopback) turn commit p50 ≤ 2 ms, and two
  worker processes hosting 200 shared sessions sustain ≥ 1.5× the turns/s of one.

PostgreSQL parts are skipped with a note when the server is unreachable.  The SQLite
store is used as configured by default (WAL, ``synchronous=FULL``).
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import queue
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import anyio

from bench.engine_turn import CHAIN
from bench.harness import (
    BenchContext,
    BenchResult,
    Stats,
    at_least,
    at_most,
    bench_env,
    growth_ratio,
    settle,
    time_async,
)

if TYPE_CHECKING:
    from sessions.store.base import Store, TurnCommit

NAME = "store"
TITLE = "session stores: SQLite and PostgreSQL (issue 4)"

PG_URL = os.environ.get("TURNGRAPH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
_TRACE = tuple(
    {"id": n, "handler": n, "status": "success", "attempts": 1, "duration_ms": 0.012} for n in CHAIN
)


def make_commit(turn: int, seq: int, n_messages: int = 2) -> TurnCommit:
    """Turn ``turn``'s commit: ``n_messages`` alternating user/assistant messages from ``seq``."""
    from sessions.store.base import Message, TurnCommit, TurnRecord

    now = time.time()
    msgs = tuple(
        Message(
            seq + k,
            "user" if k % 2 == 0 else "assistant",
            f"turn {turn} message {k}: what about the weather and the topic of item {seq + k}?",
            turn,
            now,
        )
        for k in range(n_messages)
    )
    record = TurnRecord(turn, "success", f"bench:{turn}", "bench-graph", _TRACE, now)
    return TurnCommit(record, msgs)


async def new_session(store: Store, sid: str) -> int:
    """Create ``sid`` and take its lease; returns the fencing token."""
    from sessions.store.base import SessionMeta

    now = time.time()
    await store.create(SessionMeta(sid, created_at=now, updated_at=now))
    return await store.acquire(sid, "bench", 300.0)


async def commit_series(store: Store, sid: str, turns: int, n_messages: int = 2) -> list[int]:
    """A new session ``sid`` and ``turns`` timed commits to it, in nanoseconds."""
    token = await new_session(store, sid)
    settle()
    clock = time.perf_counter_ns
    out: list[int] = []
    for t in range(turns):
        commit = make_commit(t + 1, t * n_messages, n_messages)
        t0 = clock()
        await store.append_turn(sid, commit, token=token)
        out.append(clock() - t0)
    return out


async def _sqlite_commits(ctx: BenchContext, res: BenchResult, store: Store) -> None:
    n = ctx.n(10_000, 50)
    # Warm the store (statement cache, database thread, WAL) on another session first:
    # otherwise the first 50 commits carry the warm-up and any growth ratio passes.
    await commit_series(store, "commits-warm-up", ctx.n(300, 10))
    samples = await commit_series(store, "commits", n)
    res.add_latency("SQLite turn commit", Stats.of(samples), p50=250, p99=2_000)
    await _witness_off_commits(ctx, res, store)
    target = None if ctx.quick else at_most(1.15)
    res.add(f"SQLite commit growth: last/first 50 of {n}", growth_ratio(samples, 50), "×", target)


async def _witness_off_commits(ctx: BenchContext, res: BenchResult, store: Store) -> None:
    """The same commits on a store without the rollback witness, measured right after
    the default's: the difference is the witness's per-turn cost."""
    from sessions.store import open_store

    path = Path(str(getattr(store, "path", "")))
    async with open_store(f"sqlite:///{path.with_name('no-witness.db')}?witness=off") as other:
        await commit_series(other, "commits-warm-up", ctx.n(300, 10))
        samples = await commit_series(other, "commits", ctx.n(3_000, 50))
    res.add_latency("SQLite turn commit, witness off", Stats.of(samples))


async def _sqlite_loads(ctx: BenchContext, res: BenchResult, store: Store) -> dict[int, str]:
    """Sessions of 1,000 and 10,000 messages, loaded whole; recent 50 of the larger."""
    sizes = {1_000: 5.0, 10_000: 40.0} if not ctx.quick else {100: None, 400: None}
    ids: dict[int, str] = {}
    for size, goal in sizes.items():
        sid = ids[size] = f"load-{size}"
        await commit_series(store, sid, size // 10, n_messages=10)
        load_all = functools.partial(store.load, sid, recent=size)
        reps = ctx.n(30 if size <= 1_000 else 10, 3)  # a 10,000-message load is slow
        samples = await time_async(load_all, reps, warmup=1)
        res.add_latency(
            f"SQLite load, all {size:,} messages", Stats.of(samples), "ms", p50=goal, mean_too=False
        )
    big = max(ids)
    samples = await time_async(lambda: store.load(ids[big], recent=50), ctx.n(200, 5), warmup=2)
    goal = None if ctx.quick else 1.0
    res.add_latency(
        f"SQLite load, recent 50 of {big:,}", Stats.of(samples), "ms", p50=goal, mean_too=False
    )
    return ids


async def _sqlite_export(
    ctx: BenchContext, res: BenchResult, store: Store, size: int, tmp: Path
) -> None:
    """Signed export of the ``size``-message session ``load-<size>``, and its import."""
    from sessions.store import open_store

    sid, reps = f"load-{size}", ctx.n(20, 2)
    goal_e, goal_i = (20.0, 30.0) if size == 1_000 else (None, None)
    samples = await time_async(lambda: store.export(sid), reps, warmup=1)
    name = f"signed export, {size:,} messages"
    res.add_latency(name, Stats.of(samples), "ms", p50=goal_e, mean_too=False)
    doc = await store.export(sid)
    async with open_store(f"sqlite:///{tmp / 'import.db'}") as other:
        samples = await time_async(lambda: other.import_(doc, replace=True), reps, warmup=1)
    name = f"import with verification, {size:,} messages"
    res.add_latency(name, Stats.of(samples), "ms", p50=goal_i, mean_too=False)


async def sqlite_part(ctx: BenchContext, res: BenchResult, tmp: Path) -> None:
    """Every SQLite measurement, on one database file."""
    from sessions.store import open_store

    async with open_store(f"sqlite:///{tmp / 'bench.db'}") as store:
        await _sqlite_commits(ctx, res, store)
        ids = await _sqlite_loads(ctx, res, store)
        await _sqlite_export(ctx, res, store, min(ids), tmp)


def pg_reachable(url: str = PG_URL, timeout: float = 1.0) -> str | None:
    """None if a TCP connection to the server works, else why not."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), timeout):
            return None
    except OSError as exc:
        return f"{parts.hostname}:{parts.port or 5432}: {exc.strerror or exc}"


async def postgres_part(ctx: BenchContext, res: BenchResult, url: str = PG_URL) -> None:
    """PostgreSQL commit latency (skipped if unreachable)."""
    from sessions.store import open_store

    why = pg_reachable(url)
    if why is not None:
        res.skip("PostgreSQL turn commit p50", f"skipped: PostgreSQL unreachable ({why})")
        return
    sid = f"bench-commit-{uuid.uuid4().hex[:10]}"
    async with AsyncExitStack() as stack:
        store = await stack.enter_async_context(open_store(url))
        stack.push_async_callback(store.delete, sid)
        samples = await commit_series(store, sid, ctx.n(1_000, 20))
    res.add_latency("PostgreSQL turn commit", Stats.of(samples), "ms", p50=2.0)


# ---------------------------------------------------------------------------- scaling


def _worker(url: str, ids: list[str], seconds: float, barrier: Any, results: Any) -> None:
    """Child process: host ``ids``, start with the others, send turns for ``seconds``."""
    try:
        results.put(anyio.run(_host, url, ids, seconds, barrier))
    except BaseException as exc:  # the parent must hear of any failure, not hang
        barrier.abort()
        results.put(f"{type(exc).__name__}: {exc}")


async def _host(url: str, ids: list[str], seconds: float, barrier: Any) -> tuple[int, float, float]:
    from bench.session import manager

    async with manager(url) as m:
        sessions = [await m.get(sid) for sid in ids]
        await _warm_up(sessions)
        await anyio.to_thread.run_sync(barrier.wait, 120.0)
        return await _drive_for(sessions, seconds)


async def _warm_up(sessions: Sequence[Any]) -> None:
    """One turn per session before the clock starts: the measurement is the sustained
    rate, not each worker's first turns (statements not yet prepared by the driver,
    no session row written by this process yet)."""
    from bench.peers_mock import user_text

    async with anyio.create_task_group() as tg:
        for s in sessions:
            tg.start_soon(s.send, user_text(0))


async def _drive_for(sessions: Sequence[Any], seconds: float) -> tuple[int, float, float]:
    """Turns sent back to back on every session until ``seconds`` pass.

    Returns (turns, elapsed seconds, CPU seconds this process used meanwhile).
    """
    from bench.peers_mock import user_text

    count = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    deadline = t0 + seconds

    async def one(session: Any) -> None:
        nonlocal count
        i = 0
        while time.perf_counter() < deadline:
            await session.send(user_text(i))
            i += 1
            count += 1

    async with anyio.create_task_group() as tg:
        for s in sessions:
            tg.start_soon(one, s)
    return count, time.perf_counter() - t0, time.process_time() - cpu0


def cpu_ticks() -> tuple[int, int]:
    """Machine-wide (busy, total) CPU ticks from ``/proc/stat`` ((0, 0) where unavailable)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


@dataclass(frozen=True, slots=True)
class WorkersRun:
    """What ``k`` workers did: turns/s, their mean CPU use, the whole machine's CPU use."""

    rate: float
    worker_cpu: float
    """Mean fraction of one core each worker used."""
    machine_busy: float
    """Fraction of all the machine's cores busy during the run (anyone's work)."""


def run_workers(url: str, ids: list[str], k: int, seconds: float) -> WorkersRun:
    """``k`` spawned worker processes sharing ``ids``, started together."""
    mp = multiprocessing.get_context("spawn")  # never fork a process that has threads
    barrier = mp.Barrier(k + 1)
    results = mp.Queue()
    procs = [
        mp.Process(target=_worker, args=(url, ids[i::k], seconds, barrier, results))
        for i in range(k)
    ]
    for p in procs:
        p.start()
    try:
        # A broken barrier means a worker failed during setup; its message is queued.
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=180.0)
        busy0, total0 = cpu_ticks()
        got = [results.get(timeout=seconds + 180.0) for _ in procs]
        busy1, total1 = cpu_ticks()
    except queue.Empty:
        got = ["a worker did not report"]
    finally:
        for p in procs:
            p.join(timeout=30.0)
            if p.is_alive():
                p.terminate()
    errors = [g for g in got if isinstance(g, str)]
    if errors:
        raise RuntimeError(f"worker failed: {errors[0]}")
    return WorkersRun(
        rate=sum(g[0] for g in got) / max(g[1] for g in got),
        worker_cpu=sum(g[2] / g[1] for g in got) / len(got),
        machine_busy=(busy1 - busy0) / max(1, total1 - total0),
    )


async def _sessions(url: str, ids: list[str], *, delete: bool = False) -> None:
    from sessions.store import open_store
    from sessions.store.base import SessionMeta

    async with open_store(url) as store:
        for sid in ids:
            if delete:
                await store.delete(sid)
            else:
                await store.create(SessionMeta(sid, created_at=time.time(), updated_at=time.time()))


def scaling(ctx: BenchContext, res: BenchResult, url: str = PG_URL) -> None:
    """One worker process vs two hosting the same sessions on PostgreSQL."""
    name = "PostgreSQL: 2 workers / 1 worker, turns/s"
    why = pg_reachable(url)
    if why is not None:
        res.skip(name, f"skipped: PostgreSQL unreachable ({why})")
        return
    n, seconds = ctx.n(200, 8), (0.3 if ctx.quick else 5.0)
    run_id = uuid.uuid4().hex[:8]
    ids = [f"bench-mw-{run_id}-{i}" for i in range(n)]
    anyio.run(functools.partial(_sessions, url, ids))
    try:
        one = run_workers(url, ids, 1, seconds)
        two = run_workers(url, ids, 2, seconds)
    finally:
        anyio.run(functools.partial(_sessions, url, ids, delete=True))
    res.add(f"PostgreSQL: 1 worker, {n} sessions", one.rate, "turns/s")
    res.add(f"PostgreSQL: 2 workers, {n} sessions", two.rate, "turns/s")
    res.add(name, two.rate / one.rate, "×", None if ctx.quick else at_least(1.5))
    for k, r in ((1, one), (2, two)):
        res.notes.append(
            f"{k} worker(s): each used {r.worker_cpu:.0%} of a core; "
            f"machine CPU {r.machine_busy:.0%} busy (all processes, PostgreSQL included)"
        )


@contextlib.contextmanager
def pg_schema(url: str) -> Iterator[str]:
    """``url`` with its ``search_path`` set to a new schema, dropped at the end.

    Every run starts from empty tables, whatever earlier runs left (a server with
    autovacuum off keeps every deleted row otherwise), touches nothing else in the
    database, and leaves nothing behind.  Yields ``url`` unchanged if the server is
    unreachable or psycopg is missing (the parts then skip with the reason).
    """
    try:
        import psycopg

        admin = psycopg.connect(url, autocommit=True, connect_timeout=3)
    except Exception:  # unreachable, refused, no driver: reported by the parts
        yield url
        return
    schema = f"turngraph_bench_{uuid.uuid4().hex[:10]}"
    with admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            sep = "&" if "?" in url else "?"
            yield f"{url}{sep}options={quote(f'-csearch_path={schema}')}"
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


def run(ctx: BenchContext) -> BenchResult:
    """Measure the SQLite store, then PostgreSQL (in a schema of its own)."""
    res = BenchResult(NAME, TITLE)
    t0 = time.perf_counter()
    try:
        import sessions.store  # noqa: F401
    except ImportError as exc:
        res.unavailable = f"cannot import sessions.store: {exc}"
        return res
    with (
        tempfile.TemporaryDirectory(prefix="bench-store-") as d,
        bench_env(Path(d)),
        pg_schema(PG_URL) as pg,
    ):
        parts = {
            "SQLite": functools.partial(anyio.run, sqlite_part, ctx, res, Path(d)),
            "PostgreSQL": functools.partial(anyio.run, postgres_part, ctx, res, pg),
            "PostgreSQL scaling": functools.partial(scaling, ctx, res, pg),
        }
        with ctx.progress("store parts", len(parts)) as advance:
            for name, part in parts.items():
                # Write back what earlier parts (and benchmarks) left dirty in the page
                # cache first: the kernel would otherwise flush it during this part,
                # and every fsync timed here would queue behind it.
                os.sync()
                try:
                    part()
                except Exception as exc:  # report and go on with the next part
                    res.skip(name, f"failed: {type(exc).__name__}: {exc}")
                advance(1)
    res.seconds = time.perf_counter() - t0
    return res
