"""Timeouts are real: a node ``timeout`` bounds a sync handler too, and a whole turn has a
deadline (``Limits.turn_timeout``, the graph's ``turn_timeout``) that leaves the session
idle and usable.

Each test wraps its run in a generous ``fail_after`` guard, so old code (which hung, or
ran the handler to the end) fails instead of hanging; no test asserts a duration.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest

from engine import Engine, HandlerRegistry, HandlerTimeout, Node, TurnTimeout, load_graph
from sessions import Limits, SessionManager
from sessions.store.sqlite import SQLiteStore

GUARD = 30.0  # seconds: far above any deadline here; only stops old code hanging

DOT = """digraph t {{ {graph}
  start [shape=Mdiamond]; work [handler=work {node}]; done [shape=Msquare];
  start -> work -> done;
}}"""


def _graph(node: str = "", graph: str = "") -> Any:
    return load_graph(DOT.format(node=node, graph=graph))


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set at the end of the test, so an abandoned worker thread ends too."""
    event = threading.Event()
    yield event
    event.set()


def _registry(work: Any) -> HandlerRegistry:
    return HandlerRegistry({"work": work})


async def test_node_timeout_bounds_a_sync_handler(release: threading.Event) -> None:
    """A plain (sync) handler that blocks past its node's timeout fails the node with
    HandlerTimeout: it ran in a worker thread, so the event loop stayed free."""

    def work(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
        release.wait(GUARD)  # blocks its thread, as a slow sync call would
        return {"late": True}

    engine = Engine(_registry(work))
    loop_ticks = 0

    async def tick() -> None:
        nonlocal loop_ticks
        while True:
            await anyio.sleep(0.005)
            loop_ticks += 1

    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(tick)
            result = await engine.run(_graph(node="timeout=100ms"))
            tg.cancel_scope.cancel()
    assert result.status == "fail" and isinstance(result.error, HandlerTimeout)
    assert result.error.node_id == "work" and "late" not in result.context
    assert loop_ticks > 0  # the loop ran while the handler blocked


async def test_sync_handler_without_timeout_still_runs_inline() -> None:
    """No timeout, no thread: a sync handler runs on the event loop's thread (cheap)."""
    seen: list[int] = []

    def work(node: Node, ctx: Mapping[str, Any]) -> None:
        seen.append(threading.get_ident())

    await Engine(_registry(work)).run(_graph())
    assert seen == [threading.get_ident()]


async def test_graph_turn_timeout_fails_a_run_that_never_ends() -> None:
    """The graph's ``turn_timeout`` bounds a run whose async handler never returns."""

    async def work(node: Node, ctx: Mapping[str, Any]) -> None:
        await anyio.sleep_forever()

    with anyio.fail_after(GUARD):
        result = await Engine(_registry(work)).run(_graph(graph='graph [turn_timeout="100ms"];'))
    assert result.status == "fail" and isinstance(result.error, TurnTimeout)
    assert result.error.node_id == "work" and result.error.timeout == pytest.approx(0.1)


async def test_turn_timeout_fails_a_run_an_inline_sync_handler_overran() -> None:
    """A plain handler with no ``timeout`` runs inline and cannot be interrupted; when it
    returns past the turn's deadline the run still fails with TurnTimeout (it used to
    succeed: the cancellation had no await left to land on)."""

    def work(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
        threading.Event().wait(0.3)  # blocks the loop's thread past the 50 ms deadline
        return {"late": True}

    result = await Engine(_registry(work)).run(_graph(graph='graph [turn_timeout="50ms"];'))
    assert result.status == "fail" and isinstance(result.error, TurnTimeout)


async def test_graph_turn_timeout_only_tightens_the_callers_bound() -> None:
    """The shorter of the caller's ``time_limit`` and the graph's ``turn_timeout`` wins."""

    async def work(node: Node, ctx: Mapping[str, Any]) -> None:
        await anyio.sleep_forever()

    engine = Engine(_registry(work))
    with anyio.fail_after(GUARD):
        result = await engine.run(_graph(graph='graph [turn_timeout="1h"];'), time_limit=0.1)
    assert isinstance(result.error, TurnTimeout) and result.error.timeout == pytest.approx(0.1)


def test_turn_timeout_is_a_typed_graph_attribute() -> None:
    """A ``turn_timeout`` that is not a duration is a validation error naming it."""
    from engine.errors import GraphValidationError

    with pytest.raises(GraphValidationError, match="turn_timeout"):
        _graph(graph="graph [turn_timeout=soon];")


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_session_turn_timeout_leaves_the_session_usable(kind: str, tmp_path: Path) -> None:
    """``Limits.turn_timeout``: an async handler that never returns fails its turn with
    TurnTimeout; the session is idle, the failed turn is stored, the next send works."""
    hang = {"on": True}

    async def work(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
        if hang["on"]:
            await anyio.sleep_forever()
        return {"reply": f"re: {ctx['session.input']}"}

    store: Any = "memory:"
    if kind == "sqlite":
        store = SQLiteStore(f"sqlite:///{tmp_path / 's.db'}", tmp_path / "s.db", secret=b"k")
    with anyio.fail_after(GUARD):
        async with SessionManager(
            store,
            registry=_registry(work),
            turn_graph=_graph(),
            limits=Limits(turn_timeout=0.1, compaction_threshold_tokens=None),
            store_secret=b"k",
        ) as m:
            s = await m.get_or_create("s1")
            result = await s.send("stuck")
            assert isinstance(result.error, TurnTimeout) and not result.ok
            assert s.phase == "idle" and not s.busy and s.turn_count == 1
            hang["on"] = False
            again = await s.send("free")
            assert again.ok and again.reply == "re: free" and s.turn_count == 2
            [first, _] = await s.traces()
            assert first.status == "fail" and "timed out" in (first.error or "")


def test_limits_refuse_a_nonpositive_turn_timeout() -> None:
    """``Limits.turn_timeout`` must be positive or None; the default bounds every turn."""
    with pytest.raises(ValueError, match="turn_timeout"):
        Limits(turn_timeout=0)
    assert Limits().turn_timeout == 600.0 and Limits(turn_timeout=None).turn_timeout is None
