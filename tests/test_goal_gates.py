"""Goal gates: a ``goal_gate=true`` node must have succeeded before the run may exit;
otherwise the run goes to its ``retry_target`` (at most ``max_retries`` times), else it
fails naming the gate."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine import Engine, HandlerRegistry, Node, Outcome, load_graph
from engine.errors import GoalGateUnmet

Ctx = Mapping[str, Any]

GRAPH = """digraph t {
  start [shape=Mdiamond]
  check [handler=check goal_gate=true retry_target=fix %s]
  fix [handler=fix]
  done [shape=Msquare]
  start -> check
  check -> done [condition="outcome=fail"]
  check -> done
  fix -> check
}"""


def engine(passes_on: int) -> tuple[Engine, list[str]]:
    visits: list[str] = []
    reg = HandlerRegistry()

    def check(node: Node, ctx: Ctx) -> Outcome:
        visits.append("check")
        ok = visits.count("check") >= passes_on
        return Outcome("success" if ok else "fail", reason=None if ok else "not yet")

    def fix(node: Node, ctx: Ctx) -> None:
        visits.append("fix")

    reg.register("check", check)
    reg.register("fix", fix)
    return Engine(reg), visits


async def test_unmet_gate_sends_the_run_to_its_retry_target_until_it_passes() -> None:
    eng, visits = engine(passes_on=3)
    result = await eng.run(load_graph(GRAPH % ""))
    assert result.ok, result.error
    assert visits == ["check", "fix", "check", "fix", "check"]
    assert [r.node_id for r in result.trace][-1] == "done"


async def test_gate_out_of_retries_fails_the_run_naming_the_gate() -> None:
    eng, visits = engine(passes_on=10)
    result = await eng.run(load_graph(GRAPH % "max_retries=1"))
    assert result.status == "fail"
    assert isinstance(result.error, GoalGateUnmet)
    assert result.error.node_id == "check"
    assert str(result.error) == "goal gate 'check' not met at exit 'done' (after 1 retries)"
    assert visits == ["check", "fix", "check"]


async def test_gate_never_visited_fails_at_the_exit() -> None:
    src = """digraph t { start [shape=Mdiamond]; gate [goal_gate=true]; done [shape=Msquare]
      start -> done [condition="outcome=success"]; start -> gate; gate -> done }"""
    reg = HandlerRegistry()
    reg.register("gate", lambda node, ctx: None)
    result = await Engine(reg).run(load_graph(src))
    assert isinstance(result.error, GoalGateUnmet)
    assert result.error.exit_id == "done"


async def test_met_gate_exits_normally() -> None:
    eng, visits = engine(passes_on=1)
    result = await eng.run(load_graph(GRAPH % ""))
    assert result.ok and visits == ["check"]
