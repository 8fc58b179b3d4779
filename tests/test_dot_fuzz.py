"""Hypothesis: whatever text or bytes come in, load_graph returns a Graph or raises a
GraphError, and prints nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import GraphError
from engine.graph import Graph
from engine.loader import load_graph

VALID = [
    "digraph t {\n start [shape=Mdiamond]\n done [shape=Msquare]\n"
    ' a [max_retries=2, timeout="2s", label="A \\"x\\""]\n'
    ' start -> a -> done [weight=1]\n a -> done [condition="outcome=fail || turn<3"]\n}\n',
    "digraph { node [shape=box]; subgraph cluster_x { edge [w=1]; start -> {a b} } "
    "a -> done; b -> done /* c */ }",
    'digraph { graph [max_steps=5] start -> "x y":p -> done // end\n}',
]
DOT_TOKENS = [
    "digraph", "graph", "subgraph", "node", "edge", "strict", "{", "}", "[", "]", "=", ";",
    ",", "->", "--", ":", "+", '"q"', '"a\\"b"', "<h>", "start", "done", "a", "b", "x.y",
    "1", "2s", "-1.5", "shape", "Mdiamond", "Msquare", "condition", '"outcome=x && !y"',
    "max_retries", "timeout", "// c\n", "# c\n", "/* c */", "\n", " ",
]  # fmt: skip
FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def check(source: str | Path) -> None:
    """load_graph either succeeds with a consistent Graph or raises a GraphError."""
    try:
        graph = load_graph(source)
    except GraphError as exc:
        error: GraphError | None = exc
    else:
        error = None
    if error is not None:
        assert str(error), "a GraphError always has a message"
        return
    assert isinstance(graph, Graph)
    assert graph.start in graph.nodes
    assert graph.exits <= set(graph.nodes)
    assert all(e.src in graph.nodes and e.dst in graph.nodes for e in graph.edges)
    assert [e.index for e in graph.edges] == list(range(len(graph.edges)))


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A valid graph with a few characters inserted, deleted or replaced."""
    text = draw(st.sampled_from(VALID))
    alphabet = st.sampled_from('{}[]=;,:"\\<>-/*#\n ab1.') | st.characters()
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        char = draw(alphabet)
        if action == "insert":
            text = text[:at] + char + text[at:]
        elif action == "delete":
            text = text[:at] + text[at + 1 :]
        else:
            text = text[:at] + char + text[at + 1 :]
    return text


def _encoded(s: str) -> bytes:
    """``s`` as a file holds it: UTF-8, a lone surrogate (``st.characters`` draws them)
    kept as its three bytes rather than failing the draw."""
    return s.encode("utf-8", "surrogatepass")


def as_text(s: str) -> str:
    """Make sure load_graph reads ``s`` as DOT text, never as a path."""
    return s if "{" in s else "{" + s


@FUZZ
@given(st.text(max_size=200).map(as_text))
def test_arbitrary_text(capfd: pytest.CaptureFixture[str], text: str) -> None:
    """Random text never escapes as anything but a GraphError, and prints nothing."""
    check(text)
    assert capfd.readouterr() == ("", "")


@FUZZ
@given(mutated().map(as_text))
def test_mutated_valid_dot(capfd: pytest.CaptureFixture[str], text: str) -> None:
    """Small edits of valid graphs give a Graph or a GraphError, and print nothing."""
    check(text)
    assert capfd.readouterr() == ("", "")


@FUZZ
@given(st.lists(st.sampled_from(DOT_TOKENS), max_size=40).map(" ".join).map(as_text))
def test_token_soup(capfd: pytest.CaptureFixture[str], text: str) -> None:
    """Sequences of DOT tokens (often parseable) stress flattening and positions."""
    check(text)
    assert capfd.readouterr() == ("", "")


@FUZZ
@given(st.binary(max_size=200) | mutated().map(_encoded))
def test_arbitrary_files(tmp_path: Path, capfd: pytest.CaptureFixture[str], content: bytes) -> None:
    """Any file content gives a Graph or a GraphError (GraphFileError for junk)."""
    path = tmp_path / "fuzz.dot"
    path.write_bytes(content)
    check(path)
    assert capfd.readouterr() == ("", "")
