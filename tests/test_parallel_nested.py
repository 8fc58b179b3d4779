"""Nested parallel branches and the engine's hooks inside branches: a fan-out inside a
branch runs and joins inside it (ids ``a/x``), its overlays chain on the outer branch's;
``on_enter`` and ``on_step`` are called for every branch visit with the branch known;
node events and log lines name the branch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio

from engine import (
    Engine,
    HandlerRegistry,
    Node,
    NodeCompleted,
    NodeFailed,
    NodeRecord,
    NodeRetrying,
    NodeStarted,
    StructlogObserver,
    current_branch,
    load_graph,
)
from engine.errors import JoinError, TransientAdapterError
from engine.testing import RecordingObserver

from .test_parallel import hang, refusal

Ctx = Mapping[str, Any]

NESTED = """digraph n {
  start [shape=Mdiamond]
  f1 [shape=component]
  a  [handler=work]
  f2 [shape=component]
  x  [handler=work]
  y  [handler=work]
  j2 [shape=tripleoctagon merge=list]
  after [handler=work]
  b  [handler=work]
  j1 [shape=tripleoctagon]
  done [shape=Msquare]
  start -> f1
  f1 -> a -> f2
  f2 -> x -> j2
  f2 -> y -> j2
  j2 -> after -> j1
  f1 -> b -> j1
  j1 -> done
}"""


class Both:
    """``work``: x and y wait for each other (proves the inner branches overlap), every
    node notes the branch it ran in, ``after`` reads what the inner join merged."""

    def __init__(self) -> None:
        self.arrived = 0
        self.both_in = anyio.Event()
        self.seen: dict[str, str | None] = {}
        self.merged: Any = None

    async def __call__(self, node: Node, ctx: Ctx) -> dict[str, Any]:
        self.seen[node.id] = current_branch()
        if node.id in ("x", "y"):
            self.arrived += 1
            if self.arrived == 2:
                self.both_in.set()
            await self.both_in.wait()
            return {"inner": node.id, "base_seen": ctx.get("base")}
        if node.id == "after":
            self.merged = ctx.get("inner")
            return {"from_a": ctx.get("base_seen")}
        return {f"out.{node.id}": True}


class Lines:
    """A structlog-shaped logger keeping each line's fields."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def _line(self, event: str, **fields: Any) -> None:
        self.lines.append({"event": event, **fields})

    info = error = warning = debug = _line


def engine_with(work: Any) -> Engine:
    reg = HandlerRegistry()
    reg.register("work", work)
    return Engine(reg)


async def test_a_fan_out_inside_a_branch_runs_and_joins_inside_it() -> None:
    work = Both()
    with anyio.fail_after(5):  # a deadlock guard, not a speed assertion
        result = await engine_with(work).run(load_graph(NESTED), {"base": "outer"})
    assert result.ok, result.error
    assert [(r.node_id, r.branch) for r in result.trace] == [
        ("start", None),
        ("f1", None),
        ("a", "a"),
        ("f2", "a"),
        ("x", "a/x"),
        ("y", "a/y"),
        ("j2", "a"),
        ("after", "a"),
        ("b", "b"),
        ("j1", None),
        ("done", None),
    ]
    assert work.seen == {"a": "a", "x": "a/x", "y": "a/y", "after": "a", "b": "b"}
    # The inner join merged into branch a's layer (after read it), then a's into the run.
    assert work.merged == ["x", "y"]
    ctx = result.context
    assert ctx["inner"] == ["x", "y"] and ctx["base_seen"] == ["outer", "outer"]
    assert ctx["from_a"] == ["outer", "outer"] and ctx["out.b"] is True
    assert current_branch() is None  # nothing leaks out of the branches' tasks


async def test_a_failing_inner_branch_fails_the_inner_join_and_so_the_outer() -> None:
    cancelled: list[str] = []

    async def work(node: Node, ctx: Ctx) -> None:
        if node.id == "y":
            raise RuntimeError("y broke")
        if node.id in ("x", "b"):
            await hang(node.id, cancelled)

    with anyio.fail_after(5):
        result = await engine_with(work).run(load_graph(NESTED))
    assert isinstance(result.error, JoinError)
    assert (result.error.node_id, result.error.branches) == ("j1", ("a",))
    assert "branch 'a' failed" in str(result.error) and "'a/y' failed" in str(result.error)
    assert sorted(cancelled) == ["b", "x"]  # the inner sibling and the outer one
    assert ("y", "a/y", "fail") in [(r.node_id, r.branch, r.status) for r in result.trace]


