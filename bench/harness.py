"""Timing, statistics and reporting shared by every benchmark.

A benchmark is a function ``run(ctx: BenchContext) -> BenchResult``.  It measures with
:func:`time.perf_counter_ns` (:func:`time_sync`, :func:`time_async`), summarises samples
as :class:`Stats` (median, p99, mean), and records :class:`Metric` rows, each optionally
compared with a :class:`Target` from the issues.  A missed target is *shown*, never
raised: benchmarks measure, tests assert.

:func:`render` turns a result into a rich table; :func:`result_document` and
:func:`write_json` produce the machine-readable record (metrics, targets, machine info)
used to track figures over time.
"""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

__all__ = [
    "BenchContext",
    "BenchResult",
    "Metric",
    "Stats",
    "Target",
    "bench_env",
    "machine_info",
    "render",
    "render_comparison",
    "result_document",
    "rss_bytes",
    "time_async",
    "time_sync",
    "write_json",
]

RESULTS_DIR = Path(__file__).resolve().parent / "results"

Op = Literal["<=", ">=", "<", ">"]


@dataclass(frozen=True, slots=True)
class Target:
    """A goal from an issue: ``value op target`` must hold (in the metric's unit)."""

    op: Op
    value: float

    def met(self, value: float) -> bool:
        """Whether ``value`` meets this target."""
        if self.op == "<=":
            return value <= self.value
        if self.op == ">=":
            return value >= self.value
        if self.op == "<":
            return value < self.value
        return value > self.value

    def __str__(self) -> str:
        return f"{self.op} {_fmt(self.value)}"


def at_most(value: float) -> Target:
    """Target ``<= value``."""
    return Target("<=", value)


def at_least(value: float) -> Target:
    """Target ``>= value``."""
    return Target(">=", value)


@dataclass(slots=True)
class Metric:
    """One measured figure.  ``value`` is ``None`` when it could not be measured
    (``note`` then says why: a peer not installed, PostgreSQL unreachable...)."""

    name: str
    value: float | None
    unit: str
    target: Target | None = None
    note: str = ""

    @property
    def passed(self) -> bool | None:
        """True/False against the target; None when there is no target or no value."""
        if self.target is None or self.value is None:
            return None
        return self.target.met(self.value)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d: dict[str, Any] = {"name": self.name, "value": self.value, "unit": self.unit}
        if self.target is not None:
            d["target"] = {"op": self.target.op, "value": self.target.value}
            d["passed"] = self.passed
        if self.note:
            d["note"] = self.note
        return d


@dataclass(frozen=True, slots=True)
class Stats:
    """Summary of timing samples, all in nanoseconds."""

    n: int
    p50: float
    p99: float
    mean: float
    min: float
    max: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Stats:
        """Median, p99 (nearest rank), mean, min and max of ``samples``."""
        if not samples:
            raise ValueError("no samples")
        s = sorted(samples)
        return cls(
            n=len(s),
            p50=_percentile(s, 50.0),
            p99=_percentile(s, 99.0),
            mean=sum(s) / len(s),
            min=float(s[0]),
            max=float(s[-1]),
        )


