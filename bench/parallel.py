"""Parallel branches: what they buy, and what they cost the graphs that do not use them.

* Three branches that each wait 50 ms, run by a fan-out, against the same three waits
  one after the other in a linear graph: the fan-out should take about one wait.
* A fan-out of three no-op branches: the engine's own cost of a fan-out and its join
  (task group, overlays, merge).
* The linear 6-node turn of :mod:`bench.engine_turn` on today's engine and on the engine
  as it was before parallel branches existed (``engine/runner.py`` at
  :data:`BASELINE`, read from git and imported beside today's), timed in alternating
  rounds in one process so that load from other processes falls on both alike.  The
  baseline also predates goal gates, sub-graphs and the turn deadline, so the ratio
  bounds what all of them together cost a linear turn (issue 15: at most +10 %).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio

from bench.engine_turn import noop_registry, turn_context, turn_graph
from bench.harness import BenchContext, BenchResult, Stats, at_least, at_most, time_async
from engine.graph import Node
from engine.registry import HandlerRegistry

NAME = "parallel"
TITLE = "parallel branches: concurrency, fan-out cost, linear-turn overhead"

BASELINE = "b4193f8^"
"""The commit before parallel branches were added (``git rev-parse`` resolves it)."""
ROOT = Path(__file__).resolve().parent.parent
WAIT = 0.05

FANNED = """digraph fanned {
    start [shape=Mdiamond]; fan [shape=component]; done [shape=Msquare]
    a [handler=work]; b [handler=work]; c [handler=work]
    join [shape=tripleoctagon merge=list]
    start -> fan; fan -> a -> join; fan -> b -> join; fan -> c -> join; join -> done
}"""
SEQUENTIAL = """digraph sequential {
    start [shape=Mdiamond]; done [shape=Msquare]
    a [handler=work]; b [handler=work]; c [handler=work]
    start -> a -> b -> c -> done
}"""


async def _wait(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
    await anyio.sleep(WAIT)
    return {"got": node.id}


def _nothing(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
    return {"got": node.id}


def _registry(work: Any) -> HandlerRegistry:
    reg = HandlerRegistry()
    reg.register("work", work)
    return reg


async def _runs(src: str, work: Any, n: int, warmup: int) -> Stats:
    from engine import Engine, load_graph

    reg = _registry(work)
    engine, graph = Engine(reg), load_graph(src, registry=reg)
    first = await engine.run(graph)
    if not first.ok:
        raise RuntimeError(f"{graph.name}: run failed: {first.error!r}")
    return Stats.of(await time_async(lambda: engine.run(graph), n, warmup))


async def _concurrency(ctx: BenchContext, res: BenchResult) -> None:
    n = ctx.n(30, 3)
    fanned = await _runs(FANNED, _wait, n, 1)
    sequential = await _runs(SEQUENTIAL, _wait, n, 1)
    res.add_latency("three 50 ms branches, fan-out", fanned, "ms", mean_too=False)
    res.add_latency("three 50 ms steps, sequential", sequential, "ms", mean_too=False)
    res.add("sequential / fan-out (p50)", sequential.p50 / fanned.p50, "×", at_least(2.5))
    cost = await _runs(FANNED, _nothing, ctx.n(5_000, 50), ctx.n(500, 5))
    res.add_latency("run through a fan-out of three no-op branches", cost)
    res.params.update(waits=n)


def _baseline_engine(tmp: Path) -> Any:
    """``Engine`` from ``engine/runner.py`` at :data:`BASELINE`, imported from a copy."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{BASELINE}:engine/runner.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = tmp / "runner_before_parallel.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("bench_runner_before_parallel", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot import {path}")
    module: ModuleType = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module.Engine


async def _overhead(ctx: BenchContext, res: BenchResult) -> None:
    from engine import Engine

    name = "linear turn today / before parallel (p50)"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            before = _baseline_engine(Path(tmp))
    except (OSError, subprocess.CalledProcessError, RuntimeError, SyntaxError) as exc:
        res.skip(name, f"no baseline: git show {BASELINE}:engine/runner.py failed ({exc})")
        return
    reg = noop_registry()
    graph, context = turn_graph(reg), turn_context()
    engines = {"today": Engine(reg), "before parallel": before(reg)}
    samples: dict[str, list[int]] = {label: [] for label in engines}
    rounds, per = ctx.n(20, 2), ctx.n(1_000, 50)
    with ctx.progress("linear turn, alternating engines", rounds) as advance:
        for i in range(rounds):
            order = list(engines.items())
            for label, engine in order if i % 2 == 0 else order[::-1]:

                async def once(engine: Any = engine) -> object:
                    return await engine.run(graph, context)

                samples[label] += await time_async(once, per, per // 10)
            advance(1)
    stats = {label: Stats.of(s) for label, s in samples.items()}
    for label, st in stats.items():
        res.add_latency(f"linear 6-node turn, {label}", st, mean_too=False)
    res.add(name, stats["today"].p50 / stats["before parallel"].p50, "×", at_most(1.10))
    res.params.update(baseline=BASELINE, rounds=rounds, runs_per_round=per)
    res.notes.append(
        f"baseline: engine/runner.py at {BASELINE} (before parallel branches, goal gates, "
        "sub-graphs and the turn deadline), imported beside today's; rounds alternate"
    )


def run(ctx: BenchContext) -> BenchResult:
    """Measure parallel branches' speed-up, a fan-out's cost, and a linear turn's overhead."""
    res = BenchResult(NAME, TITLE)
    t0 = time.perf_counter()
    try:
        anyio.run(_concurrency, ctx, res)
        anyio.run(_overhead, ctx, res)
    except Exception as exc:
        res.unavailable = f"{type(exc).__name__}: {exc}"
    res.seconds = time.perf_counter() - t0
    return res
