"""Sessions on Ray: the cost of the hop, throughput per host count, many slow sessions.

Targets (issue 16):

* a turn through :class:`~sessions.cluster.RaySessions` vs the same turn in-process
  (one session, PostgreSQL store): p50 added ≤ 2 ms;
* CPU-bound turns (echo model, PostgreSQL store), many sessions at once, with 1, 2 and
  4 hosts: 2 hosts ≥ 1.6× one host on a 2-core machine.  Each count also reports the CPU
  a turn cost, per group of processes (the driver, the hosts, PostgreSQL, Ray's daemons,
  the rest of the machine), and the ratio those costs allow at most: one host is one
  process (a core at most) and every process of the run shares the machine's cores;
* 10,000 sessions, one turn each, with a 50 ms model over 4 hosts: wall time, turns/s,
  no failed turn (``--quick``: 100 sessions over 2 hosts, and 1 and 2 hosts above).

Ray runs locally on this machine (one node, every process on 127.0.0.1); the hosts are
Ray actors, each its own process with its own SessionManager and connection pool.
Needs the ``ray`` extra and PostgreSQL (``$TURNGRAPH_TEST_PG``), else it says why.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from bench.harness import BenchContext, BenchResult, Stats, at_least, at_most
from bench.proc_cpu import Share, ceiling, snapshot
from bench.store import PG_URL, pg_reachable, pg_schema

NAME = "ray_hop"
TITLE = "Sessions on Ray: hop cost, hosts, 10,000 slow sessions"

SECRET = b"bench-ray-secret-0123456789abcdef"
LOOPBACK = "127.0.0.1"


def _ray() -> Any:
    # Keep every Ray address on the loopback (see tests/cluster/conftest.py).
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    return importlib.import_module("ray")


async def _latencies(send: Callable[[str], Awaitable[Any]], n: int) -> Stats:
    samples: list[float] = []
    for i in range(n):
        t0 = time.perf_counter_ns()
        await send(f"turn {i}")
        samples.append(time.perf_counter_ns() - t0)
    return Stats.of(samples[n // 10 :])  # the first turns load the session: warm-up


async def _side_by_side(
    local: Callable[[str], Awaitable[Any]], remote: Callable[[str], Awaitable[Any]], n: int
) -> tuple[Stats, Stats]:
    """``n`` turns each way, alternating (local, remote, local...), so that the load the
    shared machine carries at any moment weighs on both alike; the first tenth of each
    (the session loading) is left out."""
    samples: tuple[list[float], list[float]] = ([], [])
    for i in range(n):
        for side, send in enumerate((local, remote)):
            t0 = time.perf_counter_ns()
            await send(f"turn {i}")
            samples[side].append(time.perf_counter_ns() - t0)
    return Stats.of(samples[0][n // 10 :]), Stats.of(samples[1][n // 10 :])


async def hop(ctx: BenchContext, res: BenchResult, url: str) -> None:
    """One session in-process and one through one Ray host, their turns alternating;
    then the same with streamed turns, and a bare call to the host."""
    from sessions import SessionManager
    from sessions.cluster import RaySessions

    n = ctx.n(400, 30)
    async with (
        SessionManager(url, store_secret=SECRET) as manager,
        RaySessions(url, 1, num_cpus=0, manager={"store_secret": SECRET}) as rs,
    ):
        session = await manager.get_or_create("hop-local")
        local, remote = await _side_by_side(
            session.send, lambda text: rs.send("hop-remote", text), n
        )
        local_stream, remote_stream = await _side_by_side(
            lambda text: _drain(session.stream(text)),
            lambda text: _drain(rs.stream("hop-str", text)),
            n,
        )
        bare = await _latencies(lambda _: rs.info(), n)
        pause = local.p50 / 1e9
        slept, idle = await _side_by_side(
            lambda _: anyio.sleep(pause), lambda _: _idle_actor().wait.remote(pause), n
        )
    res.add_latency("in-process turn", local, "ms", mean_too=False)
    res.add_latency("through Ray turn", remote, "ms", mean_too=False)
    res.add("Ray call alone p50", bare.p50 / 1e6, "ms", note="a host's info(): the hop, no turn")
    res.add(
        "Ray hop added p50",
        (remote.p50 - local.p50) / 1e6,
        "ms",
        at_most(2.0),
        note="turns alternating in-process and through Ray",
    )
    res.add(
        "Ray floor: empty call as long, added p50",
        (idle.p50 - slept.p50) / 1e6,
        "ms",
        note="an actor method that only waits as long as the in-process turn takes, "
        "against the same wait here: what any Ray call of that length adds",
    )
    res.add_latency("in-process stream", local_stream, "ms", mean_too=False)
    res.add_latency("through Ray stream", remote_stream, "ms", mean_too=False)
    res.add(
        "Ray stream hop added p50",
        (remote_stream.p50 - local_stream.p50) / 1e6,
        "ms",
        note="a whole turn's events drained (one Ray object per burst)",
    )


_IDLE: list[Any] = []


def _idle_actor() -> Any:
    """An actor whose method only waits (made once, at the hosts' priority)."""
    if not _IDLE:

        class Idle:
            async def wait(self, seconds: float) -> None:
                await asyncio.sleep(seconds)

        env = {"env_vars": {"RAY_worker_niceness": "0"}}
        _IDLE.append(_ray().remote(Idle).options(num_cpus=0, runtime_env=env).remote())
    return _IDLE[0]


async def _drain(events: Any) -> None:
    """Consume a turn's stream to its end (its TurnResult)."""
    async with events:
        async for _ in events:
            pass


async def _run_turns(
    rs: Any, sessions: int, turns: int, concurrency: int
) -> tuple[float, Counter[str]]:
    """Send ``turns`` turns to each of ``sessions`` sessions, ``concurrency`` sessions
    at a time; (wall seconds, failed turns by error type)."""
    failed: Counter[str] = Counter()
    limiter = anyio.CapacityLimiter(concurrency)

    async def one(i: int) -> None:
        async with limiter:
            for k in range(turns):
                try:
                    result = await rs.send(f"s{i}", f"turn {k}")
                except Exception as exc:  # counted and named in the table, never fatal
                    failed[f"{type(exc).__name__} ({str(exc)[-60:]})"] += 1
                    continue
                if not result.ok:
                    failed[f"failed turn: {result.error}"] += 1

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(sessions):
            tg.start_soon(one, i)
    return time.perf_counter() - t0, failed


def _failures(failed: Counter[str]) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in failed.most_common(3))


