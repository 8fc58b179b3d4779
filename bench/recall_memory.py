"""Recall memory on SQLite (issue 10): recall over 100,000 items, and what remembering
adds to a turn's commit.

Targets:

* recall p50 ≤ 1 ms with 100,000 remembered items in one session (FTS5, BM25 over the
  newest matches; the store's own ``recall_memory``, as the ``recall`` node calls it);
* a turn commit carrying one remembered item (what ``update_memory`` adds) ≤ 1.2× one
  without, p50, the two measured interleaved in one run on one file.

Also shown, without a target: a recall right after a remembering commit, which first
indexes that queued item in a transaction of its own, and the time to remember and
index the whole corpus.  The store runs as configured by default (WAL,
``synchronous=FULL``: every commit is fsynced).
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from bench.harness import BenchContext, BenchResult, Stats, at_most, bench_env, settle
from bench.store import make_commit, new_session

if TYPE_CHECKING:
    from engine.messages import MemoryItem
    from sessions.store.sqlite import SQLiteStore

NAME = "recall_memory"
TITLE = "recall memory on SQLite FTS5 (issue 10)"

_VOCABULARY = 5_000
_BATCH = 5_000


def _words(rng: random.Random, n: int) -> list[str]:
    """``n`` words of a made-up vocabulary, Zipf-like: a few common, most rare."""
    return [f"w{int(_VOCABULARY ** rng.random())}" for _ in range(n)]


def corpus(n: int, seed: int = 7) -> list[MemoryItem]:
    """``n`` items of 8-20 words, the way exchanges are remembered."""
    from engine.messages import MemoryItem

    rng = random.Random(seed)
    return [
        MemoryItem(" ".join(_words(rng, rng.randint(8, 20))), meta={"turn": i, "reply": "ok"})
        for i in range(n)
    ]


def queries(n: int, seed: int = 11) -> list[str]:
    """``n`` queries of 2-6 words from the same vocabulary."""
    rng = random.Random(seed)
    return [" ".join(_words(rng, rng.randint(2, 6))) for _ in range(n)]


async def _fill(store: SQLiteStore, sid: str, items: Sequence[MemoryItem]) -> None:
    """Remember ``items`` in batches, each indexed by a recall (as a session would)."""
    for i in range(0, len(items), _BATCH):
        await store.remember_memory(sid, items[i : i + _BATCH])
        await store.recall_memory("w1", session_id=sid, limit=1)


async def _recalls(store: SQLiteStore, sid: str, texts: Sequence[str]) -> list[int]:
    """Each query's recall time, nanoseconds (the queue is empty)."""
    settle()
    clock = time.perf_counter_ns
    out: list[int] = []
    for text in texts:
        t0 = clock()
        await store.recall_memory(text, session_id=sid, limit=5)
        out.append(clock() - t0)
    return out


async def _commits(store: SQLiteStore, n: int) -> tuple[list[int], list[int], list[int]]:
    """``n`` turns each of two sessions, interleaved: one remembering an item per turn,
    one not; then, after each remembering turn, the recall that indexes its item."""
    from engine.messages import MemoryItem
    from sessions.store.base import TurnCommit

    plain = await new_session(store, "plain")
    remembering = await new_session(store, "remembering")
    texts = queries(n, seed=5)
    clock = time.perf_counter_ns
    without: list[int] = []
    with_memory: list[int] = []
    catch_up: list[int] = []
    settle()
    for t in range(n):
        base = make_commit(t + 1, 2 * t)
        item = MemoryItem(base.messages[0].content, meta={"turn": t, "reply": texts[t]})
        mem = TurnCommit(base.record, base.messages, memory=(item,))
        # Which goes first alternates: neither always follows the other's fsync.
        for first in (t % 2 == 0, t % 2 == 1):
            t0 = clock()
            if first:
                await store.append_turn("plain", base, token=plain)
                without.append(clock() - t0)
            else:
                await store.append_turn("remembering", mem, token=remembering)
                with_memory.append(clock() - t0)
        t0 = clock()
        await store.recall_memory(texts[t], session_id="remembering", limit=5)
        catch_up.append(clock() - t0)
    return without, with_memory, catch_up


async def _measure(ctx: BenchContext, res: BenchResult, path: Path) -> None:
    from sessions.store import open_store
    from sessions.store.sqlite import SQLiteStore

    size = ctx.n(100_000, 2_000)
    res.params.update(items=size, vocabulary=_VOCABULARY)
    async with open_store(f"sqlite:///{path}") as opened:
        assert isinstance(opened, SQLiteStore)
        await new_session(opened, "memory")
        items = corpus(size)
        t0 = time.perf_counter()
        await _fill(opened, "memory", items)
        res.add(f"remember and index {size:,} items", time.perf_counter() - t0, "s")
    # Measured in a new store object, as a later process would (the fill's log was
    # checkpointed when it closed).
    async with open_store(f"sqlite:///{path}") as store:
        assert isinstance(store, SQLiteStore)
        texts = queries(ctx.n(1_000, 30))
        await _recalls(store, "memory", texts[:20])  # warm the page cache and statements
        recall = Stats.of(await _recalls(store, "memory", texts))
        goal = None if ctx.quick else 1.0
        res.add_latency(f"recall, {size:,} items", recall, "ms", p50=goal, p99=None)
        without, with_memory, catch_up = await _commits(store, ctx.n(1_000, 30))
    plain, mem, idx = Stats.of(without), Stats.of(with_memory), Stats.of(catch_up)
    res.add_latency("turn commit, no memory", plain, "µs")
    res.add_latency("turn commit + 1 remembered item", mem, "µs")
    res.add("commit ratio, with / without memory (p50)", mem.p50 / plain.p50, "×", at_most(1.2))
    res.add_latency("recall after a remembering commit (indexes 1 item)", idx, "µs")
    res.comparison = [
        _row("recall, 100k items" if not ctx.quick else f"recall, {size:,} items", recall),
        _row("turn commit, no memory", plain),
        _row("turn commit + 1 remembered item", mem),
        _row("recall after a remembering commit", idx),
    ]


def _row(case: str, stats: Stats) -> dict[str, Any]:
    return {
        "case": case,
        "p50 µs": stats.p50 / 1e3,
        "p99 µs": stats.p99 / 1e3,
        "mean µs": stats.mean / 1e3,
    }


def run(ctx: BenchContext) -> BenchResult:
    """Fill a SQLite store's memory, time recalls, then commits with and without memory."""
    res = BenchResult(NAME, TITLE)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-recall-") as d, bench_env(Path(d)):
        anyio.run(_measure, ctx, res, Path(d) / "recall.db")
    res.notes.append(
        "BM25 ranks the newest 64 items matching any query word; FULL sync (fsync per commit)."
    )
    res.seconds = time.perf_counter() - t0
    return res
