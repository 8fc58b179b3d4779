"""Durable throughput: turns per second with 1, 10, 100 and 1,000 concurrent sessions.

Every session sends its turns one after another (a turn is acknowledged before the
next is sent) and all sessions run at once in one event loop, on the
:mod:`bench.peers_mock` workload.  A turn counts when its store has made it durable:

* turngraph with the SQLite store (WAL, ``synchronous=FULL``: an fsync covers every
  acknowledged turn), with group commit and, for comparison, without it;
* turngraph with PostgreSQL (skipped when unreachable) and with the memory store
  (not durable: the ceiling the durable stores are measured against);
* the fsync floor (:mod:`bench.fsync_floor`): the memory store whose turns each wait for
  a group fsync and nothing else, the ceiling of any durable store in one event loop;
* LangGraph with ``AsyncSqliteSaver`` (one connection, as its docs show) and
  ``durability="exit"`` (one checkpoint write per run, as turngraph commits once per
  turn: the like-for-like row) and ``durability="async"`` (per step, written in the
  background while the next step runs).

Targets (issue 17), same run: 100 sessions on SQLite FULL ≥ 20× LangGraph ``exit``
and ≥ 0.6× turngraph's memory store (:func:`side_by_side`: rounds that measure the
three in turn after warm-up turns; the median of the rounds' ratios); one session's
turn p50 with group commit within 10 % of the same store without it (today's path),
timed in alternating blocks.
"""

from __future__ import annotations

import gc
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import anyio

from bench import peers_mock as mock
from bench.engine_turn import turn_graph
from bench.harness import BenchContext, BenchResult, Stats, at_least, at_most, bench_env
from bench.store import PG_URL, pg_reachable, pg_schema

if TYPE_CHECKING:
    from sessions import Session, SessionManager
    from sessions.store.base import Store

NAME = "throughput"
TITLE = "durable turns/s, 1 to 1,000 concurrent sessions: turngraph vs LangGraph (issue 17)"

SQLITE = "turngraph SQLite FULL (group commit)"
SQLITE_ALONE = "turngraph SQLite FULL (group commit off)"
POSTGRES = "turngraph PostgreSQL"
MEMORY = "turngraph memory store (not durable)"
FLOOR = "fsync floor: memory store + group fsync, no store work"
LG_EXIT = 'LangGraph + AsyncSqliteSaver, durability="exit"'
LG_ASYNC = 'LangGraph + AsyncSqliteSaver, durability="async"'

SendTurn = Callable[[int, str], Awaitable[None]]
"""``await send(session_index, text)``: one acknowledged turn of that session."""
Setup = Callable[[AsyncExitStack, Path, int], Awaitable[SendTurn]]


def _mock_manager(url: str | Store) -> AbstractAsyncContextManager[SessionManager]:
    """A manager on ``url`` (a store URL or an unopened store) running the mock
    workload's handlers."""
    from bench.peers import session_mock_registry
    from bench.session import manager

    reg = session_mock_registry()
    return manager(url, registry=reg, turn_graph=turn_graph(reg))


def _turngraph(url: str | Callable[[Path], Store]) -> Setup:
    """turngraph on the store at ``url`` (``{tmp}``: the round's folder), or on the
    store ``url(folder)`` makes."""

    async def setup(stack: AsyncExitStack, tmp: Path, sessions: int) -> SendTurn:
        store = url.format(tmp=tmp) if isinstance(url, str) else url(tmp)
        m = await stack.enter_async_context(_mock_manager(store))
        live = [await m.get_or_create(f"tp-{i}") for i in range(sessions)]

        async def send(i: int, text: str) -> None:
            result = await live[i].send(text)
            if not result.ok:
                raise RuntimeError(f"turn failed: {result.error!r}")

        return send

    return setup


def _langgraph(durability: str) -> Setup:
    async def setup(stack: AsyncExitStack, tmp: Path, sessions: int) -> SendTurn:
        import aiosqlite
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        from bench.peers_impl import lg_graph

        conn = await aiosqlite.connect(tmp / f"langgraph-{durability}.db")
        stack.push_async_callback(conn.close)
        # The same durability as ours: WAL with an fsync at every commit.
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA synchronous=FULL")
        graph = lg_graph(AsyncSqliteSaver(conn))
        configs = [{"configurable": {"thread_id": f"tp-{i}"}} for i in range(sessions)]

        async def send(i: int, text: str) -> None:
            await graph.ainvoke({"input": text}, configs[i], durability=durability)

        return send

    return setup


