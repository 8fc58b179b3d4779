"""Session benchmarks (issue 3): a whole turn through ``Session.send``, and at scale.

Every part runs a :class:`~sessions.SessionManager` on the ``memory:`` store with the
default ``graphs/turn.dot`` and the offline built-in handlers (``EchoModel``,
``KeywordMemory``), structlog off.  Targets:

* turn p50 ≤ 80 µs; history growth: mean of the last 50 of 2,000 turns ≤ 1.10 × the
  first 50's;
* throughput (turns sent concurrently across sessions in one event loop) ≥ 8,000
  turns/s with 50 sessions, ≥ 6,000 with 1,000;
* with a 50 ms model (``EchoModel(delay=0.05)``): 10 sessions × 5 turns run ≥ 9.5× in
  parallel (serial estimate / wall); 1,000 sessions × 5 turns ≤ 0.6 s;
* turn latency with heartbeats every 10 ms ≤ 1.2× without;
* the four session types within 5 % of each other; switching the active session ≤ 5 µs;
* memory: 10 sessions × 1,000 messages of ~1 KB ≤ 25 MB and 1,000 live sessions × 20
  messages ≤ 60 MB above baseline (tracemalloc); 100 create/close cycles grow RSS < 1 MB;
* streaming (issue 10, :mod:`bench.session_stream`): ``session.stream`` vs
  ``session.send``; first token added by engine + session ≤ 0.5 ms; ≤ 5 µs a delta.
* tracing (issue 14, :mod:`bench.session_otel`): a turn with OpenTelemetry off, on over
  the no-op API, on over the SDK; the p50 each adds (measured, no target).

Quick mode shrinks every workload; targets that depend on the workload's size are then
not applied.
"""

from __future__ import annotations

import gc
import itertools
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from bench.harness import (
    BenchContext,
    BenchResult,
    Stats,
    Target,
    at_least,
    at_most,
    bench_env,
    growth_ratio,
    mean,
    rss_bytes,
    settle,
    time_async,
)
from bench.peers_impl import Turn
from bench.peers_mock import user_text
from bench.session_otel import tracing
from bench.session_stream import streaming

if TYPE_CHECKING:
    from sessions import Session, SessionManager
    from sessions.store.base import SessionType, Store

NAME = "session"
TITLE = "sessions: turn latency, growth, concurrency, heartbeats, memory (issue 3)"

TYPES: tuple[SessionType, ...] = ("primary", "background", "delegation", "consultation")
MB = 1024 * 1024


@asynccontextmanager
async def manager(url: str | Store = "memory:", **options: Any) -> AsyncIterator[SessionManager]:
    """A running manager on ``url`` (a store URL or a store) with room for many sessions
    and logging off."""
    from sessions import Limits, SessionManager

    limits = options.pop("limits", None) or Limits(max_active_sessions=10_000)
    async with SessionManager(url, limits=limits, log_nodes=False, **options) as m:
        yield m


async def session_turn(stack: AsyncExitStack, url: str, **options: Any) -> Turn:
    """A turn function of one fresh session on the store at ``url`` (for :mod:`bench.peers`)."""
    m = await stack.enter_async_context(manager(url, **options))
    session = await m.get_or_create("bench")

    async def turn(text: str) -> str:
        result = await session.send(text)
        if not result.ok:
            raise RuntimeError(f"turn failed: {result.error!r}")
        return result.reply

    return turn


async def timed_turns(
    session: Session, n: int, *, start: int = 0, yield_: bool = False
) -> list[int]:
    """Latency of ``n`` consecutive turns on ``session``, in nanoseconds.

    ``yield_`` lets the event loop run once per turn, inside the timed window, as a
    server would between messages: background work (heartbeats) then shows as latency.
    """
    clock = time.perf_counter_ns
    out: list[int] = []
    for i in range(start, start + n):
        text = user_text(i)
        t0 = clock()
        if yield_:
            await anyio.lowlevel.checkpoint()
        result = await session.send(text)
        out.append(clock() - t0)
        if not result.ok:
            raise RuntimeError(f"turn {i} failed: {result.error!r}")
    return out


async def _open(m: SessionManager, prefix: str, n: int, **kw: Any) -> list[Session]:
    return [await m.get_or_create(f"{prefix}-{i}", **kw) for i in range(n)]


async def _drive(sessions: Sequence[Session], turns: int) -> float:
    """Send ``turns`` turns to every session concurrently; the wall time in seconds."""

    async def one(s: Session) -> None:
        for i in range(turns):
            await s.send(user_text(i))

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for s in sessions:
            tg.start_soon(one, s)
    return time.perf_counter() - t0


def _if_full(ctx: BenchContext, target: Target) -> Target | None:
    """``target`` in full mode; quick mode's smaller workloads are not comparable."""
    return None if ctx.quick else target


# ---------------------------------------------------------------------------- parts


