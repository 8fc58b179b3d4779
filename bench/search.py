"""Searching and listing the sessions (issue 14; schema 6): one request each.

``N`` sessions (20,000) are created in a SQLite store in a temporary folder; none
matches the query, and one of them (near the end) belongs to a rare agent.  Side by
side in one run:

* search, before: the old search, the whole store read in 500-session pages and filtered
  in Python until a page of matches or the end (``N`` rows per request); after:
  :func:`engine.server.routes.sessions.search`, one bounded window of ``SCAN`` sessions
  with the filter in SQL, answering where to continue;
* a deep page of the unfiltered listing (page 1,000 of 20 sessions: the last ones),
  before: ``LIMIT … OFFSET`` (the store walks every session before the page); after:
  the keyset page from the previous page's last id (one primary-key range);
* the rare agent's sessions, before: the schema 5 listing, a window of ``SCAN`` ids per
  request (``N / SCAN`` requests to reach the end; replayed as today's pages of ``SCAN``
  ids, which read the same rows); after: one request, the range of the
  ``(agent_id, id)`` index.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import anyio

from bench.harness import BenchContext, BenchResult, Stats, bench_env

NAME = "search"
TITLE = "Sessions search and listing: one request each, before vs after"

_QUERY = "zz-nothing"


_PAGE = 20
"""Sessions per listing page in the deep-page rows (page 1,000 is the 20,000th session)."""


async def _measure(url: str, n: int, reps: int) -> tuple[Stats, Stats, int, int]:
    from engine.server.routes.sessions import SCAN, search
    from sessions.store import open_store
    from sessions.store.base import SessionMatch, SessionMeta

    async with open_store(url) as store:
        for i in range(n):
            agent = "rare" if i == n - 2 else "plain"
            await store.create(SessionMeta(f"s{i:06d}", agent_id=agent))
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


async def _listing(url: str, n: int, reps: int) -> dict[str, Stats]:
    """The deep page and the rare agent, each the old way and the new (ms)."""
    from engine.server.routes.sessions import SCAN
    from sessions.store import open_store
    from sessions.store.base import SessionMatch

    last = (n - 1) // _PAGE * _PAGE  # the deep page's first session
    times: dict[str, list[float]] = {k: [] for k in ("offset", "keyset", "window", "index")}
    async with open_store(url) as store:
        cursor = f"s{last - 1:06d}"
        for _ in range(reps):
            t0 = time.perf_counter_ns()
            await store.list_sessions(last, _PAGE)
            times["offset"].append(time.perf_counter_ns() - t0)
            t0 = time.perf_counter_ns()
            page = await store.list_sessions(0, _PAGE, match=SessionMatch(after=cursor))
            times["keyset"].append(time.perf_counter_ns() - t0)
            assert page[0].id == f"s{last:06d}"
            t0 = time.perf_counter_ns()
            for start in range(0, n, SCAN):  # schema 5: a window of SCAN ids per request
                await store.list_sessions(0, SCAN, match=SessionMatch(after=f"s{start - 1:06d}"))
            times["window"].append(time.perf_counter_ns() - t0)
            t0 = time.perf_counter_ns()
            found = await store.list_sessions(0, 100, match=SessionMatch(agent_id="rare"))
            times["index"].append(time.perf_counter_ns() - t0)
            assert [m.id for m in found] == [f"s{n - 2:06d}"]
    return {k: Stats.of(v) for k, v in times.items()}


def run(ctx: BenchContext) -> BenchResult:
    """Time one search request both ways on the same store (p50 and p99, ms)."""
    res = BenchResult(NAME, TITLE)
    n, reps = ctx.n(20_000, 1_500), ctx.n(20, 3)
    res.params = {"sessions": n, "reps": reps, "store": "sqlite"}
    with tempfile.TemporaryDirectory() as tmp, bench_env(Path(tmp)):
        url = f"sqlite:///{Path(tmp) / 'search.db'}"
        before, after, read_before, read_after = anyio.run(_measure, url, n, reps)
        listing = anyio.run(_listing, url, n, reps)
    res.add_latency("before: whole store read per request", before, "ms", mean_too=False)
    res.add_latency("after: one bounded window per request", after, "ms", mean_too=False)
    res.add("rows read per request, before", read_before, "rows")
    res.add("rows read per request, after (at most)", read_after, "rows")
    res.add("speed-up p50", before.p50 / after.p50, "x")
    page = (n - 1) // _PAGE + 1
    res.add_latency(f"before: page {page:,} by OFFSET", listing["offset"], "ms", mean_too=False)
    res.add_latency(f"after: page {page:,} by keyset", listing["keyset"], "ms", mean_too=False)
    res.add("deep page speed-up p50", listing["offset"].p50 / listing["keyset"].p50, "x")
    res.add_latency(
        "before: a rare agent, windows of SCAN ids to the end",
        listing["window"],
        "ms",
        mean_too=False,
    )
    res.add_latency("after: a rare agent, one index range", listing["index"], "ms", mean_too=False)
    return res
