"""Engine overhead of one turn: the 6-node turn graph with handlers that do nothing.

``start → classify → recall → llm_call → format → update_memory → done`` is loaded once
from inline DOT; every node's handler is a no-op, so what is timed is the engine alone:
plan lookup, the step loop, outcome handling, edge choice and the trace.  Targets (issue
2): p50 ≤ 40 µs, p99 ≤ 150 µs.  The same graph with the real offline built-in handlers
(``handlers.build_registry()``) is measured for information.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio

from bench.harness import BenchContext, BenchResult, Stats, growth_ratio, time_async
from engine.graph import Graph, Node
from engine.registry import HandlerRegistry

NAME = "engine_turn"
TITLE = "engine overhead of the 6-node turn"

TURN_DOT = """\
digraph turn {
    start [shape=Mdiamond];
    done  [shape=Msquare];
    start -> classify -> recall -> llm_call -> format -> update_memory -> done;
}
"""
CHAIN = ("start", "classify", "recall", "llm_call", "format", "update_memory", "done")
TURN_FILE = Path(__file__).resolve().parent.parent / "graphs" / "turn.dot"

# Names a shape or a node id may resolve to: registering all keeps the bench independent
# of exactly how the loader names the start and exit handlers.
_HANDLER_NAMES = (*CHAIN, "exit")


def _noop(node: Node, context: Mapping[str, Any]) -> None:
    return None


async def _anoop(node: Node, context: Mapping[str, Any]) -> None:
    return None


def noop_registry(*, is_async: bool = False) -> HandlerRegistry:
    """A registry with a do-nothing handler under every name the turn graph may use."""
    reg = HandlerRegistry()
    for name in _HANDLER_NAMES:
        reg.register(name, _anoop if is_async else _noop)
    return reg


def turn_graph(registry: HandlerRegistry | None = None, source: str = TURN_DOT) -> Graph:
    """The 6-node turn graph, loaded with ``engine.load_graph`` from ``source``."""
    from engine import load_graph

    return load_graph(source, registry=registry or noop_registry())


def turn_context(text: str = "hi") -> dict[str, Any]:
    """The context a turn starts with when no session provides one."""
    return {
        "session.input": text,
        "session.id": "bench",
        "session.turn_count": 0,
        "session.history": (),
        "session.goals": (),
        "session.working_memory": {},
    }


async def time_engine(
    engine: Any, graph: Graph, n: int, warmup: int, ctx: BenchContext, label: str
) -> list[int]:
    """Nanoseconds of each of ``n`` runs of ``graph`` (after ``warmup``); a failed run raises."""
    context = turn_context()
    first = await engine.run(graph, context)
    if not first.ok:
        raise RuntimeError(f"{label}: turn failed: {first.error!r}")

    async def once() -> object:
        return await engine.run(graph, context)

    with ctx.progress(label, n) as advance:
        samples = await time_async(once, n, warmup, advance)
    return samples


async def _noop_turns(ctx: BenchContext, res: BenchResult) -> None:
    from engine import Engine

    n, warm = ctx.n(20_000, 300), ctx.n(2_000, 50)
    for is_async, label in ((False, "no-op sync handlers"), (True, "no-op async handlers")):
        reg = noop_registry(is_async=is_async)
        graph = turn_graph(reg)
        stats = Stats.of(await time_engine(Engine(reg), graph, n, warm, ctx, label))
        if is_async:
            res.add_latency(f"turn, {label}", stats)
        else:
            res.add_latency(f"turn, {label}", stats, p50=40, p99=150)
            res.add(f"runs/s, {label}", 1e9 / stats.mean, "runs/s")
    res.params.update(turns=n, warmup=warm, nodes=len(graph.nodes))


async def _real_turns(ctx: BenchContext, res: BenchResult) -> None:
    from engine import Engine
    from handlers import build_registry

    name = "turn, built-in offline handlers"
    if not TURN_FILE.exists():
        res.skip(name, "not available: graphs/turn.dot does not exist")
        return
    reg = build_registry()
    graph = turn_graph(reg, str(TURN_FILE))
    n, warm = ctx.n(5_000, 100), ctx.n(500, 20)
    samples = await time_engine(Engine(reg), graph, n, warm, ctx, "built-in handlers")
    res.add_latency(name, Stats.of(samples))
    res.add("built-in handlers: last/first 50 turns", growth_ratio(samples, 50), "×")
    res.notes.append(
        "built-in: one KeywordMemory fills up to its 1,000-item cap during the run; "
        "its indexed recall keeps later turns as cheap as early ones (last/first 50)"
    )
    res.notes.append("built-in handlers run graphs/turn.dot")


def run(ctx: BenchContext) -> BenchResult:
    """Measure the engine's per-turn overhead (no-op and built-in handlers)."""
    res = BenchResult(NAME, TITLE)
    t0 = time.perf_counter()
    try:
        anyio.run(_noop_turns, ctx, res)
    except Exception as exc:
        res.unavailable = f"{type(exc).__name__}: {exc}"
        return res
    anyio.run(_real_turns, ctx, res)
    res.seconds = time.perf_counter() - t0
    return res
