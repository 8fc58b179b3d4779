"""Parallel branches: a fan-out runs its branches concurrently on copy-on-write contexts,
the fan-in joins them under its policy and merges their writes; bad structure is refused
at load time."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from engine import Engine, GraphValidationError, HandlerRegistry, Node, NodeStarted, load_graph
from engine.errors import JoinError, JoinTimeout, MergeConflict
from engine.events import TextDelta, current_emitter
from engine.testing import RecordingObserver

Ctx = Mapping[str, Any]


def fan_graph(join: str = "", merge: str = "", extra: str = "", fan_in: str = "") -> str:
    attrs = " ".join(
        p for p in (join and f'join="{join}"', merge and f"merge={merge}", fan_in) if p
    )
    return f"""digraph t {{
      start [shape=Mdiamond]
      fan [shape=component {extra}]
      a [handler=work]
      b [handler=work]
      c [handler=work]
      join [shape=tripleoctagon {attrs}]
      done [shape=Msquare]
      start -> fan
      fan -> a
      fan -> b
      fan -> c
      a -> join
      b -> join
      c -> join
      join -> done
    }}"""


class Barrier:
    """Every branch waits here until all ``n`` have arrived: proves they ran at once."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.arrived = 0
        self.all_in = anyio.Event()
        self.most_at_once = 0
        self.running = 0

    async def __call__(self, node: Node, ctx: Ctx) -> dict[str, Any]:
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        self.arrived += 1
        if self.arrived == self.n:
            self.all_in.set()
        await self.all_in.wait()
        await anyio.sleep(0.05)
        self.running -= 1
        return {f"out.{node.id}": node.id}


def refusal(src: str) -> str:
    """The text of the ``GraphValidationError`` loading ``src`` raises."""
    with pytest.raises(GraphValidationError) as info:
        load_graph(src)
    return str(info.value)


async def hang(node_id: str, cancelled: list[str]) -> None:
    """Wait until cancelled; then note ``node_id`` in ``cancelled``."""
    try:
        await anyio.sleep(10)
    except anyio.get_cancelled_exc_class():
        cancelled.append(node_id)
        raise


def engine_with(work: Any, **more: Any) -> Engine:
    reg = HandlerRegistry()
    reg.register("work", work)
    for name, fn in more.items():
        reg.register(name, fn)
    return Engine(reg)


async def test_three_branches_run_at_once_and_join() -> None:
    barrier = Barrier(3)
    obs = RecordingObserver()
    engine = engine_with(barrier)
    with anyio.fail_after(5):  # a deadlock guard, not a speed assertion
        result = await engine.run(load_graph(fan_graph()), observers=[obs])
    assert result.ok, result.error
    assert barrier.most_at_once == 3
    assert {k: v for k, v in result.context.items() if k.startswith("out.")} == {
        "out.a": "a",
        "out.b": "b",
        "out.c": "c",
    }
    assert [(r.node_id, r.branch) for r in result.trace] == [
        ("start", None),
        ("fan", None),
        ("a", "a"),
        ("b", "b"),
        ("c", "c"),
        ("join", None),
        ("done", None),
    ]
    assert result.trace[2].to_dict()["branch"] == "a"
    started = [e for e in obs.events if isinstance(e, NodeStarted)]
    assert {(e.node_id, e.branch) for e in started} >= {("a", "a"), ("b", "b"), ("c", "c")}


async def test_max_parallel_limits_branches_at_once() -> None:
    running = [0, 0]

    async def work(node: Node, ctx: Ctx) -> None:
        running[0] += 1
        running[1] = max(running[1], running[0])
        await anyio.sleep(0.01)
        running[0] -= 1

    result = await engine_with(work).run(load_graph(fan_graph(extra="max_parallel=1")))
    assert result.ok, result.error
    assert running[1] == 1


async def test_branches_write_to_their_own_overlay() -> None:
    seen: dict[str, Any] = {}

    async def work(node: Node, ctx: Ctx) -> dict[str, Any]:
        await anyio.lowlevel.checkpoint()
        seen[node.id] = ctx.get("shared")
        return {"shared": node.id} if node.id == "a" else {}

    result = await engine_with(work).run(load_graph(fan_graph()), {"shared": "base"})
    assert result.ok, result.error
    assert seen == {"a": "base", "b": "base", "c": "base"}  # a's write is a's alone
    assert result.context["shared"] == "a"


async def test_a_failing_branch_fails_wait_all_and_cancels_the_others() -> None:
    cancelled: list[str] = []

    async def work(node: Node, ctx: Ctx) -> None:
        if node.id == "b":
            raise RuntimeError("boom")
        await hang(node.id, cancelled)

    with anyio.fail_after(5):
        result = await engine_with(work).run(load_graph(fan_graph()))
    assert result.status == "fail"
    assert isinstance(result.error, JoinError)
    assert result.error.node_id == "join"
    assert result.error.branches == ("b",)
    assert "branch 'b' failed" in str(result.error) and "boom" in str(result.error)
    assert sorted(cancelled) == ["a", "c"]


