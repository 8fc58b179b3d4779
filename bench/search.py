"""Searching the sessions list (issue 14): one ``?q=`` request with a rare match.

``N`` sessions (20,000) are created in a SQLite store in a temporary folder; none
matches the query.  Side by side in one run:

* before: the old search, the whole store read in 500-session pages and filtered in
  Python until a page of matches or the end (``N`` rows per request);
* after: :func:`engine.server.routes.sessions.search`, one bounded window of ``SCAN``
  sessions with the filter in SQL, answering where to continue.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import anyio

from bench.harness import BenchContext, BenchResult, Stats, bench_env

NAME = "search"
TITLE = "Sessions search: one request, rare match, whole-store scan vs bounded window"

_QUERY = "zz-nothing"


async def _measure(url: str, n: int, reps: int) -> tuple[Stats, Stats, int, int]:
    from engine.server.routes.sessions import SCAN, search
    from sessions.store import open_store
    from sessions.store.base import SessionMatch, SessionMeta

    async with open_store(url) as store:
        for i in range(n):
            await store.create(SessionMeta(f"s{i:06d}", agent_id="plain"))
        before: list[float] = []
        after: list[float] = []
        for _ in range(reps):
            t0 = time.perf_counter_ns()
            read, start = 0, 0
            while True:  # the old loop: every row read, filtered in Python
                chunk = await store.list_sessions(start, 500)
                read += len(chunk)
                _ = [m for m in chunk if _QUERY in m.id.lower() or _QUERY in m.agent_id]
                if len(chunk) < 500:
                    break
                start += 500
            before.append(time.perf_counter_ns() - t0)
            t0 = time.perf_counter_ns()
            await search(store, SessionMatch(text=_QUERY), 0, 100)
            after.append(time.perf_counter_ns() - t0)
        return Stats.of(before), Stats.of(after), read, min(SCAN, n)


def run(ctx: BenchContext) -> BenchResult:
    """Time one search request both ways on the same store (p50 and p99, ms)."""
    res = BenchResult(NAME, TITLE)
    n, reps = ctx.n(20_000, 1_500), ctx.n(20, 3)
    res.params = {"sessions": n, "reps": reps, "store": "sqlite"}
    with tempfile.TemporaryDirectory() as tmp, bench_env(Path(tmp)):
        url = f"sqlite:///{Path(tmp) / 'search.db'}"
        before, after, read_before, read_after = anyio.run(_measure, url, n, reps)
    res.add_latency("before: whole store read per request", before, "ms", mean_too=False)
    res.add_latency("after: one bounded window per request", after, "ms", mean_too=False)
    res.add("rows read per request, before", read_before, "rows")
    res.add("rows read per request, after (at most)", read_after, "rows")
    res.add("speed-up p50", before.p50 / after.p50, "x")
    return res
