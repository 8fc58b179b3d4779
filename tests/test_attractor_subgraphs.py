"""Reading Attractor graphs: sub-graph files, each read in its own ``dialect=``, else its
parent's (a ``graph=`` node runs its child, and says so, in either dialect); and the
stylesheet indexed once per graph."""

from __future__ import annotations

from pathlib import Path

import anyio

from engine import Engine, load_graph
from engine.stylesheet import parse_stylesheet, styler
from handlers import build_registry

PARENT = 'digraph P { start [shape=Mdiamond]; exit [shape=Msquare]; sub [graph="child.dot"]; '
TURNGRAPH_CHILD = (
    "digraph C { graph [dialect=turngraph]; start -> t -> exit; "
    't [shape=parallelogram, tool="clock"] }'
)
PLAIN_CHILD = 'digraph C { start -> plan -> exit; plan [prompt="Plan it"] }'


def test_a_child_naming_its_dialect_keeps_it_under_an_explicit_parent_dialect(
    tmp_path: Path,
) -> None:
    """--dialect attractor is the parent's: the child's turngraph tool node stays a tool
    node (it was read as a shell command), and the sub node is a sub-graph (was codergen)."""
    (tmp_path / "child.dot").write_text(TURNGRAPH_CHILD)
    (tmp_path / "parent.dot").write_text(PARENT + "start -> sub -> exit }")
    graph = load_graph(tmp_path / "parent.dot", dialect="attractor")
    assert graph.nodes["sub"].handler == "subgraph"
    child = graph.subgraphs["sub"]
    assert child.nodes["t"].handler == "tool" and child.attrs["dialect"] == "turngraph"
    result = anyio.run(Engine(build_registry()).run, graph)
    assert result.ok, result.error
    assert [r.node_id for r in result.trace] == [
        "start", "sub/start", "sub/t", "sub/exit", "sub", "exit",
    ]  # fmt: skip


def test_a_child_naming_no_dialect_takes_its_parents(tmp_path: Path) -> None:
    (tmp_path / "child.dot").write_text(PLAIN_CHILD)
    text = PARENT + 'graph [dialect=attractor]; start -> sub -> exit; sub [outputs="reply"] }'
    (tmp_path / "parent.dot").write_text(text)
    graph = load_graph(tmp_path / "parent.dot")
    assert graph.subgraphs["sub"].nodes["plan"].handler == "codergen"
    result = anyio.run(Engine(build_registry()).run, graph)
    assert result.ok, result.error
    assert result.context["reply"] == "echo: Plan it"
    # The same file read on its own is read by its own (default) rules: caches keep apart.
    assert load_graph(tmp_path / "child.dot").nodes["plan"].handler == "plan"


def test_an_explicit_turngraph_reading_says_so_in_the_graph(tmp_path: Path) -> None:
    """A graph with dialect=attractor read with dialect="turngraph" does not claim to be
    an attractor graph (the disk cache reads the attribute back to compile conditions)."""
    text = 'digraph { graph [dialect=attractor]; start -> a -> exit; a [handler="x"] }'
    assert load_graph(text, dialect="turngraph").attrs["dialect"] == "turngraph"
    assert load_graph(text).attrs["dialect"] == "attractor"


def test_the_indexed_stylesheet_agrees_with_each_rule_s_own_match() -> None:
    """styler (rules indexed once per graph) picks what checking every rule would."""
    rules = parse_stylesheet(
        "* { llm_model: any; } BOX { reasoning_effort: low; } .Code { llm_model: code; } "
        "#n1 { llm_model: one; } box { reasoning_effort: high; } .code { llm_provider: p; } "
        "diamond { llm_model: d; } #n1 { llm_provider: late; }"
    )
    style = styler(rules)
    for node_id in ("n1", "n2"):
        for shape in ("box", "Box", "diamond", "hexagon"):
            for classes in (frozenset(), frozenset({"code"}), frozenset({"Code", "x"})):
                brute: dict[str, str] = {}
                for rule in sorted(rules, key=lambda r: (r.specificity, r.order)):
                    if rule.matches(node_id, shape, classes):
                        brute.update(rule.values)
                assert style(node_id, shape, classes) == brute, (node_id, shape, classes)
