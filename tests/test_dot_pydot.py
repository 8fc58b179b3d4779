"""``to_pydot``: a compiled graph as pydot objects that every DOT reader reads back alike."""

from __future__ import annotations

import re
import shutil
import subprocess
import warnings
from pathlib import Path

import pydot
import pytest

from engine.dot import parse_dot
from engine.dot_pydot import to_pydot
from engine.graph import Graph
from engine.loader import load_graph

ROOT = Path(__file__).resolve().parent.parent
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz not installed")

TRICKY = r"""digraph "tricky one" {
  graph [max_steps=9, retry.delay=250ms, label="G\lleft"]
  start [shape=Mdiamond, label="left line\lright\rcentre"]
  "say \"hi\"" [timeout=2s, max_retries=3, retry.factor=1.5, flag=true, name=n, obj_dict=x]
  -1 [label="back\\slash\\"]
  done [shape=Msquare]
  start -> "say \"hi\"" [condition="outcome=success", weight=2]
  start -> -1 [label=fallback]
  start -> -1 [label=again]
  "say \"hi\"" -> done
  -1 -> done
}
"""


def _same(a: Graph, b: Graph) -> None:
    assert (a.name, a.start, a.exits, dict(a.attrs)) == (b.name, b.start, b.exits, dict(b.attrs))
    assert [(n.id, dict(n.attrs), n.handler) for n in a.nodes.values()] == [
        (n.id, dict(n.attrs), n.handler) for n in b.nodes.values()
    ]
    assert [(e.src, e.dst, dict(e.attrs)) for e in a.edges] == [
        (e.src, e.dst, dict(e.attrs)) for e in b.edges
    ]


@pytest.mark.parametrize(
    "source", [TRICKY, str(ROOT / "graphs" / "turn.dot")], ids=["tricky", "turn"]
)
def test_to_string_loads_back_as_the_same_graph(source: str) -> None:
    """pydot's ``to_string()`` of ``to_pydot(g)`` loads as ``g``: ids, typed values, edges."""
    graph = load_graph(source)
    dot = to_pydot(graph)
    assert isinstance(dot, pydot.Dot)
    _same(load_graph(dot.to_string()), graph)


def test_pydot_reads_its_own_output_alike() -> None:
    """pydot's parser reads the text to the same objects (quoted, as it keeps them)."""
    graph = load_graph(TRICKY)
    dot = to_pydot(graph)
    with warnings.catch_warnings():  # pydot's grammar uses names pyparsing 3.3 deprecates
        warnings.simplefilter("ignore")
        (again,) = pydot.graph_from_dot_data(dot.to_string()) or []
    ours = parse_dot(dot.to_string())
    assert [n.get_name() for n in again.get_nodes()] == [n.get_name() for n in dot.get_nodes()]
    assert [n.get_attributes() for n in again.get_nodes()] == [
        n.get_attributes() for n in dot.get_nodes()
    ]
    pairs = [(e.get_source(), e.get_destination()) for e in again.get_edges()]
    assert pairs == [(e.get_source(), e.get_destination()) for e in dot.get_edges()]
    assert len(pairs) == len(graph.edges) == len(ours.edges)  # parallel edges kept


def test_attributes_named_like_pydot_parameters_are_kept() -> None:
    """``name=`` and ``obj_dict=`` are attributes like any other, not pydot's keywords."""
    node = to_pydot(load_graph(TRICKY)).get_node('"say \\"hi\\""')[0]
    assert node.get_attributes()['"name"'] == '"n"'
    assert node.get_attributes()['"obj_dict"'] == '"x"'


@needs_dot
def test_graphviz_draws_it_with_justified_lines(tmp_path: Path) -> None:
    """Graphviz reads the text and gives ``\\l``/``\\r`` their meaning."""
    path = tmp_path / "g.dot"
    path.write_text(to_pydot(load_graph(TRICKY)).to_string())
    svg = subprocess.run(
        ["dot", "-Tsvg", str(path)], capture_output=True, text=True, check=True
    ).stdout
    anchors = dict((m[1], m[0]) for m in re.findall(r'text-anchor="(\w+)"[^>]*>([^<]*)<', svg))
    assert anchors["left line"] == "start"
    assert anchors["right"] == "end"
    assert anchors["back\\slash\\"] == "middle"