async def throughput(ctx: BenchContext, res: BenchResult, url: str) -> None:
    """CPU-bound turns on 1, 2 and 4 hosts (each count in a schema of its own), with
    the CPU each turn cost per group of processes (see :mod:`bench.proc_cpu`)."""
    from sessions.cluster import RaySessions

    sessions, turns = ctx.n(200, 20), ctx.n(10, 3)
    rates: dict[int, float] = {}
    shares: dict[int, Share] = {}
    cores = os.cpu_count() or 1
    for hosts in (1, 2) if ctx.quick else (1, 2, 4):
        with pg_schema(PG_URL) as schema:
            async with RaySessions(
                schema, hosts, num_cpus=0, manager={"store_secret": SECRET}
            ) as rs:
                await _run_turns(rs, hosts * 4, 2, 8)  # warm each host's pool
                pids = [info["pid"] for info in await rs.info()]
                before = snapshot(os.getpid(), pids)
                wall, failed = await _run_turns(rs, sessions, turns, 64)
                spent = snapshot(os.getpid(), pids).since(before)
        done = sessions * turns
        rates[hosts] = done / wall
        note = f"{sessions} sessions × {turns} turns"
        if failed:
            note += f"; failed: {_failures(failed)}"
        res.add(f"{hosts} host{'s' * (hosts > 1)} turns/s", rates[hosts], "turns/s", note=note)
        ours = {k: v for k, v in spent.items() if k != "others"}
        shares[hosts] = Share(spent["hosts"] * 1000 / done, sum(ours.values()) * 1000 / done)
        res.add(
            f"{hosts} host{'s' * (hosts > 1)} CPU per turn",
            shares[hosts].total_ms,
            "ms",
            note=", ".join(f"{k} {v * 1000 / done:.2f}" for k, v in spent.items())
            + f" ms; the machine was {sum(spent.values()) / (wall * cores):.0%} busy",
        )
    goal = None if ctx.quick else at_least(1.6)
    res.add("2 hosts vs 1", rates[2] / rates[1], "×", goal, note=f"{cores} cores")
    if 4 in rates:
        res.add("4 hosts vs 1", rates[4] / rates[1], "×")
    share = shares[1]
    res.add(
        "2 hosts vs 1: CPU ceiling",
        ceiling(share, 2, cores) / ceiling(share, 1, cores),
        "×",
        note=f"the most the 1-host CPU costs allow on {cores} cores: one host uses "
        f"{share.hosts_ms:.2f} of the {share.total_ms:.2f} CPU ms a turn costs",
    )


async def many(ctx: BenchContext, res: BenchResult, url: str) -> None:
    """10,000 sessions, one turn each, a 50 ms model, 4 hosts."""
    from handlers.adapters.llm import EchoModel
    from sessions.cluster import RaySessions

    sessions, hosts = ctx.n(10_000, 100), ctx.n(4, 2)
    manager = {"store_secret": SECRET, "llm": EchoModel(delay=0.05)}
    async with RaySessions(url, hosts, num_cpus=0, manager=manager) as rs:
        wall, failed = await _run_turns(rs, sessions, 1, 2_000)
    res.add(f"{sessions:,} sessions × 50 ms model wall", wall, "s", note=f"{hosts} hosts")
    res.add(f"{sessions:,} sessions turns/s", sessions / wall, "turns/s")
    res.add("failed turns", sum(failed.values()), "turns", at_most(0), note=_failures(failed))


def run(ctx: BenchContext) -> BenchResult:
    """Measure the hop, the host scaling and many slow sessions on a local Ray."""
    res = BenchResult(NAME, TITLE)
    try:
        ray = _ray()
    except ImportError:
        res.unavailable = "Ray is not installed: pip install 'turngraph[ray]'"
        return res
    why = pg_reachable(PG_URL)
    if why is not None:
        res.unavailable = why
        return res
    ray.init(
        # Always a new local instance: without it Ray attaches to any cluster already
        # running on the machine (another suite's, a `ray start`) and refuses num_cpus.
        address="local",
        num_cpus=8,
        include_dashboard=False,
        _node_ip_address=LOOPBACK,
        log_to_driver=False,
        configure_logging=False,
    )
    res.params.update(ray=ray.__version__, cores=os.cpu_count())
    try:
        for part in (hop, throughput, many):
            with pg_schema(PG_URL) as url:
                anyio.run(part, ctx, res, url)
    finally:
        _IDLE.clear()
        ray.shutdown()
    res.notes.append(
        "one local Ray node; hosts are actors (a process each); the echo model stands "
        "in for an LLM; 'num_cpus=8' is Ray's logical count, the machine has "
        f"{os.cpu_count()} cores"
    )
    return res
