"""Human gates in the engine: ``shape=hexagon`` is ``wait.human``; a run pauses before
it, resumes from it with an answer, routes on the answer, and refuses gates that offer
no choice."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from engine import Engine, GatePaused, GraphValidationError, HandlerRegistry, Node, load_graph
from engine.events import RunPaused
from engine.gates import ANSWER_KEY
from engine.testing import RecordingObserver

GATE = """digraph g {
  start [shape=Mdiamond]; done [shape=Msquare]
  ask [shape=hexagon, label="Go on?" %s]
  work [handler=work]
  start -> ask
  ask -> work [label="Again"]
  ask -> done [label=stop]
  ask -> done [condition="outcome=fail", label=ignored]
  work -> ask
}"""


def _registry() -> HandlerRegistry:
    def work(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
        return {"count": int(ctx.get("count", 0)) + 1}

    return HandlerRegistry({"work": work})


async def test_a_run_pauses_at_the_gate_and_resumes_with_the_answer() -> None:
    """The gate is not run at the pause; an answer routes by label (case-insensitive),
    is taken once (the loop back pauses again), and the choice lands in the context."""
    registry = _registry()
    graph = load_graph(GATE % "", registry=registry)
    assert graph.nodes["ask"].handler == "wait.human"
    engine, seen = Engine(registry), RecordingObserver()
    first = await engine.run(graph, {}, observers=[seen])
    assert first.status == "paused" and not first.ok
    gate = first.error
    assert isinstance(gate, GatePaused)
    assert (gate.node_id, gate.question, gate.choices) == ("ask", "Go on?", ("Again", "stop"))
    assert [r.node_id for r in first.trace] == ["start"]
    (event,) = seen.of_type(RunPaused)
    assert (event.node_id, event.choices, event.steps) == ("ask", ("Again", "stop"), 1)

    answer = {"choice": "Again", "timed_out": False}
    second = await engine.run(graph, {**first.context, ANSWER_KEY: answer}, start_at="ask")
    assert second.status == "paused"  # back at the gate after `work`: asks again
    assert [r.node_id for r in second.trace] == ["ask", "work"]
    assert second.context["node.ask.answer"] == "Again" and second.context["count"] == 1
    assert ANSWER_KEY not in second.context

    stop = {"choice": "stop", "timed_out": False}
    third = await engine.run(graph, {**second.context, ANSWER_KEY: stop}, start_at="ask")
    assert third.ok and [r.node_id for r in third.trace] == ["ask", "done"]


async def test_a_timed_out_gate_without_default_fails_and_may_be_routed() -> None:
    """No choice (timed out, no default): the gate fails; its fail edge still routes."""
    registry = _registry()
    graph = load_graph(GATE % ', timeout="2s"', registry=registry)
    engine = Engine(registry)
    late = {ANSWER_KEY: {"choice": None, "timed_out": True}}
    result = await engine.run(graph, late, start_at="ask")
    assert result.ok and [(r.node_id, r.status) for r in result.trace] == [
        ("ask", "fail"),
        ("done", "success"),
    ]
    assert result.context["node.ask.timed_out"] is True
    paused = await engine.run(graph, {})
    assert isinstance(paused.error, GatePaused) and paused.error.timeout == 2.0


@pytest.mark.parametrize(
    ("attrs", "edges", "problem"),
    [
        (", default=maybe", "ask -> done [label=yes]", "default 'maybe' is not one of its choices"),
    ],
)
def test_gates_without_a_valid_choice_are_refused(attrs: str, edges: str, problem: str) -> None:
    """A gate nobody could answer is a graph error naming the node and line."""
    dot = f"""digraph g {{
  start [shape=Mdiamond]; done [shape=Msquare]
  ask [shape=hexagon{attrs}]
  start -> ask
  {edges}
}}"""
    registry = _registry()
    with pytest.raises(GraphValidationError, match=problem) as info:
        Engine(registry).check(load_graph(dot, registry=registry))
    assert info.value.issues[0].line == 3 and info.value.issues[0].node == "ask"


async def test_a_gate_inside_a_sub_graph_fails_its_node(tmp_path: Path) -> None:
    """Nobody can resume a nested walk: the pause fails the sub-graph node instead."""
    (tmp_path / "child.dot").write_text(GATE % "")
    parent = tmp_path / "parent.dot"
    parent.write_text("""digraph p {
  start [shape=Mdiamond]; done [shape=Msquare]
  sub [graph="child.dot"]
  start -> sub -> done
}""")
    registry = _registry()
    result = await Engine(registry).run(load_graph(parent, registry=registry), {})
    assert result.status == "fail"
    assert "waits for a human answer" in str(result.error)


async def test_an_unlabelled_edge_offers_its_target_as_the_choice() -> None:
    """As in Attractor, an edge with no label is offered as its target node's id."""
    registry = _registry()
    graph = load_graph(
        """digraph g {
  start [shape=Mdiamond]; done [shape=Msquare]
  ask [shape=hexagon, label="Ship it?"]
  ship [handler=work]; hold [handler=work]
  start -> ask
  ask -> ship
  ask -> hold [label="[H] Hold"]
  ship -> done; hold -> done
}""",
        registry=registry,
    )
    engine = Engine(registry)
    paused = await engine.run(graph, {})
    assert isinstance(paused.error, GatePaused)
    assert paused.error.choices == ("ship", "[H] Hold")
    resumed = await engine.run(
        graph,
        {**paused.context, ANSWER_KEY: {"choice": "ship", "timed_out": False}},
        start_at="ask",
    )
    assert resumed.status == "success"
    assert [r.node_id for r in resumed.trace] == ["ask", "ship", "done"]
