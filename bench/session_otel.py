"""The tracing part of the session benchmark (issue 14): what OpenTelemetry costs a turn.

The same turns (``memory:`` store, the default ``turn.dot``, offline handlers, structlog
off) on three managers, interleaved turn by turn so the machine's load falls on each
alike:

* **off**: no telemetry (the default): no observer at all;
* **API, no SDK**: ``Telemetry`` over the API's no-op tracer provider, what a process
  that installed the extra but configured no SDK gets: a non-recording turn span, and
  so no observer and no events;
* **SDK, recorded**: the SDK's ``TracerProvider`` with a simple processor into an
  in-memory exporter (cleared as it goes): every span built, ended and exported.

Reported: p50 of each and the p50 added per turn by each enabled mode.  No target: the
issue asks for the cost to be measured.  Needs the SDK (the ``dev`` extra).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from bench.harness import BenchContext, BenchResult, Stats

if TYPE_CHECKING:
    from sessions import Session

__all__ = ["tracing"]

_perf = time.perf_counter_ns


async def tracing(ctx: BenchContext, res: BenchResult) -> None:
    """p50 of a turn with telemetry off, on over the no-op API, on over the SDK."""
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )
        from opentelemetry.trace import NoOpTracerProvider
    except ImportError as exc:
        res.skip("otel: turn with tracing", f"needs opentelemetry-sdk (dev extra): {exc}")
        return
    from contextlib import AsyncExitStack

    from bench.session import manager
    from sessions.telemetry import Telemetry

    exporter = InMemorySpanExporter()
    sdk = TracerProvider()
    sdk.add_span_processor(SimpleSpanProcessor(exporter))
    modes: dict[str, Any] = {
        "off": False,
        "API, no SDK": Telemetry(NoOpTracerProvider()),
        "SDK, recorded": Telemetry(sdk),
    }
    n = ctx.n(2_000, 60)
    samples: dict[str, list[float]] = {name: [] for name in modes}
    async with AsyncExitStack() as stack:
        sessions: dict[str, Session] = {}
        for name, tel in modes.items():
            m = await stack.enter_async_context(manager(telemetry=tel))
            sessions[name] = await m.get_or_create("bench")
        for i in range(n + 50):
            for name, session in sessions.items():
                t0 = _perf()
                result = await session.send(f"hello {i}")
                t1 = _perf()
                if not result.ok:
                    raise RuntimeError(f"turn failed ({name}): {result.error!r}")
                if i >= 50:  # warm-up
                    samples[name].append(t1 - t0)
            if i % 100 == 0:
                exporter.clear()
    stats = {name: Stats.of(s) for name, s in samples.items()}
    for name, st in stats.items():
        res.add_latency(f"otel: turn, tracing {name}", st)
    off = stats["off"].p50
    for name in ("API, no SDK", "SDK, recorded"):
        added = (stats[name].p50 - off) / 1000
        res.add(f"otel: p50 added per turn, {name}", added, "µs")
    sdk.shutdown()
