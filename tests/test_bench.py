"""The benchmark suite runs and reports well-formed results (timings are never asserted)."""

from __future__ import annotations

import importlib
import io
import json
import math
import os
from pathlib import Path

import pytest
from rich.console import Console

from bench import BENCHMARKS
from bench.__main__ import main, run_one, summary
from bench.harness import (
    BenchContext,
    BenchResult,
    Metric,
    Stats,
    Target,
    at_least,
    at_most,
    bench_env,
    growth_ratio,
    render,
    render_comparison,
    result_document,
)

SLOW = {
    "cli",
    "store",
    "peers",
    "session",
    "ray_hop",
    "concurrent_streams",
    "serve",
    "throughput",
}


def quiet() -> Console:
    """A console writing to memory: tests print nothing."""
    return Console(file=io.StringIO(), width=200)


def text_of(console: Console) -> str:
    file = console.file
    assert isinstance(file, io.StringIO)
    return file.getvalue()


# ---------------------------------------------------------------------------- harness


def test_stats_use_nearest_rank_percentiles() -> None:
    """p50/p99 are observed values (nearest rank); mean, min and max are exact."""
    s = Stats.of(list(range(1, 101)))
    assert (s.n, s.p50, s.p99, s.min, s.max) == (100, 50.0, 99.0, 1.0, 100.0)
    assert s.mean == pytest.approx(50.5)
    assert Stats.of([7]).p99 == 7.0


def test_stats_of_nothing_is_an_error() -> None:
    """No samples is a bug in the benchmark, not a zero."""
    with pytest.raises(ValueError, match="no samples"):
        Stats.of([])


def test_targets_compare_in_both_directions() -> None:
    """``at_most`` and ``at_least`` include the bound; ``<`` excludes it."""
    assert at_most(2.0).met(2.0) and not at_most(2.0).met(2.01)
    assert at_least(30).met(30) and not at_least(30).met(29.9)
    assert not Target("<", 1.0).met(1.0)
    assert str(at_most(40)) == "<= 40"


def test_growth_ratio_compares_last_window_to_first() -> None:
    """A flat series is 1.0; a tail twice as slow is 2.0; short series use halves."""
    assert growth_ratio([10] * 200) == pytest.approx(1.0)
    assert growth_ratio([10] * 100 + [20] * 100, 50) == pytest.approx(2.0)
    assert growth_ratio([1, 3]) == pytest.approx(3.0)


def test_metric_without_value_or_target_has_no_verdict() -> None:
    """Unmeasured metrics and metrics without a target are neither pass nor miss."""
    assert Metric("x", None, "µs", at_most(1)).passed is None
    assert Metric("x", 5.0, "µs").passed is None
    assert Metric("x", 5.0, "µs", at_most(1)).passed is False


def test_render_shows_misses_and_unavailability() -> None:
    """A missed target reads 'miss' (never an exception); unavailability is in the title."""
    res = BenchResult("demo", "a demo", unavailable="no database")
    res.add("fast thing", 3.0, "µs", at_most(1.0))
    res.skip("other", "not installed: foo")
    res.comparison.append({"implementation": "x", "p50 µs": 1.5, "version": "1.0"})
    console = quiet()
    console.print(render(res))
    side = render_comparison(res)
    assert side is not None
    console.print(side)
    out = text_of(console)
    assert "miss" in out and "not available: no database" in out
    assert "not installed: foo" in out and "side by side" in out
    assert render_comparison(BenchResult("d", "d")) is None


def test_result_document_is_json_with_machine_info() -> None:
    """The JSON record carries the machine, the mode and every metric with its target."""
    res = BenchResult("demo", "a demo")
    res.add("m", 2.5, "ms", at_most(3))
    doc = json.loads(json.dumps(result_document([res], quick=True)))
    assert doc["quick"] is True
    assert {"python", "platform", "cpu_count"} <= set(doc["machine"])
    metric = doc["results"][0]["metrics"][0]
    assert metric == {
        "name": "m",
        "value": 2.5,
        "unit": "ms",
        "target": {"op": "<=", "value": 3},
        "passed": True,
    }


