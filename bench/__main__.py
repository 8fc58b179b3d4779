"""``python -m bench [NAME ...] [--quick] [--json PATH]``: run benchmarks, print tables.

Without names every benchmark runs.  Results go to ``bench/results/<name>-<time>.json``
(one file per benchmark) unless ``--json PATH`` names a single combined file or
``--no-save`` is given.  A benchmark that cannot run (a module under test missing, a
server unreachable) says so in its table; missed targets are shown, never fatal.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench import BENCHMARKS
from bench.harness import (
    RESULTS_DIR,
    BenchContext,
    BenchResult,
    render,
    render_comparison,
    result_document,
    write_json,
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", metavar="NAME", help=f"any of: {', '.join(BENCHMARKS)}")
    p.add_argument("--quick", action="store_true", help="tiny iteration counts (smoke run)")
    p.add_argument("--json", type=Path, metavar="PATH", help="write one combined JSON file")
    p.add_argument("--no-save", action="store_true", help="write no JSON at all")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    return p


def run_one(name: str, ctx: BenchContext) -> BenchResult:
    """Run benchmark ``name``; an unexpected crash becomes an 'unavailable' result."""
    t0 = time.perf_counter()
    try:
        module = importlib.import_module(f"bench.{name}")
        result: BenchResult = module.run(ctx)
    except Exception as exc:  # one broken benchmark must not hide the others' figures
        result = BenchResult(name, name, unavailable=f"crashed: {type(exc).__name__}: {exc}")
    if not result.seconds:
        result.seconds = time.perf_counter() - t0
    return result


def summary(results: Sequence[BenchResult]) -> Table:
    """One row per benchmark: targets met and missed, and the missed metrics' names."""
    table = Table(title="[bold]summary[/]", title_justify="left")
    for col in ("benchmark", "pass", "miss", "missed", "seconds"):
        table.add_column(col, justify="right" if col in ("pass", "miss", "seconds") else "left")
    for r in results:
        judged = [m for m in r.metrics if m.passed is not None]
        missed = [m.name for m in judged if not m.passed]
        status = f" [yellow](not available: {r.unavailable})[/]" if r.unavailable else ""
        table.add_row(
            r.name + status,
            str(len(judged) - len(missed)),
            f"[red]{len(missed)}[/]" if missed else "0",
            "; ".join(missed),
            f"{r.seconds:.1f}",
        )
    return table


def _save(results: Sequence[BenchResult], args: argparse.Namespace, console: Console) -> None:
    if args.no_save:
        return
    if args.json is not None:
        path = write_json(result_document(results, quick=args.quick), args.json)
        console.print(f"[dim]wrote {path}[/]")
        return
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for r in results:
        path = write_json(
            result_document([r], quick=args.quick), RESULTS_DIR / f"{r.name}-{stamp}.json"
        )
        console.print(f"[dim]wrote {path}[/]")


def main(argv: Sequence[str] | None = None, console: Console | None = None) -> int:
    """Entry point; returns the exit code (0 unless the command line is wrong)."""
    args = _parser().parse_args(argv)
    # Piped into a file or a CI log there is no terminal width: rich would assume 80
    # columns and wrap the comparison tables into unreadable slivers.
    console = console or Console(width=None if sys.stdout.isatty() else 140)
    if args.list:
        for name in BENCHMARKS:
            console.print(name)
        return 0
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        console.print(f"[red]unknown benchmark(s): {', '.join(unknown)}[/] (try --list)")
        return 2
    ctx = BenchContext(quick=args.quick, console=console)
    results: list[BenchResult] = []
    for name in args.names or BENCHMARKS:
        # A plain line, not console.status(): a spinner redraws from its own thread,
        # which competes for the GIL with the code being timed and inflates its figures.
        console.print(f"[dim]running {name}…[/]")
        result = run_one(name, ctx)
        results.append(result)
        console.print(render(result))
        side = render_comparison(result)
        if side is not None:
            console.print(side)
    if len(results) > 1:
        console.print(summary(results))
    _save(results, args, console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