def test_a_fan_out_leading_back_into_itself_is_refused() -> None:
    src = """digraph t { start [shape=Mdiamond]; f [shape=component]; j [shape=tripleoctagon]
      done [shape=Msquare]; start -> f; f -> a -> j; f -> b -> f; j -> done }"""
    assert "node 'f': fan-out branch 'b' leads back into fan-out 'f'" in refusal(src)


def test_an_inner_fan_out_without_a_fan_in_is_reported_on_itself() -> None:
    src = """digraph t { start [shape=Mdiamond]; f1 [shape=component]; f2 [shape=component]
      j [shape=tripleoctagon]; done [shape=Msquare]
      start -> f1; f1 -> a -> j; f1 -> f2; f2 -> x -> done; f2 -> y -> done; j -> done }"""
    text = refusal(src)
    assert "<string>:1:59: error: node 'f2': fan-out branch 'x' escapes to exit 'done'" in text
    assert "node 'f1': fan-out branch 'f2' reaches fan-out 'f2', which cannot join" in text


def test_a_branch_whose_retry_target_leaves_it_is_refused() -> None:
    """A failing node's retry target is a way out of the branch like an edge."""
    src = """digraph t { start [shape=Mdiamond]; f [shape=component]; j [shape=tripleoctagon]
      done [shape=Msquare]; b [retry_target=recover]
      start -> f; f -> a -> j; f -> b -> j; j -> done; recover -> done }"""
    assert "node 'f': fan-out branch 'b' escapes to exit 'done'" in refusal(src)


async def test_hooks_are_called_for_branch_visits_with_the_branch_known() -> None:
    entered: list[tuple[str, str | None]] = []
    stepped: list[tuple[str, str | None, str | None]] = []

    def on_enter(node: Node) -> None:
        entered.append((node.id, current_branch()))

    async def on_step(record: NodeRecord, nxt: str | None, ctx: Ctx) -> None:
        stepped.append((record.node_id, record.branch, nxt))

    with anyio.fail_after(5):
        result = await engine_with(Both()).run(
            load_graph(NESTED), on_enter=on_enter, on_step=on_step
        )
    assert result.ok, result.error
    assert sorted(entered, key=str) == sorted(
        ((r.node_id, r.branch) for r in result.trace), key=str
    )
    by_node = {s[0]: s for s in stepped}
    assert len(stepped) == len(result.trace)
    assert by_node["x"] == ("x", "a/x", "j2")  # a branch's last step names its fan-in
    assert by_node["f2"] == ("f2", "a", "j2")  # the fan-out's step comes after its join
    assert by_node["after"] == ("after", "a", "j1")
    assert by_node["f1"] == ("f1", None, "j1")
    # The fan-out's step is reported once its branches are done (checkpoints rely on it).
    assert stepped.index(by_node["f1"]) > max(stepped.index(by_node[n]) for n in "abxy")


async def test_every_node_event_and_log_line_names_its_branch() -> None:
    calls: dict[str, int] = {}
    a_done = anyio.Event()

    async def work(node: Node, ctx: Ctx) -> None:
        calls[node.id] = calls.get(node.id, 0) + 1
        if node.id == "b":
            await a_done.wait()  # b fails only once a retried and finished
            raise RuntimeError("b broke")
        if calls[node.id] == 1:
            raise TransientAdapterError("llm", "try again")
        a_done.set()

    src = """digraph t { start [shape=Mdiamond]; f [shape=component]
      a [handler=work max_retries=1 retry.initial_delay=1ms]; b [handler=work]
      j [shape=tripleoctagon]; done [shape=Msquare]
      start -> f; f -> a -> j; f -> b -> j; j -> done }"""
    obs, logger = RecordingObserver(), Lines()
    result = await engine_with(work).run(
        load_graph(src), observers=[obs, StructlogObserver(logger)]
    )
    assert isinstance(result.error, JoinError)
    branch_of = {
        (type(e).__name__, e.node_id): e.branch
        for e in obs.events
        if isinstance(e, NodeStarted | NodeCompleted | NodeFailed | NodeRetrying)
    }
    assert branch_of[("NodeRetrying", "a")] == "a"
    assert branch_of[("NodeFailed", "b")] == "b"
    assert branch_of[("NodeStarted", "f")] is None
    assert branch_of[("NodeCompleted", "f")] is None
    nodes = {(e["node"], e.get("branch")) for e in logger.lines if "node" in e}
    assert {("a", "a"), ("b", "b"), ("f", None)} <= nodes