def test_bench_env_isolates_the_data_dir_and_restores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside, the data dir is the given directory and a secret exists; after, both are gone."""
    monkeypatch.delenv("TURNGRAPH_HOME", raising=False)
    monkeypatch.delenv("TURNGRAPH_SECRET", raising=False)
    with bench_env(tmp_path):
        assert os.environ["TURNGRAPH_HOME"] == str(tmp_path)
        assert os.environ["TURNGRAPH_SECRET"]
    assert "TURNGRAPH_HOME" not in os.environ and "TURNGRAPH_SECRET" not in os.environ
    monkeypatch.setenv("TURNGRAPH_SECRET", "mine")
    with bench_env(tmp_path):
        assert os.environ["TURNGRAPH_SECRET"] == "mine"


# ---------------------------------------------------------------------------- command line


def test_list_names_every_benchmark() -> None:
    """``--list`` prints the benchmark names and exits 0."""
    console = quiet()
    assert main(["--list"], console) == 0
    assert text_of(console).split() == list(BENCHMARKS)


def test_unknown_benchmark_is_a_usage_error() -> None:
    """An unknown name exits 2 and says so."""
    console = quiet()
    assert main(["nope", "--no-save"], console) == 2
    assert "unknown benchmark(s): nope" in text_of(console)


def test_a_crashing_benchmark_becomes_an_unavailable_result() -> None:
    """One broken benchmark is reported, not raised, so the others still run."""
    res = run_one("does_not_exist", BenchContext(quick=True, console=quiet()))
    assert res.unavailable is not None and res.unavailable.startswith("crashed: ")


def test_summary_counts_passes_and_names_misses() -> None:
    """The closing summary lists, per benchmark, how many targets held and which did not."""
    a = BenchResult("a", "a")
    a.add("quick enough", 1.0, "µs", at_most(2))
    a.add("too slow", 3.0, "µs", at_most(2))
    a.add("info only", 9.0, "µs")
    b = BenchResult("b", "b", unavailable="no server")
    console = quiet()
    console.print(summary([a, b]))
    rows = [line for line in text_of(console).splitlines() if "│" in line]
    assert [c.strip() for c in rows[0].split("│")[1:5]] == ["a", "1", "1", "too slow"]
    assert "not available: no server" in rows[1]


def test_main_writes_one_json_document(tmp_path: Path) -> None:
    """``--json PATH`` writes the run's document there (and nothing under bench/results)."""
    path = tmp_path / "out" / "run.json"
    console = quiet()
    assert main(["engine_turn", "--quick", "--json", str(path)], console) == 0
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert [r["name"] for r in doc["results"]] == ["engine_turn"]
    assert "engine_turn" in text_of(console)


# ---------------------------------------------------------------------------- each benchmark


def _check_structure(res: BenchResult, name: str) -> None:
    assert res.name == name
    json.dumps(res.to_dict())
    for m in res.metrics:
        assert m.name and isinstance(m.unit, str)
        if m.value is None:
            assert m.note, f"{m.name}: an unmeasured metric must say why"
        else:
            assert math.isfinite(m.value), m.name
    measured = [m for m in res.metrics if m.value is not None]
    assert res.unavailable is not None or measured, "neither figures nor a reason"


def _marks(name: str) -> list[pytest.MarkDecorator]:
    marks = [pytest.mark.slow] if name in SLOW else []
    return [*marks, pytest.mark.ray] if name == "ray_hop" else marks


@pytest.mark.parametrize("name", [pytest.param(n, marks=_marks(n)) for n in BENCHMARKS])
def test_each_benchmark_runs_quickly_and_reports(name: str) -> None:
    """``run(ctx)`` in quick mode returns well-formed metrics (or says why it cannot)."""
    module = importlib.import_module(f"bench.{name}")
    assert name == module.NAME
    res = module.run(BenchContext(quick=True, console=quiet()))
    _check_structure(res, name)


def test_engine_turn_reports_the_issue_targets() -> None:
    """The no-op turn carries the issue's p50/p99 targets, in microseconds."""
    from bench import engine_turn

    res = engine_turn.run(BenchContext(quick=True, console=quiet()))
    assert res.unavailable is None
    p50 = res.metric("turn, no-op sync handlers p50")
    assert (p50.unit, p50.target) == ("µs", at_most(40))
    assert res.metric("turn, no-op sync handlers p99").target == at_most(150)
    assert res.params["nodes"] == 7


def test_the_session_bench_measures_streaming() -> None:
    """The streaming part: stream vs send, first token and per-delta cost, all measured."""
    import anyio

    from bench.session import PARTS
    from bench.session_stream import streaming

    assert streaming in PARTS
    res = BenchResult("session", "streaming")
    anyio.run(streaming, BenchContext(quick=True, console=quiet()), res)
    first = res.metric("stream: first token added by engine + session p50")
    assert (first.unit, first.target) == ("ms", at_most(0.5))
    assert res.metric("stream: cost per delta p50 (model yields per token)").target == at_most(5)
    assert all(m.value is not None and math.isfinite(m.value) for m in res.metrics)


def test_the_session_bench_measures_tracing() -> None:
    """The tracing part: a turn with OpenTelemetry off, over the no-op API, over the SDK."""
    import anyio

    from bench.session import PARTS
    from bench.session_otel import tracing

    assert tracing in PARTS
    res = BenchResult("session", "tracing")
    anyio.run(tracing, BenchContext(quick=True, console=quiet()), res)
    for mode in ("off", "API, no SDK", "SDK, recorded"):
        assert res.metric(f"otel: turn, tracing {mode} p50").unit == "µs"
    added = res.metric("otel: p50 added per turn, SDK, recorded")
    assert added.value is not None and math.isfinite(added.value)
