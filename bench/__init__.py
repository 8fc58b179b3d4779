"""turngraph's benchmarks: ``python -m bench [NAME ...] [--quick] [--json PATH]``.

Each benchmark is a module with ``NAME``, ``TITLE`` and ``run(ctx) -> BenchResult``
(see :mod:`bench.harness`).  Benchmarks measure and report; they never assert: a missed
target is shown in the table and recorded in the JSON, and the exit code stays 0.
Tests only check that each benchmark runs and returns well-formed results.
"""

from __future__ import annotations

__all__ = ["BENCHMARKS"]

BENCHMARKS: tuple[str, ...] = (
    "engine_turn",
    "parallel",
    "load",
    "dot_read",
    "cli",
    "session",
    "store",
    "recall_memory",
    "peers",
    "llm_adapters",
    "concurrent_streams",
    "serve",
    "viewer",
    "search",
    "ray_hop",
    "throughput",
)
"""Benchmark module names under ``bench``, in the order ``python -m bench`` runs them."""