async def test_first_success_takes_the_winner_and_cancels_the_rest() -> None:
    async def work(node: Node, ctx: Ctx) -> dict[str, Any]:
        if node.id != "b":
            await anyio.sleep(10)
        return {"answer": node.id}

    with anyio.fail_after(5):
        result = await engine_with(work).run(load_graph(fan_graph(join="first_success")))
    assert result.ok, result.error
    assert result.context["answer"] == "b"


async def test_quorum_joins_once_n_branches_succeeded() -> None:
    async def work(node: Node, ctx: Ctx) -> dict[str, Any]:
        if node.id == "c":
            await anyio.sleep(10)
        return {f"got.{node.id}": True}

    with anyio.fail_after(5):
        result = await engine_with(work).run(load_graph(fan_graph(join="quorum=2")))
    assert result.ok, result.error
    assert result.context.get("got.a") and result.context.get("got.b")
    assert "got.c" not in result.context


async def test_quorum_fails_when_too_many_branches_fail() -> None:
    async def work(node: Node, ctx: Ctx) -> None:
        if node.id != "a":
            raise RuntimeError(f"no {node.id}")

    result = await engine_with(work).run(load_graph(fan_graph(join="quorum=2")))
    assert isinstance(result.error, JoinError)
    assert result.error.policy == "quorum=2"


async def test_join_timeout_names_the_late_branches() -> None:
    async def work(node: Node, ctx: Ctx) -> None:
        if node.id == "c":
            await anyio.sleep(10)

    with anyio.fail_after(5):
        result = await engine_with(work).run(load_graph(fan_graph(fan_in="timeout=50ms")))
    assert isinstance(result.error, JoinTimeout)
    assert result.error.branches == ("c",)
    assert "timed out after 0.05s" in str(result.error)


async def test_conflicting_writes_without_merge_name_both_branches() -> None:
    async def work(node: Node, ctx: Ctx) -> dict[str, Any]:
        return {"reply": node.id}

    result = await engine_with(work).run(load_graph(fan_graph()))
    assert isinstance(result.error, MergeConflict)
    assert result.error.key == "reply"
    assert result.error.branches == ("a", "b")


@pytest.mark.parametrize(("merge", "expected"), [("last_writer", "c"), ("list", ["a", "b", "c"])])
async def test_declared_merge_combines_writes_in_branch_order(merge: str, expected: Any) -> None:
    async def work(node: Node, ctx: Ctx) -> dict[str, Any]:
        await anyio.sleep(0.03 if node.id == "a" else 0)  # a finishes last
        return {"reply": node.id}

    result = await engine_with(work).run(load_graph(fan_graph(merge=merge)))
    assert result.ok, result.error
    assert result.context["reply"] == expected


def test_fan_out_without_fan_in_is_refused_naming_the_node() -> None:
    src = """digraph t { start [shape=Mdiamond]; fan [shape=component]
      done [shape=Msquare]; start -> fan; fan -> a; fan -> b; a -> done; b -> done }"""
    text = refusal(src)
    assert "node 'fan': fan-out branch 'a' escapes to exit 'done'" in text
    assert "branch 'b' escapes" in text


def test_a_nested_fan_out_sharing_the_outer_fan_in_and_a_bad_join_are_refused() -> None:
    src = """digraph t { start [shape=Mdiamond]; f1 [shape=component]; f2 [shape=component]
      j [shape=tripleoctagon join="most"]; done [shape=Msquare]
      start -> f1; f1 -> a; f1 -> f2; f2 -> b; b -> j; a -> j; j -> done }"""
    text = refusal(src)
    assert (
        "<string>:1:37: error: node 'f1': fan-out nests fan-out 'f2', which joins at 'j' too: "
        "a nested fan-out needs a fan-in of its own inside the branch"
    ) in text
    assert "node 'j': fan-in join 'most'" in text


async def test_a_handler_streaming_in_a_branch_names_its_own_node() -> None:
    barrier = Barrier(3)

    async def work(node: Node, ctx: Ctx) -> dict[str, Any]:
        await barrier(node, ctx)  # all three branches are inside a handler at once
        emitter = current_emitter()
        assert emitter is not None
        emitter.text(node.id)
        return {f"out.{node.id}": 1}

    obs = RecordingObserver()
    with anyio.fail_after(5):
        result = await engine_with(work).run(load_graph(fan_graph()), observers=[obs])
    assert result.ok, result.error
    assert sorted((e.node_id, e.text) for e in obs.of_type(TextDelta)) == [
        ("a", "a"),
        ("b", "b"),
        ("c", "c"),
    ]


async def test_a_failed_join_goes_to_the_fan_outs_retry_target() -> None:
    async def work(node: Node, ctx: Ctx) -> None:
        if node.id == "a":
            raise RuntimeError("a broke")

    src = fan_graph(extra="retry_target=recover").replace(
        "join -> done", "join -> done\n      recover -> done"
    )
    result = await engine_with(work, recover=lambda node, ctx: {"recovered": True}).run(
        load_graph(src)
    )
    assert result.ok, result.error
    assert result.context["recovered"] is True
    assert result.context["node.fan.status"] == "fail"
    assert [r.node_id for r in result.trace][-2:] == ["recover", "done"]
