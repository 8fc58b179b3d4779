"""Wall time of the command line: ``python -m engine.run graphs/turn.dot -m hi``.

Target (issue 2): median of ~7 runs ≤ 0.6 s.  Everything is in it: interpreter start,
imports, loading the graph, one turn with the offline built-in handlers, output.  The
interpreter's own start-up (``python -c pass``) and importing the packages are measured
too, so a miss can be attributed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import BenchContext, BenchResult, Stats, at_most, bench_env

NAME = "cli"
TITLE = "python -m engine.run graphs/turn.dot -m hi (wall time)"

ROOT = Path(__file__).resolve().parent.parent
TURN_FILE = ROOT / "graphs" / "turn.dot"
CLI_ARGS = ("-m", "engine.run", "graphs/turn.dot", "-m", "hi")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def _time_cmd(args: tuple[str, ...], n: int) -> tuple[list[int], subprocess.CompletedProcess[str]]:
    """Run ``python *args`` once untimed (warms ``__pycache__``), then ``n`` times timed."""
    env = _env()
    cmd = [sys.executable, *args]
    last = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    samples: list[int] = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        last = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        samples.append(time.perf_counter_ns() - t0)
    return samples, last


def _add(res: BenchResult, name: str, samples: list[int], target: float | None = None) -> None:
    s = Stats.of(samples)
    res.add(f"{name} median", s.p50 / 1e9, "s", at_most(target) if target else None)
    res.add(f"{name} min", s.min / 1e9, "s")


def run(ctx: BenchContext) -> BenchResult:
    """Time the CLI against interpreter start-up and bare imports."""
    res = BenchResult(NAME, TITLE)
    t0 = time.perf_counter()
    n = ctx.n(7, 1)
    res.params.update(runs=n)
    # The data dir points at a temporary directory: a run must leave nothing behind.
    with (
        tempfile.TemporaryDirectory(prefix="bench-cli-") as home,
        bench_env(Path(home)),
        ctx.progress("subprocess runs", 3) as advance,
    ):
        _add(res, "python -c pass", _time_cmd(("-c", "pass"), n)[0])
        advance(1)
        imports = ("-c", "import engine, handlers, sessions")
        _add(res, "import engine, handlers, sessions", _time_cmd(imports, n)[0])
        advance(1)
        if not TURN_FILE.exists():
            res.unavailable = "graphs/turn.dot does not exist yet"
        else:
            samples, last = _time_cmd(CLI_ARGS, n)
            name = "python -m engine.run graphs/turn.dot -m hi"
            if last.returncode != 0:
                why = (last.stderr.strip().splitlines() or ["no output"])[-1]
                res.skip(name, f"not available: exit {last.returncode}: {why}")
            else:
                _add(res, name, samples, 0.6)
        advance(1)
    res.seconds = time.perf_counter() - t0
    return res