def _percentile(sorted_samples: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile: a value that was actually observed."""
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_samples)))
    return float(sorted_samples[rank - 1])


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean (0.0 for no values)."""
    return sum(values) / len(values) if values else 0.0


def growth_ratio(samples: Sequence[float], window: int = 50) -> float:
    """Mean of the last ``window`` samples over the mean of the first ``window``.

    The measure the issues use for "per-turn cost does not grow with history".
    """
    w = max(1, min(window, len(samples) // 2))
    return mean(samples[-w:]) / mean(samples[:w])


@dataclass(slots=True)
class BenchResult:
    """What a benchmark returns: its metrics, notes, and why it could not run (if so)."""

    name: str
    title: str
    metrics: list[Metric] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unavailable: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    comparison: list[dict[str, Any]] = field(default_factory=list)
    """Optional side-by-side rows (same keys in each), shown as a second table."""

    def add(
        self,
        name: str,
        value: float | None,
        unit: str,
        target: Target | None = None,
        note: str = "",
    ) -> Metric:
        """Append a metric and return it."""
        m = Metric(name, value, unit, target, note)
        self.metrics.append(m)
        return m

    def add_latency(
        self,
        name: str,
        stats: Stats,
        unit: Literal["µs", "ms"] = "µs",
        p50: float | None = None,
        p99: float | None = None,
        mean_too: bool = True,
    ) -> None:
        """Add ``name p50`` / ``name p99`` (/ ``name mean``) rows from ``stats``."""
        scale = 1e3 if unit == "µs" else 1e6
        self.add(f"{name} p50", stats.p50 / scale, unit, at_most(p50) if p50 else None)
        self.add(f"{name} p99", stats.p99 / scale, unit, at_most(p99) if p99 else None)
        if mean_too:
            self.add(f"{name} mean", stats.mean / scale, unit)

    def skip(self, name: str, why: str) -> Metric:
        """Record a metric that could not be measured, and why."""
        return self.add(name, None, "", note=why)

    def metric(self, name: str) -> Metric:
        """The metric called ``name`` (``KeyError`` if absent)."""
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "title": self.title,
            "unavailable": self.unavailable,
            "seconds": round(self.seconds, 3),
            "params": self.params,
            "metrics": [m.to_dict() for m in self.metrics],
            "notes": list(self.notes),
            "comparison": self.comparison,
        }


class BenchContext:
    """What a benchmark gets: the mode (``quick``), a console, and a progress helper."""

    def __init__(self, *, quick: bool = False, console: Console | None = None) -> None:
        self.quick = quick
        self.console = console or Console()

    def n(self, full: int, quick: int) -> int:
        """An iteration count: ``full`` normally, ``quick`` with ``--quick``."""
        return quick if self.quick else full

    @contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        """A transient progress bar; yields ``advance(n)``.

        Redrawn only when ``advance`` is called (between timed calls), never by rich's
        refresh thread: a thread waking to redraw competes for the GIL with the code
        being timed.
        """
        bar = Progress(
            TextColumn("  [cyan]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
            auto_refresh=False,
            disable=not self.console.is_terminal,
        )
        with bar:
            task = bar.add_task(description, total=total)

            def advance(k: int = 1) -> None:
                bar.advance(task, k)
                bar.refresh()

            yield advance


def settle() -> None:
    """Collect garbage before a measured block so earlier garbage is not billed to it."""
    gc.collect()


def time_sync(fn: Callable[[], object], n: int, warmup: int = 0) -> list[int]:
    """Call ``fn`` ``warmup`` times unmeasured, then ``n`` times; nanoseconds per call."""
    for _ in range(warmup):
        fn()
    settle()
    clock = time.perf_counter_ns
    out: list[int] = []
    for _ in range(n):
        t0 = clock()
        fn()
        out.append(clock() - t0)
    return out


async def time_async(
    fn: Callable[[], Awaitable[object]],
    n: int,
    warmup: int = 0,
    advance: Callable[[int], None] | None = None,
) -> list[int]:
    """Await ``fn()`` ``warmup`` times unmeasured, then ``n`` times; nanoseconds per call."""
    for _ in range(warmup):
        await fn()
    settle()
    clock = time.perf_counter_ns
    out: list[int] = []
    step = max(1, n // 100)
    for i in range(n):
        t0 = clock()
        await fn()
        out.append(clock() - t0)
        if advance is not None and i % step == step - 1:
            advance(step)
    return out


@contextmanager
def bench_env(home: Path) -> Iterator[None]:
    """Point turngraph's data dir at ``home`` and give it a secret, for one benchmark.

    A benchmark must not create a key file in the user's data directory; a
    ``TURNGRAPH_SECRET`` already set is kept.  Both variables are restored afterwards
    (child processes started meanwhile inherit them).
    """
    saved = {k: os.environ.get(k) for k in ("TURNGRAPH_HOME", "TURNGRAPH_SECRET")}
    os.environ["TURNGRAPH_HOME"] = str(home)
    os.environ.setdefault("TURNGRAPH_SECRET", "turngraph-bench-secret")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def rss_bytes() -> int:
    """Current resident set size, from ``/proc/self/statm`` (0 where unavailable)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            resident = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return resident * os.sysconf("SC_PAGE_SIZE")


def machine_info() -> dict[str, Any]:
    """Python, platform, CPU count and load: enough to compare runs across machines."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on Linux
        load = []
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "loadavg": load,
    }


def _fmt(value: float) -> str:
    """A compact human figure: 3 significant digits, thousands separated."""
    if value == 0:
        return "0"
    if abs(value) >= 1000 or (float(value).is_integer() and abs(value) < 1e15):
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


_VERDICT = {True: "[green]pass[/]", False: "[red]miss[/]", None: ""}


def render(result: BenchResult) -> Table:
    """A rich table: metric, value, target, pass/miss, note."""
    title = f"[bold]{result.name}[/] — {result.title}"
    if result.unavailable:
        title += f"  [yellow](not available: {result.unavailable})[/]"
    table = Table(title=title, title_justify="left", show_lines=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("unit")
    table.add_column("target", justify="right")
    table.add_column("", justify="center")
    table.add_column("note", style="dim", overflow="fold")
    for m in result.metrics:
        value = _fmt(m.value) if m.value is not None else "[dim]—[/]"
        target = str(m.target) if m.target is not None else ""
        table.add_row(m.name, value, m.unit, target, _VERDICT[m.passed], m.note)
    if result.notes or result.seconds:
        table.caption = " · ".join([*result.notes, f"{result.seconds:.1f} s"])
        table.caption_justify = "left"
    return table


def render_comparison(result: BenchResult) -> Table | None:
    """The side-by-side table of ``result.comparison`` (None when there is none)."""
    if not result.comparison:
        return None
    columns = list(result.comparison[0])
    table = Table(title=f"[bold]{result.name}[/] — side by side", title_justify="left")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in result.comparison:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    return table


def _cell(value: object) -> str:
    if value is None:
        return "[dim]—[/]"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return _fmt(float(value))


def result_document(results: Sequence[BenchResult], *, quick: bool) -> dict[str, Any]:
    """The JSON record of one ``python -m bench`` run."""
    return {
        "schema": 1,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": quick,
        "machine": machine_info(),
        "results": [r.to_dict() for r in results],
    }


def write_json(doc: dict[str, Any], path: Path) -> Path:
    """Write ``doc`` to ``path`` (parents created), atomically enough for a report file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
