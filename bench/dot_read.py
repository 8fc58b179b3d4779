"""Reading DOT (issue 13): linear in size for every shape, no cold-start tax.

* nested named subgraphs, depth 8/12/16/20: time per statement stays flat (pydot's
  grammar doubled per level);
* chains of 1k/10k/100k edges, each parsed once in a fresh text: µs per edge, goal
  ≤ 20;
* the first ``load_graph`` in a fresh process against a later one of the same file
  (goal: ≤ 50 ms more);
* ``python -m engine.run graphs/turn.dot -m hi`` with a warm graph cache against
  ``python -c pass`` (goal: ≤ 0.25 s more).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.cli import CLI_ARGS, ROOT, _env, _time_cmd
from bench.harness import BenchContext, BenchResult, Stats, at_most, bench_env

NAME = "dot_read"
TITLE = "DOT reader: nesting, chains, first parse, warm CLI"

FIRST_VS_LATER = """
import time
t0 = time.perf_counter()
from engine.loader import clear_cache, load_graph
t1 = time.perf_counter()
load_graph("graphs/turn.dot")
t2 = time.perf_counter()
clear_cache()
load_graph("graphs/turn.dot")
t3 = time.perf_counter()
print(t2 - t1, t3 - t2)
"""


def nested(depth: int) -> tuple[str, int]:
    """DOT with ``depth`` nested named subgraphs, each holding one edge; (text, statements)."""
    opened = "".join(f"subgraph s{i} {{ a{i} -> b{i}; " for i in range(depth))
    return "digraph G {" + opened + "}" * depth + "}", 2 * depth


def chain(edges: int, salt: int = 0) -> str:
    """A chain of ``edges`` edges, one statement each (``salt`` makes each text new)."""
    body = "".join(f"n{i} -> n{i + 1};\n" for i in range(edges))
    return f"digraph G{salt} {{\n{body}}}\n"


def _median_seconds(fn: object, n: int) -> float:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()  # type: ignore[operator]
        samples.append(time.perf_counter_ns() - t0)
    return Stats.of(samples).p50 / 1e9


def _nesting(res: BenchResult, ctx: BenchContext) -> None:
    from engine.dot import parse_dot

    per: list[float] = []
    for depth in (8, 12, 16, 20):
        text, statements = nested(depth)
        secs = _median_seconds(lambda t=text: parse_dot(t), ctx.n(51, 3))
        per.append(secs / statements * 1e6)
        res.add(f"nested depth {depth} ({statements} statements)", secs * 1e3, "ms")
    res.add("µs per statement, depth 20 / depth 8", per[-1] / per[0], "×", at_most(2.0))


def _chains(res: BenchResult, ctx: BenchContext) -> None:
    from engine.dot import parse_dot

    sizes = (1_000, 10_000, 100_000) if not ctx.quick else (1_000, 10_000)
    for size in sizes:
        runs = ctx.n(5 if size < 100_000 else 3, 1)
        texts = iter([chain(size, salt) for salt in range(runs)])
        secs = _median_seconds(lambda it=texts: parse_dot(next(it)), runs)
        res.add(f"chain of {size} edges, µs per edge", secs / size * 1e6, "µs", at_most(20))


def _first_parse(res: BenchResult, ctx: BenchContext) -> None:
    firsts, laters = [], []
    for _ in range(ctx.n(5, 1)):
        out = subprocess.run(
            [sys.executable, "-c", FIRST_VS_LATER], cwd=ROOT, env=_env(),
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        first, later = map(float, out.stdout.split())
        firsts.append(first)
        laters.append(later)
    first_ms = sorted(firsts)[len(firsts) // 2] * 1e3
    later_ms = sorted(laters)[len(laters) // 2] * 1e3
    res.add("first load_graph in a process", first_ms, "ms")
    res.add("a later load_graph of the same file", later_ms, "ms")
    res.add("first minus later", first_ms - later_ms, "ms", at_most(50))


def _warm_cli(res: BenchResult, ctx: BenchContext) -> None:
    n = ctx.n(7, 1)
    with tempfile.TemporaryDirectory(prefix="bench-dot-") as home, bench_env(Path(home)):
        bare = Stats.of(_time_cmd(("-c", "pass"), n)[0]).p50 / 1e9
        samples, last = _time_cmd(CLI_ARGS, n)  # its untimed first run fills the cache
        if last.returncode != 0:
            res.skip("warm CLI", f"exit {last.returncode}")
            return
        cached = any((Path(home) / "graph-cache").iterdir())
        wall = Stats.of(samples).p50 / 1e9
    res.add("python -c pass", bare, "s")
    res.add("engine.run graphs/turn.dot -m hi, warm graph cache", wall, "s")
    res.add("CLI minus python -c pass", wall - bare, "s", at_most(0.25))
    res.notes.append("graph cache entry written" if cached else "no graph cache entry written")


def run(ctx: BenchContext) -> BenchResult:
    """Measure the DOT reader on nesting, long chains, first use and the warm CLI."""
    res = BenchResult(NAME, TITLE)
    t0 = time.perf_counter()
    with ctx.progress("dot_read", 4) as advance:
        for part in (_nesting, _chains, _first_parse, _warm_cli):
            part(res, ctx)
            advance(1)
    res.seconds = time.perf_counter() - t0
    return res