async def latency_growth(ctx: BenchContext, res: BenchResult) -> None:
    """One session's turn latency from turn 1 to 2,000 (after another session warms up)."""
    n = ctx.n(2_000, 60)
    async with manager() as m:
        warm = await m.get_or_create("warm")
        await timed_turns(warm, ctx.n(300, 10))
        settle()
        samples = await timed_turns(await m.get_or_create("growth"), n)
    res.add_latency("turn, memory store", Stats.of(samples), p50=80)
    ratio = growth_ratio(samples, 50)
    res.add(f"history growth: last/first 50 of {n} turns", ratio, "×", _if_full(ctx, at_most(1.10)))
    await _machinery_growth(ctx, res, n)


async def _machinery_growth(ctx: BenchContext, res: BenchResult, n: int) -> None:
    """The same run with recall memory capped at 20 items: the session machinery alone.

    The default ``KeywordMemory`` keeps up to 1,000 items per session and recall scans
    them all, so its cost grows with the conversation until the cap; capping it shows
    whether anything *else* grows.
    """
    from handlers.adapters import KeywordMemory

    async with manager(memory=KeywordMemory(max_items=20)) as m:
        await timed_turns(await m.get_or_create("warm"), ctx.n(300, 10))
        settle()
        samples = await timed_turns(await m.get_or_create("growth"), n)
    res.add("turn p50, recall memory capped at 20 items", Stats.of(samples).p50 / 1e3, "µs")
    res.add("history growth, recall memory capped at 20 items", growth_ratio(samples, 50), "×")


async def throughput(ctx: BenchContext, res: BenchResult) -> None:
    """Turns per second, sent concurrently to 50 and to 1,000 sessions."""
    for n_sessions, turns, goal in (
        (50, ctx.n(100, 4), 8_000.0),
        (ctx.n(1_000, 40), ctx.n(10, 2), 6_000.0),
    ):
        async with manager() as m:
            sessions = await _open(m, "tp", n_sessions)
            await _drive(sessions[:10], 2)  # warm caches; not counted
            settle()
            wall = await _drive(sessions, turns)
        rate = n_sessions * turns / wall
        target = at_least(goal) if n_sessions in (50, 1_000) else None
        res.add(f"throughput, {n_sessions} sessions × {turns} turns", rate, "turns/s", target)


async def slow_model(ctx: BenchContext, res: BenchResult) -> None:
    """With a 50 ms model: parallelism of 10 sessions, wall time of 1,000 sessions."""
    from handlers.adapters import EchoModel

    async with manager(llm=EchoModel(delay=0.05)) as m:
        ten = await _open(m, "slow", 10)
        single = Stats.of(await timed_turns(ten[0], 3)).p50 / 1e9
        wall = await _drive(ten, 5)
        res.add(
            "50 ms model: parallelism, 10 sessions × 5 turns",
            50 * single / wall,
            "×",
            at_least(9.5),
        )
        many = await _open(m, "slow-many", ctx.n(1_000, 50))
        settle()
        wall = await _drive(many, 5)
    target = _if_full(ctx, at_most(0.6))
    res.add(f"50 ms model: wall, {len(many)} sessions × 5 turns", wall, "s", target)
    res.notes.append(f"50 ms model: one turn alone takes {single * 1e3:.1f} ms")


async def heartbeats(ctx: BenchContext, res: BenchResult) -> None:
    """Turn latency on one of 10 sessions, with and without all of them heartbeating."""
    n, rounds = ctx.n(1_000, 30), 2
    base: list[int] = []
    with_hb: list[int] = []
    async with manager() as m:
        sessions = await _open(m, "hb", 10)
        await timed_turns(sessions[0], ctx.n(200, 5), yield_=True)
        for r in range(rounds):  # alternate, so drift hits both sides alike
            settle()
            base += await timed_turns(sessions[0], n, start=2 * r * n, yield_=True)
            for s in sessions:
                s.start_heartbeat(0.01)
            with_hb += await timed_turns(sessions[0], n, start=(2 * r + 1) * n, yield_=True)
            for s in sessions:
                s.stop_heartbeat()
        beats = sum(s.heartbeat.runs for s in sessions)
    ratio = mean(with_hb) / mean(base)
    res.add("heartbeats every 10 ms: turn mean, with / without", ratio, "×", at_most(1.2))
    res.add(
        "heartbeats every 10 ms: turn p50, with / without",
        Stats.of(with_hb).p50 / Stats.of(base).p50,
        "×",
    )
    res.notes.append(f"{beats} heartbeat runs during {rounds * n} turns")


