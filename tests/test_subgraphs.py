"""Sub-graphs: a node with ``graph="other.dot"`` runs that graph as one step, with its
keys mapped in and out and its nodes traced under the parent node; a missing file or a
cycle of references is refused at load time."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from engine import (
    Engine,
    GraphValidationError,
    HandlerError,
    HandlerRegistry,
    Node,
    NodeStarted,
    load_graph,
)
from engine.events import TextDelta, current_emitter
from engine.testing import RecordingObserver

Ctx = Mapping[str, Any]

CHILD = """digraph child {
  start [shape=Mdiamond]
  shout [handler=shout]
  done [shape=Msquare]
  start -> shout -> done
}"""


def parent(ref: str = "parts/child.dot", extra: str = "") -> str:
    return f"""digraph parent {{
  start [shape=Mdiamond]
  sub [graph="{ref}" inputs="text=question" outputs="answer=loud" {extra}]
  done [shape=Msquare]
  start -> sub -> done
}}"""


def shout(node: Node, ctx: Ctx) -> dict[str, Any]:
    emitter = current_emitter()
    if emitter is not None:
        emitter.text("loud")
    if ctx.get("text") == "fail":
        raise RuntimeError("cannot shout")
    return {"loud": str(ctx.get("text")).upper(), "leaked": True}


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def engine() -> Engine:
    reg = HandlerRegistry()
    reg.register("shout", shout)
    return Engine(reg)


async def test_subgraph_runs_as_one_step_with_mapped_keys(tmp_path: Path) -> None:
    write(tmp_path, "parts/child.dot", CHILD)
    graph = load_graph(write(tmp_path, "main.dot", parent()))
    result = await engine().run(graph, {"question": "hi", "session.id": "s1", "other": 1})
    assert result.ok, result.error
    assert result.context["answer"] == "HI"
    assert "leaked" not in result.context and "loud" not in result.context
    assert [r.node_id for r in result.trace] == [
        "start",
        "sub/start",
        "sub/shout",
        "sub/done",
        "sub",
        "done",
    ]


async def test_child_failure_fails_the_node_naming_the_child(tmp_path: Path) -> None:
    write(tmp_path, "parts/child.dot", CHILD)
    graph = load_graph(write(tmp_path, "main.dot", parent()))
    result = await engine().run(graph, {"question": "fail"})
    assert isinstance(result.error, HandlerError)
    assert result.error.node_id == "sub"
    assert "child.dot" in str(result.error) and "cannot shout" in str(result.error)


def test_missing_subgraph_is_a_load_error_naming_file_and_line(tmp_path: Path) -> None:
    main = write(tmp_path, "main.dot", parent("nope.dot"))
    with pytest.raises(GraphValidationError) as info:
        load_graph(main)
    assert f"{main}:3:3: error: node 'sub': sub-graph file 'nope.dot' not found" in str(info.value)


def test_cycle_of_subgraphs_is_a_load_error_naming_the_files(tmp_path: Path) -> None:
    a = write(tmp_path, "a.dot", parent("b.dot"))
    b = write(tmp_path, "b.dot", parent("a.dot"))
    with pytest.raises(GraphValidationError) as info:
        load_graph(a)
    assert f"sub-graph cycle: {a} -> {b} -> {a}" in str(info.value)


def test_same_files_give_the_same_graph_object(tmp_path: Path) -> None:
    write(tmp_path, "parts/child.dot", CHILD)
    main = write(tmp_path, "main.dot", parent())
    assert load_graph(main) is load_graph(main)


async def test_child_events_name_the_child_nodes_under_the_parent(tmp_path: Path) -> None:
    write(tmp_path, "parts/child.dot", CHILD)
    obs = RecordingObserver()
    graph = load_graph(write(tmp_path, "main.dot", parent()))
    result = await engine().run(graph, {"question": "hi"}, observers=[obs])
    assert result.ok, result.error
    started = [e.node_id for e in obs.of_type(NodeStarted)]
    assert started == ["start", "sub", "sub/start", "sub/shout", "sub/done", "done"]
    assert [(e.node_id, e.text) for e in obs.of_type(TextDelta)] == [("sub/shout", "loud")]
