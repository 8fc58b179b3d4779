"""Parallel branches failing: a raising branch under each join policy, a join timing
out, a quorum that can no longer (or never) be met.  Each branch the join gives up on
is cancelled cleanly: its cleanup, awaited in a shielded ``finally``, has run by the
time ``Engine.run`` returns."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio
import pytest

from engine import Engine, HandlerRegistry, Node, NodeRecord, load_graph
from engine.errors import JoinError, JoinTimeout

from .test_parallel import fan_graph, refusal

Ctx = Mapping[str, Any]


class Script:
    """``work`` for branches a, b, c: ``fail`` raise at once, ``win`` succeed once every
    failing branch has failed, ``hang`` wait for cancellation.  A cancelled branch
    awaits its cleanup shielded, then notes it in ``cleaned``."""

    def __init__(self, fail: str = "", win: str = "", hang: str = "") -> None:
        self.fail, self.win, self.hang = fail, win, hang
        self.failed = 0
        self.all_failed = anyio.Event()
        self.cleaned: list[str] = []
        if not fail:
            self.all_failed.set()

    async def __call__(self, node: Node, ctx: Ctx) -> dict[str, Any]:
        name = node.id
        if name in self.fail:
            self.failed += 1
            if self.failed == len(self.fail):
                self.all_failed.set()
            raise RuntimeError(f"{name} broke")
        if name in self.win:
            await self.all_failed.wait()
            return {f"won.{name}": True}
        try:
            await anyio.sleep(30)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.01)  # a cleanup that itself waits (closing a stream)
                self.cleaned.append(name)
        return {}


def run(script: Script, src: str) -> Any:
    reg = HandlerRegistry()
    reg.register("work", script)

    async def go() -> Any:
        with anyio.fail_after(10):  # a deadlock guard, not a speed assertion
            return await Engine(reg).run(load_graph(src))

    return anyio.run(go)


@pytest.mark.parametrize(
    ("join", "roles", "ok", "cleaned"),
    [
        ("wait_all", {"fail": "b", "hang": "ac"}, False, ["a", "c"]),
        ("first_success", {"fail": "b", "win": "c", "hang": "a"}, True, ["a"]),
        ("first_success", {"fail": "abc"}, False, []),
        ("quorum=2", {"fail": "ab", "hang": "c"}, False, ["c"]),
        ("quorum=2", {"fail": "a", "win": "bc"}, True, []),
    ],
    ids=[
        "wait_all-one-fails",
        "first_success-one-fails-one-wins",
        "first_success-all-fail",
        "quorum-unreachable",
        "quorum-met-despite-a-failure",
    ],
)
def test_a_raising_branch_under_each_policy(
    join: str, roles: dict[str, str], ok: bool, cleaned: list[str]
) -> None:
    """The join fails exactly when its policy can no longer be met; the branches still
    running then (or once it is met) are cancelled and their cleanup has run."""
    script = Script(**roles)
    result = run(script, fan_graph(join=join))
    assert result.ok is ok, result.error
    assert sorted(script.cleaned) == cleaned
    statuses = {r.node_id: r.status for r in result.trace if r.branch}
    assert all(statuses[b] == "fail" for b in script.fail)
    assert not any(r.node_id in script.hang for r in result.trace)  # cancelled: no record
    if ok:
        assert all(result.context[f"won.{b}"] for b in script.win)
        assert [r.node_id for r in result.trace][-2:] == ["join", "done"]
    else:
        assert isinstance(result.error, JoinError) and not isinstance(result.error, JoinTimeout)
        assert result.error.branches == tuple(sorted(script.fail))
        assert result.error.policy == join


def test_a_quorum_still_reachable_waits_until_the_timeout() -> None:
    """One failed, one won, one hangs: quorum=2 could still be met, so the join waits;
    the fan-in's timeout ends the wait and cancels the hanging branch."""
    script = Script(fail="a", win="b", hang="c")
    result = run(script, fan_graph(join="quorum=2", fan_in="timeout=100ms"))
    assert isinstance(result.error, JoinTimeout) and result.error.branches == ("c",)
    assert script.cleaned == ["c"]


def test_quorum_unreachable_says_how_many_could_still_succeed() -> None:
    result = run(Script(fail="ab", hang="c"), fan_graph(join="quorum=2"))
    assert str(result.error) == (
        "parallel join at node 'join' (join=quorum=2) failed: 2 must succeed, 1 of 3 could; "
        "branch 'a' failed: node 'a' (handler 'work') failed on attempt 1: "
        "RuntimeError: a broke"
    )


def test_a_quorum_larger_than_the_branches_is_refused_at_load() -> None:
    assert (
        "node 'fan': fan-out has 3 branches: its fan-in 'join' (quorum=4) can never join"
    ) in refusal(fan_graph(join="quorum=4"))


def test_a_join_timing_out_cancels_every_late_branch_cleanly() -> None:
    script = Script(win="a", hang="bc")
    result = run(script, fan_graph(fan_in="timeout=50ms"))
    assert isinstance(result.error, JoinTimeout)
    assert result.error.branches == ("b", "c")
    assert sorted(script.cleaned) == ["b", "c"]
    assert [(r.node_id, r.status) for r in result.trace if r.branch] == [("a", "success")]


def test_a_hook_raising_in_a_branch_propagates_as_itself() -> None:
    """Not wrapped in an exception group: the same as from a node outside branches."""

    class HookBroke(Exception):
        pass

    script = Script(win="abc")
    reg = HandlerRegistry()
    reg.register("work", script)

    async def on_step(record: NodeRecord, nxt: str | None, ctx: Ctx) -> None:
        if record.node_id == "b":
            raise HookBroke("b's step")

    async def go() -> None:
        await Engine(reg).run(load_graph(fan_graph(merge="last_writer")), on_step=on_step)

    with pytest.raises(HookBroke, match="b's step"):
        anyio.run(go)