async def _drive(send: SendTurn, sessions: int, turns: int, start: int) -> float:
    """Every session sends ``turns`` turns, all sessions at once; the wall time."""

    async def one(i: int) -> None:
        for k in range(start, start + turns):
            await send(i, mock.user_text(k))

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(sessions):
            tg.start_soon(one, i)
    return time.perf_counter() - t0


async def rate(setup: Setup, sessions: int, turns: int, warmup: int = 1) -> float:
    """Durable turns/s of ``sessions`` sessions sending ``turns`` turns each, after
    ``warmup`` untimed turns each (the first creates the sessions' rows)."""
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as d:
        async with AsyncExitStack() as stack:
            send = await setup(stack, Path(d), sessions)
            await _drive(send, sessions, warmup, 0)
            os.sync()  # earlier writes must not be flushed inside the timed window
            gc.collect()  # nor earlier measurements' garbage collected in it
            wall = await _drive(send, sessions, turns, warmup)
    return sessions * turns / wall


SIDE_BY_SIDE: Final = (MEMORY, SQLITE, LG_EXIT, FLOOR)
"""The implementations the targets compare, measured in turns at 100 sessions."""


async def side_by_side(
    ctx: BenchContext, res: BenchResult, impls: dict[str, Setup | str]
) -> dict[str, list[float]]:
    """The target rows: 100 sessions of each of :data:`SIDE_BY_SIDE`, in rounds (each
    round measures each once, in a rotating order, so all see the same machine), each
    measurement after 3 warm-up turns a session; the median of the rounds per
    implementation.  turngraph's rows send 30 turns a session, LangGraph's 2.  Returns
    each complete implementation's rates, round by round."""
    rounds = ctx.n(7, 1)
    got: dict[str, list[float]] = {label: [] for label in SIDE_BY_SIDE}
    with ctx.progress("100 sessions side by side", rounds * len(SIDE_BY_SIDE)) as advance:
        for r in range(rounds):
            k = r % len(SIDE_BY_SIDE)
            order = SIDE_BY_SIDE[k:] + SIDE_BY_SIDE[:k]
            for label in order:
                advance(1)
                setup = impls[label]
                if isinstance(setup, str):
                    continue
                turns = ctx.n(2, 1) if label == LG_EXIT else ctx.n(30, 2)
                try:
                    got[label].append(await rate(setup, 100, turns, warmup=ctx.n(3, 1)))
                except ImportError:
                    continue
    medians = {label: statistics.median(v) for label, v in got.items() if v}
    for label, value in medians.items():
        spread = f"{min(got[label]):,.0f}–{max(got[label]):,.0f} over {len(got[label])} rounds"
        res.add(f"100 sessions side by side (median), {label}", value, "turns/s", note=spread)
    res.params.update(side_by_side={label: got[label] for label in got})
    return {label: v for label, v in got.items() if len(v) == rounds}


def round_ratios(got: dict[str, list[float]], a: str, b: str) -> list[float]:
    """``a``'s rate over ``b``'s in each round (measured one after the other, so the
    machine's load moves both alike), sorted."""
    return sorted(x / y for x, y in zip(got[a], got[b], strict=True))


def workloads(ctx: BenchContext) -> tuple[tuple[int, int], ...]:
    """(sessions, turns per session): 500 to 4,000 turns a level in full mode; quick
    mode stops at 100 sessions.  LangGraph rows send a quarter of the turns (at least
    one per session): they run tens of turns a second."""
    if ctx.quick:
        return ((1, 10), (10, 1), (100, 1))
    return ((1, 500), (10, 50), (100, 20), (1_000, 4))


async def one_session(ctx: BenchContext, res: BenchResult) -> None:
    """One session's turn p50 on SQLite FULL with group commit on and off (today's
    path), timed in alternating blocks so both see the same machine (each first in
    half of them: with an fsync per turn, the store measured first in a block was
    slower whichever it was)."""
    from bench.session import timed_turns

    samples: dict[str, list[int]] = {SQLITE: [], SQLITE_ALONE: []}
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as d:
        async with AsyncExitStack() as stack:
            live: dict[str, Session] = {}
            for label, options in ((SQLITE, ""), (SQLITE_ALONE, "?group_commit=off")):
                m = await stack.enter_async_context(
                    _mock_manager(f"sqlite:///{d}/{label[:3]}{len(live)}.db{options}")
                )
                live[label] = await m.get_or_create("one")
            for block in range(ctx.n(10, 2)):
                order = list(live.items())
                # Each goes first in half the blocks: the first of a pair measured slower.
                for label, session in order if block % 2 else order[::-1]:
                    turns = await timed_turns(session, ctx.n(100, 5), start=block * 100)
                    samples[label].extend(turns)
    p50 = {label: Stats.of(got).p50 / 1e3 for label, got in samples.items()}
    for label, value in p50.items():
        res.add(f"one session turn p50, {label}", value, "µs")
    target = None if ctx.quick else at_most(1.10)
    res.add(
        "one session turn p50: group commit on / off", p50[SQLITE] / p50[SQLITE_ALONE], "×", target
    )


