"""The web trace viewer (issue 14): how long its pages take server-side on a long session.

One session of ``N`` turns (10,000; the offline ``echo`` model, shipped ``turn.dot``) is
written to a SQLite store in a temporary folder, then each page is requested from the
app in this process (Starlette's test client: no socket, so the figure is the server's
own work, store reads and the Graphviz ``dot`` run included):

* the turn page of the middle and of the last turn (goal ≤ 100 ms p50);
* the session page (the latest 100 messages grouped by turn), and ``/`` with a search;
* for scale, Graphviz alone drawing the same highlighted graph (``dot -Tsvg``);
* the live view's cost to a streamed turn: the items of one real streamed turn (offline
  ``echo`` model) handed to :meth:`engine.server.live.LiveHub.publish` as the server
  does, with no watcher and with one, per turn, and in the same run the same turn
  streamed in-process (``session.stream``, SQLite) for scale.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anyio

from bench.harness import BenchContext, BenchResult, Stats, bench_env

NAME = "viewer"
TITLE = "Web trace viewer: page times server-side on a 10,000-turn session"


async def _last_trace(url: str, turns: int) -> tuple[Mapping[str, Any], ...]:
    from sessions.store import open_store

    async with open_store(url, create=False) as store:
        return (await store.turns("long", turns - 1, 1))[0].trace


async def _streamed(url: str, reps: int) -> tuple[list[object], Stats]:
    """One streamed turn's items, and the in-process streamed turn's times."""
    from sessions import SessionManager

    samples: list[float] = []
    items: list[object] = []
    async with SessionManager(url, llm="echo") as manager:
        session = await manager.get_or_create("live")
        for i in range(reps):
            t0 = time.perf_counter_ns()
            async with session.stream(f"message {i}") as events:
                items = [item async for item in events]
            samples.append(time.perf_counter_ns() - t0)
    return items, Stats.of(samples)


def _publish_times(items: list[object], reps: int, watched: bool) -> Stats:
    """Per turn: every item of the turn handed to the hub, as the server's pump does."""
    from engine.server.live import LiveHub

    hub = LiveHub()
    samples: list[float] = []
    with hub.watch("live") if watched else contextlib.nullcontext() as receive:
        for _ in range(reps):
            t0 = time.perf_counter_ns()
            for item in items:
                hub.publish("live", item)
            samples.append(time.perf_counter_ns() - t0)
            while receive is not None:  # what a watcher would read, drained untimed
                try:
                    receive.receive_nowait()
                except anyio.WouldBlock:
                    break
    return Stats.of(samples)


def _live(res: BenchResult, url: str, reps: int) -> None:
    items, turn = anyio.run(_streamed, url, reps)
    res.add_latency(
        "live: publishing a streamed turn's items, no watcher",
        _publish_times(items, reps, False),
        mean_too=False,
    )
    res.add_latency(
        "live: publishing a streamed turn's items, one watcher",
        _publish_times(items, reps, True),
        mean_too=False,
    )
    res.add_latency("for scale: the same turn streamed in-process", turn, mean_too=False)
    res.notes.append(f"a streamed echo turn has {len(items)} items")


async def _seed(url: str, turns: int) -> None:
    from sessions import SessionManager

    async with SessionManager(url, llm="echo") as manager:
        session = await manager.get_or_create("long")
        for i in range(turns):
            await session.send(f"message {i}")


def _timed(get: Callable[[str], Any], path: str, reps: int) -> Stats:
    samples: list[float] = []
    for _ in range(reps):
        t0 = time.perf_counter_ns()
        response = get(path)
        samples.append(time.perf_counter_ns() - t0)
        if response.status_code != 200:
            raise RuntimeError(f"GET {path}: {response.status_code}")
    return Stats.of(samples)


def run(ctx: BenchContext) -> BenchResult:
    """Seed a long session, then time each viewer page (p50 and p99, milliseconds)."""
    res = BenchResult(NAME, TITLE)
    if shutil.which("dot") is None:
        res.unavailable = "Graphviz's `dot` is not installed"
        return res
    try:
        from starlette.testclient import TestClient

        from engine.cli.trace_dot import traced_dot
        from engine.server import create_app
    except ImportError as exc:
        res.unavailable = f"the serve extra is not installed ({exc.name})"
        return res
    turns, reps = ctx.n(10_000, 20), ctx.n(30, 3)
    res.params = {"turns": turns, "reps": reps, "store": "sqlite"}
    with tempfile.TemporaryDirectory() as tmp, bench_env(Path(tmp)):
        url = f"sqlite:///{Path(tmp) / 'viewer.db'}"
        t0 = time.perf_counter()
        anyio.run(_seed, url, turns)
        res.notes.append(f"seeded {turns} turns in {time.perf_counter() - t0:.1f} s")
        with TestClient(create_app(url, llm="echo")) as client:
            for label, path, goal in (
                ("turn page, middle turn", f"/ui/sessions/long/turns/{turns // 2}", 100.0),
                ("turn page, last turn", f"/ui/sessions/long/turns/{turns}", 100.0),
                ("session page (latest 100 messages)", "/ui/sessions/long", None),
                ("sessions list, searched", "/?q=lon", None),
            ):
                res.add_latency(
                    label, _timed(client.get, path, reps), "ms", p50=goal, mean_too=False
                )
            graph = client.app.state.turngraph.manager.turn_graph  # type: ignore[attr-defined]
            dot_text = traced_dot(graph, anyio.run(_last_trace, url, turns))
        exe = shutil.which("dot") or "dot"
        samples: list[float] = []
        for _ in range(reps):
            t0 = time.perf_counter_ns()
            subprocess.run([exe, "-Tsvg"], input=dot_text.encode(), capture_output=True, check=True)
            samples.append(time.perf_counter_ns() - t0)
        res.add_latency(
            "for scale: Graphviz dot -Tsvg alone", Stats.of(samples), "ms", mean_too=False
        )
        _live(res, f"sqlite:///{Path(tmp) / 'live.db'}", ctx.n(2000, 20))
    return res
