"""Reading DOT (issue 13): linear in size for every shape, no cold-start tax.

* nested named subgraphs, depth 8/12/16/20: time per statement stays flat (pydot's
  grammar doubled per level);
* chains of 1k/10k/100k edges, each parsed once in a fresh text: µs per edge, goal
  ≤ 20;
* the first ``load_graph`` in a fresh process against a later one of the same file
  (goal: ≤ 50 ms more);
* ``python -m engine.run graphs/turn.dot -m hi`` with a warm graph cache against
  ``python -c pass`` (goal: ≤ 0.25 s more), wall and CPU time;
* pydot's own parser on the same nested and chain inputs, side by side, each run in a
  subprocess killed at :data:`PYDOT_CAP` seconds (pydot's time doubles per level of
  nesting: depth 12 would take minutes).

Subprocesses run with bytecode caching on (``PYTHONDONTWRITEBYTECODE`` removed), as
an installed package has its modules compiled: otherwise every run would time Python
compiling turngraph's sources, which no user pays.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.cli import CLI_ARGS, ROOT, _env
from bench.harness import BenchContext, BenchResult, Stats, at_most, bench_env

PYDOT_CAP = 20.0
"""Seconds pydot may spend on one input before it is stopped and shown as ``> cap``."""
PYDOT_PARSE = """
import sys, time
import pydot
text = open(sys.argv[1], encoding="utf-8").read()
t0 = time.perf_counter()
graphs = pydot.graph_from_dot_data(text)
print(time.perf_counter() - t0 if graphs else "failed")
"""

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


def _env_compiled() -> dict[str, str]:
    env = _env()
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _pydot_seconds(text: str, cap: float) -> float | None:
    """pydot's parse time for ``text`` in a fresh process; None past ``cap`` seconds."""
    with tempfile.NamedTemporaryFile("w", suffix=".dot", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        try:
            out = subprocess.run(
                [sys.executable, "-c", PYDOT_PARSE, f.name], cwd=ROOT, env=_env_compiled(),
                capture_output=True, text=True, timeout=cap + 10, check=True,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return None
    secs = float(out.stdout) if out.stdout.strip() != "failed" else None
    return secs if secs is not None and secs <= cap else None


def _median_seconds(fn: object, n: int) -> float:
    return _median_wall_cpu(fn, n)[0]


def _median_wall_cpu(fn: object, n: int) -> tuple[float, float]:
    """Median wall and median CPU seconds (this thread) of ``n`` calls of ``fn``.

    CPU time is what the reader costs; wall time adds what other processes on a
    loaded machine take from it.
    """
    walls, cpus = [], []
    for _ in range(n):
        c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
        fn()  # type: ignore[operator]
        walls.append(time.perf_counter_ns() - t0)
        cpus.append(time.thread_time_ns() - c0)
    return Stats.of(walls).p50 / 1e9, Stats.of(cpus).p50 / 1e9


def _compare(
    res: BenchResult, what: str, ours: float, text: str, cap: float, skip: str = ""
) -> bool:
    """Add a side-by-side row (ours vs pydot); whether pydot finished within ``cap``."""
    theirs = None if skip else _pydot_seconds(text, cap)
    res.comparison.append({
        "input": what,
        "turngraph ms": ours * 1e3,
        "pydot ms": theirs * 1e3 if theirs is not None else skip or f"> {cap:g} s (stopped)",
        "pydot / turngraph": theirs / ours if theirs is not None else None,
    })  # fmt: skip
    return theirs is not None


def _nesting(res: BenchResult, ctx: BenchContext) -> None:
    from engine.dot import parse_dot

    per: list[float] = []
    pydot_done = True
    depths = (8, 12, 16, 20)
    for depth in depths:
        text, statements = nested(depth)
        secs = _median_seconds(lambda t=text: parse_dot(t), ctx.n(51, 3))
        per.append(secs / statements * 1e6)
        res.add(f"nested depth {depth} ({statements} statements)", secs * 1e3, "ms")
        # Each level doubles pydot's time: past the cap once, deeper is not tried.
        if ctx.quick:
            skip = "not run (quick)"
        else:
            skip = "" if pydot_done else "not run (a shallower one was stopped)"
        pydot_done = _compare(res, f"nested depth {depth}", secs, text, PYDOT_CAP, skip)
    res.add("µs per statement, depth 20 / depth 8", per[-1] / per[0], "×", at_most(2.0))


def _chains(res: BenchResult, ctx: BenchContext) -> None:
    from engine.dot import parse_dot

    sizes = (1_000, 10_000, 100_000) if not ctx.quick else (1_000, 10_000)
    pydot_done = True
    for size in sizes:
        runs = ctx.n(5 if size < 100_000 else 3, 1)
        texts = [chain(size, salt) for salt in range(runs)]
        remaining = iter(texts)
        secs, cpu = _median_wall_cpu(lambda it=remaining: parse_dot(next(it)), runs)
        res.add(f"chain of {size} edges, µs per edge", secs / size * 1e6, "µs", at_most(20))
        res.add(f"chain of {size} edges, µs per edge, CPU", cpu / size * 1e6, "µs", at_most(20))
        if ctx.quick:
            skip = "not run (quick)"
        else:
            skip = "" if pydot_done else "not run (a shorter one was stopped)"
        pydot_done = _compare(res, f"chain of {size} edges", secs, texts[0], PYDOT_CAP, skip)


def _first_parse(res: BenchResult, ctx: BenchContext) -> None:
    firsts, laters = [], []
    for _ in range(ctx.n(5, 1)):
        out = subprocess.run(
            [sys.executable, "-c", FIRST_VS_LATER], cwd=ROOT, env=_env_compiled(),
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


def _timed_runs(args: tuple[str, ...], n: int) -> tuple[list[float], list[float], int]:
    """``python *args`` once untimed (fills caches), then ``n`` times: wall and CPU
    seconds of each run (CPU: user + system of the child), and the last exit code."""
    cmd, env = [sys.executable, *args], _env_compiled()
    code = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=60).returncode
    walls, cpus = [], []
    for _ in range(n):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        code = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=60).returncode
        walls.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return walls, cpus, code


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _warm_cli(res: BenchResult, ctx: BenchContext) -> None:
    n = ctx.n(9, 1)
    with tempfile.TemporaryDirectory(prefix="bench-dot-") as home, bench_env(Path(home)):
        bare_wall, bare_cpu, _ = _timed_runs(("-c", "pass"), n)
        walls, cpus, code = _timed_runs(CLI_ARGS, n)  # its untimed first run fills the cache
        if code != 0:
            res.skip("warm CLI", f"exit {code}")
            return
        cached = any((Path(home) / "graph-cache").iterdir())
    res.add("python -c pass, wall", _median(bare_wall), "s")
    res.add("engine.run graphs/turn.dot -m hi, warm graph cache, wall", _median(walls), "s")
    res.add(
        "CLI minus python -c pass, wall", _median(walls) - _median(bare_wall), "s", at_most(0.25)
    )
    res.add("CLI minus python -c pass, wall, fastest runs", min(walls) - min(bare_wall), "s")
    res.add("CLI minus python -c pass, CPU", _median(cpus) - _median(bare_cpu), "s")
    res.notes.append("graph cache entry written" if cached else "no graph cache entry written")
    res.notes.append(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


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