def _floor_store(tmp: Path) -> Store:
    from bench.fsync_floor import FsyncFloorStore

    return FsyncFloorStore(tmp / "fsync-floor.log")


def implementations(pg: str) -> dict[str, Setup | str]:
    """Label → setup, or why it cannot run here."""
    out: dict[str, Setup | str] = {
        MEMORY: _turngraph("memory:"),
        FLOOR: _turngraph(_floor_store),
        SQLITE: _turngraph("sqlite:///{tmp}/tg.db"),
        SQLITE_ALONE: _turngraph("sqlite:///{tmp}/tg.db?group_commit=off"),
    }
    why = pg_reachable(PG_URL)
    out[POSTGRES] = _turngraph(pg) if why is None else f"unreachable ({why})"
    out[LG_EXIT] = _langgraph("exit")
    out[LG_ASYNC] = _langgraph("async")
    return out


async def _main(ctx: BenchContext, res: BenchResult, pg: str) -> None:
    await one_session(ctx, res)
    impls = implementations(pg)
    rounds = await side_by_side(ctx, res, impls)
    rates: dict[tuple[str, int], float] = {}
    levels = workloads(ctx)
    with ctx.progress("implementations × sessions", len(impls) * len(levels)) as advance:
        for label, setup in impls.items():
            for sessions, turns in levels:
                advance(1)
                if isinstance(setup, str):
                    res.skip(f"{label}, {sessions} sessions", f"skipped: {setup}")
                    continue
                if label in (LG_EXIT, LG_ASYNC):  # tens of turns/s: fewer of them
                    turns = max(1, turns // 4)
                try:
                    got = await rate(setup, sessions, turns)
                except ImportError as exc:
                    res.skip(f"{label}, {sessions} sessions", f"not available: {exc.name}")
                    continue
                except Exception as exc:  # reported in the table; the other rows still run
                    res.skip(f"{label}, {sessions} sessions", f"failed: {_cause(exc)}")
                    continue
                rates[label, sessions] = got
                res.add(f"{label}, {sessions} sessions", got, "turns/s")
    res.params.update(workloads=[list(w) for w in levels])
    _compare(ctx, res, rates, [s for s, _ in levels], rounds)


def _cause(exc: BaseException) -> str:
    """The first error inside task groups, as ``Type: message``."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


def _compare(
    ctx: BenchContext,
    res: BenchResult,
    rates: dict[tuple[str, int], float],
    levels: list[int],
    rounds: dict[str, list[float]],
) -> None:
    labels = dict.fromkeys(label for label, _ in rates)
    for label in labels:
        row: dict[str, Any] = {"implementation": label}
        for n in levels:
            row[f"{n} sessions turns/s"] = rates.get((label, n))
        res.comparison.append(row)
    full = not ctx.quick
    pairs = (
        (SQLITE, LG_EXIT, 20.0, "SQLite FULL / LangGraph exit"),
        (SQLITE, MEMORY, 0.6, "SQLite FULL / memory store"),
        (FLOOR, MEMORY, None, "fsync floor / memory store"),
        (SQLITE, FLOOR, None, "SQLite FULL / fsync floor"),
    )
    for a, b, goal, what in pairs:
        name = f"100 sessions: {what} (median of rounds)"
        if a in rounds and b in rounds:
            ratios = round_ratios(rounds, a, b)
            spread = f"{ratios[0]:.3g}–{ratios[-1]:.3g} over {len(ratios)} rounds"
            target = at_least(goal) if full and goal is not None else None
            res.add(name, statistics.median(ratios), "×", target, note=spread)
        else:
            res.skip(name, "not measured")
    res.notes.append(
        "each session sends its turns one after another, all sessions at once; "
        "SQLite rows run WAL with synchronous=FULL (LangGraph's connection too); "
        "LangGraph rows send a quarter of the turns (at least one per session); "
        "the fsync floor is the memory store whose turns each wait for a group fsync and "
        "nothing else (bench/fsync_floor.py): the ceiling of any durable store in one loop"
    )


def run(ctx: BenchContext) -> BenchResult:
    """Measure every implementation at every level of concurrency."""
    res = BenchResult(NAME, TITLE)
    t0 = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="bench-throughput-") as d,
        bench_env(Path(d)),
        pg_schema(PG_URL) as pg,
    ):
        anyio.run(_main, ctx, res, pg)
    res.seconds = time.perf_counter() - t0
    return res
