"""The same 6-node turn in LangGraph, pydantic-graph, Burr and turngraph, side by side.

Every implementation runs one conversation of ``n`` turns of the
:mod:`bench.peers_mock` workload (mock adapters, two messages appended per turn) and is
timed per turn, so growth with history shows as the ratio of the last 50 turns' mean to
the first 50's.  turngraph is measured twice: the engine alone with the same mock
handlers, and a full session turn (built-in offline handlers) committing to a SQLite
store, the like-for-like rival of LangGraph's ``SqliteSaver``.

Target (issue 4): our SQLite session turn ≥ 30× faster than LangGraph + SqliteSaver
(ratio of medians).  Reported beside it (issue 17), like for like: LangGraph with
``durability="exit"`` (one checkpoint write per turn, as turngraph commits once per
turn) and Burr with its ``SQLitePersister``.  A peer that is not installed is
skipped with the reason.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from importlib import metadata
from pathlib import Path
from typing import Any

import anyio

from bench import peers_mock as mock
from bench.engine_turn import CHAIN, turn_graph
from bench.harness import (
    BenchContext,
    BenchResult,
    Stats,
    at_least,
    bench_env,
    growth_ratio,
    settle,
)
from bench.peers_impl import PEERS, Factory, Turn
from engine.graph import Node
from engine.registry import HandlerRegistry

NAME = "peers"
TITLE = "the same 6-node turn: LangGraph, pydantic-graph, Burr vs turngraph"

OURS_ENGINE = "turngraph engine (mock handlers)"
OURS_SQLITE = "turngraph session + SQLite store"
OURS_SQLITE_NORMAL = "turngraph session + SQLite (synchronous=NORMAL)"
OURS_MEMORY = "turngraph session + memory store"
LG_SQLITE = "LangGraph + SqliteSaver"
LG_SQLITE_EXIT = 'LangGraph + SqliteSaver, durability="exit"'
BURR_SQLITE = "Burr + SQLitePersister"

_DISTS = {
    "LangGraph (no checkpointer)": "langgraph",
    "LangGraph + InMemorySaver": "langgraph",
    LG_SQLITE: "langgraph-checkpoint-sqlite",
    LG_SQLITE_EXIT: "langgraph-checkpoint-sqlite",
    "pydantic-graph": "pydantic-graph",
    "Burr": "apache-burr",
    BURR_SQLITE: "apache-burr",
    OURS_ENGINE: "turngraph",
    OURS_SQLITE: "turngraph",
    OURS_SQLITE_NORMAL: "turngraph",
    OURS_MEMORY: "turngraph",
    "LangGraph async + AsyncSqliteSaver": "langgraph-checkpoint-sqlite",
}


def mock_handlers() -> dict[str, Callable[[Node, Mapping[str, Any]], Any]]:
    """The mock workload's six steps as turngraph handlers, returning deltas like any
    handler; the nodes with no step (start, exit) get a no-op."""

    def classify(node: Node, c: Mapping[str, Any]) -> dict[str, Any]:
        return {"turn.intent": mock.classify(c["session.input"])}

    def recall(node: Node, c: Mapping[str, Any]) -> dict[str, Any]:
        return {"turn.recalled": mock.recall(c["session.input"])}

    def llm_call(node: Node, c: Mapping[str, Any]) -> dict[str, Any]:
        return {"turn.reply": mock.llm(c["session.input"], c["turn.intent"], c["turn.recalled"])}

    def format_(node: Node, c: Mapping[str, Any]) -> dict[str, Any]:
        return {"reply": mock.format_reply(c["turn.reply"])}

    def update_memory(node: Node, c: Mapping[str, Any]) -> dict[str, Any]:
        return {"turn.messages": mock.new_messages(c["session.input"], c["reply"])}

    def nothing(node: Node, c: Mapping[str, Any]) -> None:
        return None

    steps = {"classify": classify, "recall": recall, "llm_call": llm_call, "format": format_}
    steps["update_memory"] = update_memory
    return {name: steps.get(name, nothing) for name in (*CHAIN, "exit")}


def mock_registry() -> HandlerRegistry:
    """The mock workload for the engine alone (the driver keeps the history)."""
    return HandlerRegistry(mock_handlers())


def session_mock_registry() -> HandlerRegistry:
    """The mock workload as session handlers: the same six steps the peers run.

    A copy of the built-in registry (the manager's heartbeat graph needs its handlers)
    with the turn's handlers replaced.  ``update_memory`` does nothing here: the session
    itself appends the user and reply messages at commit, which is what the peers'
    ``update_memory`` step does in state (a ``turn.messages`` delta would add them twice).
    """
    from handlers import build_registry

    reg = build_registry().copy()
    handlers = mock_handlers()
    handlers["update_memory"] = handlers["start"]  # the no-op
    for name, fn in handlers.items():
        reg.register(name, fn, replace=True)
    return reg


async def _mock_session_turn(stack: AsyncExitStack, url: str) -> Turn:
    from bench.session import session_turn

    reg = session_mock_registry()
    return await session_turn(stack, url, registry=reg, turn_graph=turn_graph(reg))


async def make_ours_engine(stack: AsyncExitStack, tmp: Path) -> Turn:
    """turngraph's engine alone; the driver keeps the history, as a Session would."""
    from engine import Engine

    reg = mock_registry()
    graph = turn_graph(reg)
    engine = Engine(reg)
    history: list[dict[str, Any]] = []

    async def turn(text: str) -> str:
        result = await engine.run(graph, {"session.input": text, "session.history": history})
        history.extend(result.context["turn.messages"])
        return str(result.context["reply"])

    return turn


async def make_ours_sqlite(stack: AsyncExitStack, tmp: Path) -> Turn:
    """A turngraph session turn (mock handlers) committing to SQLite, fsync per turn."""
    return await _mock_session_turn(stack, f"sqlite:///{tmp / 'turngraph.db'}")


async def make_ours_sqlite_normal(stack: AsyncExitStack, tmp: Path) -> Turn:
    """The same, with ``synchronous=NORMAL``: survives kill -9, not power loss."""
    return await _mock_session_turn(stack, f"sqlite:///{tmp / 'turngraph.db'}?synchronous=NORMAL")


async def make_ours_memory(stack: AsyncExitStack, tmp: Path) -> Turn:
    """A turngraph session turn (mock handlers) with the in-memory store."""
    return await _mock_session_turn(stack, "memory:")


def implementations() -> dict[str, Factory]:
    """Label → factory, ours first."""
    ours: dict[str, Factory] = {
        OURS_ENGINE: make_ours_engine,
        OURS_MEMORY: make_ours_memory,
        OURS_SQLITE: make_ours_sqlite,
        OURS_SQLITE_NORMAL: make_ours_sqlite_normal,
    }
    return {**ours, **{label: f for label, (_, f) in PEERS.items()}}


def version(label: str) -> str:
    """The installed version of the distribution behind ``label`` ("" if unknown)."""
    try:
        return metadata.version(_DISTS.get(label, label))
    except metadata.PackageNotFoundError:
        return ""


async def _time_turns(turn: Turn, n: int, warmup: int) -> list[int]:
    for i in range(warmup):
        await turn(mock.user_text(i))
    settle()
    clock = time.perf_counter_ns
    out: list[int] = []
    for i in range(warmup, warmup + n):
        text = mock.user_text(i)
        t0 = clock()
        await turn(text)
        out.append(clock() - t0)
    return out


async def _one(label: str, factory: Factory, n: int, warmup: int) -> list[int] | str:
    """Samples for one implementation, or why it could not run."""
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as d:
        async with AsyncExitStack() as stack:
            try:
                turn = await factory(stack, Path(d))
                return await _time_turns(turn, n, warmup)
            except ImportError as exc:
                return f"not available: cannot import {exc.name or exc}"
            except Exception as exc:  # a module under test broken, an API change
                return f"failed: {type(exc).__name__}: {exc}"


async def _main(ctx: BenchContext, res: BenchResult) -> None:
    n, warm = ctx.n(300, 6), ctx.n(10, 1)
    stats: dict[str, tuple[Stats, float]] = {}
    impls = implementations()
    with ctx.progress("implementations", len(impls)) as advance:
        for label, factory in impls.items():
            got = await _one(label, factory, n, warm)
            advance(1)
            if isinstance(got, str):
                res.skip(f"{label} p50", got)
                continue
            stats[label] = (Stats.of(got), growth_ratio(got, 50))
            res.add(f"{label} p50", stats[label][0].p50 / 1e3, "µs")
    res.params.update(turns=n, warmup=warm)
    _summarise(res, stats)
    res.notes.append(
        "every row runs the same mock workload (bench/peers_mock.py); turngraph sessions "
        "commit one SQLite transaction per turn, LangGraph's SqliteSaver one per step "
        '(durability="exit": one per turn), Burr\'s SQLitePersister one per step; '
        "turngraph's and LangGraph's SQLite rows named without 'NORMAL' run WAL with "
        "synchronous=FULL, Burr's its default rollback journal"
    )
    res.notes.append("LangGraph without a checkpointer keeps no history between turns")


def _summarise(res: BenchResult, stats: dict[str, tuple[Stats, float]]) -> None:
    base = OURS_SQLITE if OURS_SQLITE in stats else OURS_ENGINE
    ratio_col = f"× {base}"
    for label, (s, growth) in stats.items():
        res.comparison.append(
            {
                "implementation": label,
                "version": version(label),
                "p50 µs": s.p50 / 1e3,
                "p99 µs": s.p99 / 1e3,
                "mean µs": s.mean / 1e3,
                "last/first 50": growth,
                ratio_col: s.p50 / stats[base][0].p50 if base in stats else None,
            }
        )
    for peer, what, target in (
        (LG_SQLITE, "LangGraph + SqliteSaver (per step)", at_least(30)),
        (LG_SQLITE_EXIT, 'LangGraph + SqliteSaver durability="exit" (like for like)', None),
        (BURR_SQLITE, "Burr + SQLitePersister", None),
    ):
        name = f"speedup: our SQLite session turn vs {what} (p50)"
        if OURS_SQLITE in stats and peer in stats:
            res.add(name, stats[peer][0].p50 / stats[OURS_SQLITE][0].p50, "×", target)
        else:
            missing = [k for k in (OURS_SQLITE, peer) if k not in stats]
            res.skip(name, f"not measured: {', '.join(missing)} unavailable")


def run(ctx: BenchContext) -> BenchResult:
    """Run every implementation's conversation and compare."""
    res = BenchResult(NAME, TITLE)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as d, bench_env(Path(d)):
        anyio.run(_main, ctx, res)
    res.seconds = time.perf_counter() - t0
    return res
