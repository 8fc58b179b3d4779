"""Many concurrent streaming sessions against one loopback model (issue 10).

A loopback server (:mod:`bench.loopback_llm`, in a process of its own) waits 50 ms before
the first token of every reply, then streams its tokens.  Measured side by side in one
run, each with every stream started at once:

* **bare SDK**: the OpenAI SDK's async client streaming ``N`` completions, nothing else;
* **turngraph**: ``N`` sessions of a :class:`~sessions.manager.SessionManager` (memory
  store, then SQLite), each sending one turn through the shipped turn graph with an
  observer that receives every ``TextDelta`` (what a chat front end does).

Reported: failed turns (goal 0), wall time against the ideal (the model's own time: time to
first token plus the gaps between tokens; goal ≤ 1.5×), turngraph's wall against the bare
SDK's, the CPU time each stream costs the client process, and the server's peak of
streams in flight (which shows the load really was concurrent).
"""

from __future__ import annotations

import resource
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from bench.harness import BenchContext, BenchResult, Stats, at_most, bench_env
from bench.loopback_llm import Load, serving

NAME = "concurrent_streams"
TITLE = "concurrent streaming sessions vs the bare SDK (loopback model, 50 ms to first token)"

_MESSAGES = [{"role": "user", "content": "hello"}]


@dataclass(frozen=True, slots=True)
class Wave:
    """One wave of concurrent streams: wall time, failures, per-stream latencies, CPU."""

    wall: float
    failed: int
    latencies: Stats
    cpu: float
    first_error: str = ""


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _wave(n: int, one: Callable[[int], Awaitable[None]]) -> Wave:
    """Start ``n`` calls of ``one`` at once; time them all."""
    latencies: list[float] = []
    errors: list[str] = []

    async def timed(i: int) -> None:
        t0 = time.perf_counter_ns()
        try:
            await one(i)
        except Exception as exc:  # a failed stream is counted, not fatal to the wave
            errors.append(f"{type(exc).__name__}: {exc}")
            return
        latencies.append(time.perf_counter_ns() - t0)

    cpu0 = _cpu()
    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(timed, i)
    wall = time.perf_counter() - t0
    stats = Stats.of(latencies or [0.0])
    return Wave(wall, len(errors), stats, _cpu() - cpu0, errors[0] if errors else "")


async def _bare(url: str, n: int) -> Wave:
    from openai import AsyncOpenAI

    client: Any = AsyncOpenAI(api_key="no-key", base_url=url, max_retries=0, timeout=120.0)

    async def one(_: int) -> None:
        stream = await client.chat.completions.create(
            model="m", messages=_MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        text = [c.choices[0].delta.content async for c in stream if c.choices]
        if not text:
            raise RuntimeError("empty stream")

    try:
        return await _wave(n, one)
    finally:
        await client.close()


async def _sessions(url: str, n: int, store: str, deltas: list[int]) -> Wave:
    from engine.events import Event, TextDelta
    from handlers import build_registry
    from handlers.adapters import from_spec
    from sessions import Limits, SessionManager

    def observer(event: Event) -> None:
        if type(event) is TextDelta:
            deltas[0] += 1

    llm: Any = from_spec("openai:m", base_url=url, timeout=120.0)
    registry = build_registry(llm=llm)
    try:
        # The observer is what a chat front end attaches: with it, llm_call streams.
        async with SessionManager(
            store,
            registry=registry,
            lease_ttl=600.0,
            limits=Limits(max_active_sessions=n),
            observers=(observer,),
        ) as manager:
            sessions = [await manager.get_or_create(f"s{i}") for i in range(n)]

            async def one(i: int) -> None:
                result = await sessions[i].send("hello")
                if not result.ok:
                    raise RuntimeError(str(result.error))

            return await _wave(n, one)
    finally:
        await llm.aclose()


def _peak(url: str) -> int:
    import json
    import urllib.request

    with urllib.request.urlopen(url.removesuffix("/v1") + "/stats", timeout=10) as r:
        return int(json.load(r)["peak_in_flight"])


def _report(res: BenchResult, label: str, wave: Wave, ideal: float, n: int) -> None:
    res.add(f"{label}: failed streams", wave.failed, "", at_most(0), note=wave.first_error[:80])
    res.add(f"{label}: wall", wave.wall * 1e3, "ms")
    res.add(f"{label}: wall / ideal", wave.wall / ideal, "×", at_most(1.5))
    res.add(f"{label}: stream latency p50", wave.latencies.p50 / 1e6, "ms")
    res.add(f"{label}: client CPU per stream", wave.cpu / n * 1e3, "ms")


def run(ctx: BenchContext) -> BenchResult:
    """Measure ``N`` concurrent streams, bare SDK and through sessions, in one run."""
    res = BenchResult(NAME, TITLE)
    t0 = time.perf_counter()
    try:
        import openai  # noqa: F401
    except ImportError:
        res.unavailable = "the openai extra is not installed: pip install 'turngraph[openai]'"
        return res
    n = ctx.n(1000, 50)
    load = Load("openai", ttft=0.05, tokens=20, gap=0.0)
    ideal = load.ttft + load.gap * (load.tokens - 1)
    res.params.update(streams=n, ttft_ms=load.ttft * 1e3, tokens=load.tokens, gap_ms=load.gap * 1e3)
    deltas = [0]
    with serving(load) as url, tempfile.TemporaryDirectory(prefix="bench-streams-") as d:
        with bench_env(Path(d)):
            anyio.run(_bare, url, min(n, 20))  # warm-up: imports, first connections
            bare = anyio.run(_bare, url, n)
            mem = anyio.run(_sessions, url, n, "memory:", deltas)
            sqlite = anyio.run(_sessions, url, n, f"sqlite:///{d}/streams.db", deltas)
        peak = _peak(url)
    _report(res, "bare SDK", bare, ideal, n)
    _report(res, "sessions, memory store", mem, ideal, n)
    _report(res, "sessions, SQLite store", sqlite, ideal, n)
    res.add("sessions (memory) / bare SDK, wall", mem.wall / bare.wall, "×")
    res.add("server peak streams in flight", peak, "")
    res.add("text deltas observed per turn", deltas[0] / (2 * n), "")
    res.notes.append(
        "ideal = the model's own time (time to first token + gaps between tokens); the client "
        "side's CPU per stream, times N, over the cores it can use, bounds the wall from below"
    )
    res.seconds = time.perf_counter() - t0
    return res