async def session_types(ctx: BenchContext, res: BenchResult) -> None:
    """p50 turn latency per session type; rounds interleave the types against drift."""
    per_round, rounds = ctx.n(300, 10), ctx.n(5, 2)
    samples: dict[str, list[int]] = {t: [] for t in TYPES}
    async with manager() as m:
        sessions = {t: await m.create(f"type-{t}", type=t) for t in TYPES}
        for s in sessions.values():
            await timed_turns(s, ctx.n(50, 2))
        for r in range(rounds):
            settle()
            for t, s in sessions.items():
                samples[t] += await timed_turns(s, per_round, start=r * per_round)
    p50 = {t: Stats.of(v).p50 / 1e3 for t, v in samples.items()}
    spread = (max(p50.values()) / min(p50.values()) - 1.0) * 100.0
    res.add("session types: p50 spread (max/min - 1)", spread, "%", at_most(5.0))
    res.notes.append("type p50 µs: " + ", ".join(f"{t} {v:.1f}" for t, v in p50.items()))


async def switching(ctx: BenchContext, res: BenchResult) -> None:
    """``manager.switch`` among 10 live sessions."""
    async with manager() as m:
        ids = itertools.cycle([s.id for s in await _open(m, "sw", 10)])
        samples = await time_async(lambda: m.switch(next(ids)), ctx.n(20_000, 200), warmup=100)
    res.add_latency("switch active session", Stats.of(samples), p50=5)


async def create_close_cycles(ctx: BenchContext, res: BenchResult) -> None:
    """RSS growth over 100 cycles of create → one turn → close → delete."""
    n = ctx.n(100, 10)
    async with manager() as m:

        async def cycle(i: int) -> None:
            s = await m.create(f"cycle-{i}")
            await s.send("hi")
            await m.delete(s.id)

        for i in range(20):
            await cycle(-1 - i)
        settle()
        before = rss_bytes()
        for i in range(n):
            await cycle(i)
        settle()
        grown = (rss_bytes() - before) / MB
    res.add(
        f"RSS growth over {n} create/close cycles", grown, "MB", _if_full(ctx, Target("<", 1.0))
    )


async def _traced_mb(build: Callable[[SessionManager], Awaitable[None]], **options: Any) -> float:
    """Python memory held after ``build`` ran on a fresh manager, above the idle manager's."""
    tracemalloc.start()
    try:
        async with manager(**options) as m:
            gc.collect()
            base = tracemalloc.get_traced_memory()[0]
            await build(m)
            gc.collect()
            return (tracemalloc.get_traced_memory()[0] - base) / MB
    finally:
        tracemalloc.stop()


def _kb_text(i: int) -> str:
    """A distinct ~1 KB message (distinct, so no two messages share one string)."""
    return (f"message {i}: " + "lorem ipsum dolor sit amet " * 40)[:1000]


async def memory(ctx: BenchContext, res: BenchResult) -> None:
    """Memory held by sessions: a few long ones with ~1 KB messages, many short ones."""
    from sessions import Limits

    n_big, turns_big = ctx.n(10, 2), ctx.n(500, 10)
    n_many, turns_many = ctx.n(1_000, 20), ctx.n(10, 2)
    # Compaction off: the budget is for holding every message, the worst case.
    limits = Limits(max_active_sessions=10_000, compaction_threshold_tokens=None)

    async def big(m: SessionManager) -> None:
        for s in await _open(m, "big", n_big):
            for i in range(turns_big):
                await s.send(_kb_text(i))

    async def many(m: SessionManager) -> None:
        sessions = await _open(m, "many", n_many)
        await _drive(sessions, turns_many)

    mb = await _traced_mb(big, limits=limits)
    name = f"memory: {n_big} sessions × {2 * turns_big} messages of ~1 KB"
    res.add(name, mb, "MB", _if_full(ctx, at_most(25)))
    mb = await _traced_mb(many, limits=limits)
    name = f"memory: {n_many} live sessions × {2 * turns_many} messages"
    res.add(name, mb, "MB", _if_full(ctx, at_most(60)))
    res.notes.append("memory: tracemalloc, compaction off, memory: store included")


PARTS: tuple[Callable[[BenchContext, BenchResult], Awaitable[None]], ...] = (
    latency_growth,
    throughput,
    slow_model,
    heartbeats,
    session_types,
    switching,
    create_close_cycles,
    memory,
    streaming,
    tracing,
)


async def _main(ctx: BenchContext, res: BenchResult) -> None:
    with ctx.progress("session parts", len(PARTS)) as advance:
        for part in PARTS:
            try:
                await part(ctx, res)
            except Exception as exc:  # one part failing must not hide the others
                res.skip(part.__name__, f"failed: {type(exc).__name__}: {exc}")
            advance(1)


def run(ctx: BenchContext) -> BenchResult:
    """Run every session benchmark part."""
    res = BenchResult(NAME, TITLE)
    t0 = time.perf_counter()
    try:
        import sessions  # noqa: F401
    except ImportError as exc:
        res.unavailable = f"cannot import sessions: {exc}"
        return res
    with tempfile.TemporaryDirectory(prefix="bench-session-") as d, bench_env(Path(d)):
        anyio.run(_main, ctx, res)
    res.seconds = time.perf_counter() - t0
    return res
