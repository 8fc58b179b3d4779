"""Loading a turn graph: warm (an unchanged file, served from the cache) and cold (parsed).

Target (issue 2): a warm ``load_graph`` of an unchanged file ≤ 20 µs.  Cold loads go
through pydot's parser (tens of milliseconds, DESIGN.md §5) and are reported for
information: each cold sample loads a file whose content differs by a comment, so no
cache can answer it.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.engine_turn import TURN_DOT, noop_registry
from bench.harness import BenchContext, BenchResult, Stats, time_sync
from engine.registry import HandlerRegistry

NAME = "load"
TITLE = "load_graph: warm (cached) and cold (parsed)"


def _warm(res: BenchResult, ctx: BenchContext, tmp: Path, reg: HandlerRegistry) -> None:
    from engine import load_graph

    path = tmp / "turn.dot"
    path.write_text(TURN_DOT, encoding="utf-8")
    first = load_graph(path, registry=reg)
    n = ctx.n(20_000, 200)
    samples = time_sync(lambda: load_graph(path, registry=reg), n, warmup=ctx.n(500, 5))
    res.add_latency("warm load, unchanged file", Stats.of(samples), p50=20)
    again = load_graph(path, registry=reg)
    res.notes.append(
        "warm load returns the cached Graph" if again is first else "warm load rebuilt the Graph"
    )
    text_samples = time_sync(lambda: load_graph(TURN_DOT, registry=reg), n, warmup=5)
    res.add_latency("warm load, same DOT text", Stats.of(text_samples))
    res.params.update(warm_loads=n)


def _cold(res: BenchResult, ctx: BenchContext, tmp: Path, reg: HandlerRegistry) -> None:
    from engine import load_graph

    n = ctx.n(60, 3)
    paths = []
    for i in range(n + 1):
        p = tmp / f"cold-{i}.dot"
        p.write_text(f"// variant {i}\n{TURN_DOT}", encoding="utf-8")
        paths.append(p)
    load_graph(paths.pop(), registry=reg)  # imports and first-use costs are not "cold load"
    it = iter(paths)
    samples = time_sync(lambda: load_graph(next(it), registry=reg), n)
    res.add_latency("cold load (parse + compile)", Stats.of(samples), unit="ms")
    res.params.update(cold_loads=n)


def run(ctx: BenchContext) -> BenchResult:
    """Measure warm and cold loads of the 6-node turn graph."""
    res = BenchResult(NAME, TITLE)
    t0 = time.perf_counter()
    reg = noop_registry()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-load-") as d:
            _warm(res, ctx, Path(d), reg)
            _cold(res, ctx, Path(d), reg)
    except NotImplementedError as exc:
        res.unavailable = f"engine.load_graph: {exc}"
    res.seconds = time.perf_counter() - t0
    return res
