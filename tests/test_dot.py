"""The DOT reader: every pydot trap (DESIGN.md §5) pinned, and the dialect's rules."""

from __future__ import annotations

import shutil
import subprocess
import tracemalloc
from datetime import timedelta
from pathlib import Path

import pytest

import engine.dot
from engine.dot import (
    MAX_ATTRS,
    MAX_DEPTH,
    MAX_EDGES,
    DotLimitError,
    RawGraph,
    decode_id,
    parse_dot,
)
from engine.errors import DotSyntaxError, GraphFileError
from engine.graph import Graph
from engine.loader import load_graph


def wrap(body: str) -> str:
    """A valid turn graph around ``body`` (start → body's nodes → done is up to the test)."""
    return "digraph t {\n start [shape=Mdiamond]\n done [shape=Msquare]\n" + body + "\n}\n"


def chain(body: str, *nodes: str) -> Graph:
    """Load ``body`` plus edges start → nodes... → done, so validation passes."""
    path = " -> ".join(("start", *nodes, "done"))
    return load_graph(wrap(body + "\n" + path))


# --------------------------------------------------------------------------- quotes, escapes


def test_quotes_are_stripped_from_ids_and_values() -> None:
    """pydot keeps '"..."' quotes on values and ids; the reader removes them."""
    raw = parse_dot('digraph { "my node" [label="Hello world", prompt="x"] }')
    assert list(raw.nodes) == ["my node"]
    assert raw.nodes["my node"].attrs == {"label": "Hello world", "prompt": "x"}


def test_escapes_are_resolved() -> None:
    """\\" \\\\ \\n resolve; other escapes (\\N, \\l, \\r) stay; backslash-newline joins."""
    raw = parse_dot(
        'digraph { a [q="say \\"hi\\"", b="back\\\\slash", n="1\\n2\\l3\\r", '
        'keep="\\N and \\G", j="jo\\\nined"] }'
    )
    attrs = raw.nodes["a"].attrs
    assert attrs["q"] == 'say "hi"'
    assert attrs["b"] == "back\\slash"
    assert attrs["n"] == "1\n2\\l3\\r"
    assert attrs["keep"] == "\\N and \\G"
    assert attrs["j"] == "joined"


def test_concatenated_strings_join() -> None:
    """``"a" + "b"`` is one id ``ab``."""
    raw = parse_dot('digraph { "ab" + "cd" [label="x" + "y"] }')
    assert raw.nodes["abcd"].attrs == {"label": "xy"}


def test_html_ids_keep_their_markup() -> None:
    """An HTML label loses only its outer angle brackets."""
    raw = parse_dot("digraph { a [label=<<b>bold</b>>] }")
    assert raw.nodes["a"].attrs["label"] == "<b>bold</b>"


def test_decode_id_leaves_unquoted_text_alone() -> None:
    """Unquoted ids are taken as written, escapes included."""
    assert decode_id("abc") == "abc"
    assert decode_id('"a\\tb"') == "a\\tb"


# --------------------------------------------------------------------------- typed values


def test_numbers_and_booleans_are_typed() -> None:
    """pydot returns '512' and '"0.5"' as strings; the loader types them once."""
    g = chain('a [max_tokens=512, temperature="0.5", tools=true, off=false, name2="x1"]', "a")
    attrs = g.nodes["a"].attrs
    assert attrs["max_tokens"] == 512 and isinstance(attrs["max_tokens"], int)
    assert attrs["temperature"] == 0.5
    assert attrs["tools"] is True and attrs["off"] is False
    assert attrs["name2"] == "x1"


def test_durations_are_timedeltas() -> None:
    """250ms, 2s, 5m, 1h read as timedelta, for known and unknown attributes."""
    g = chain('a [wait="250ms", b="2s", c="5m", d="1h", timeout="1.5s"]', "a")
    attrs = g.nodes["a"].attrs
    assert attrs["wait"] == timedelta(milliseconds=250)
    assert attrs["b"] == timedelta(seconds=2)
    assert attrs["c"] == timedelta(minutes=5)
    assert attrs["d"] == timedelta(hours=1)
    assert g.nodes["a"].timeout == 1.5


def test_unquoted_durations_are_rejoined() -> None:
    """``timeout=2s`` lexes as ``2`` plus a valueless ``s``; the reader rejoins them."""
    raw = parse_dot("digraph { a [timeout=2s, wait=250ms, x=1.5h, y=3 z] }")
    assert raw.nodes["a"].attrs == {
        "timeout": "2s",
        "wait": "250ms",
        "x": "1.5h",
        "y": "3",
        "z": None,
    }


def test_text_attributes_stay_strings() -> None:
    """label, prompt, template... are text even when they look like numbers."""
    g = chain('a [label=42, prompt="true", template="2s", handler=x]', "a")
    attrs = g.nodes["a"].attrs
    assert attrs["label"] == "42" and attrs["prompt"] == "true" and attrs["template"] == "2s"


def test_dotted_keys_are_plain_keys() -> None:
    """``retry.backoff`` is one key, not a nested structure."""
    g = chain('a [retry.backoff="exp", "x.y.z"=3]', "a")
    assert g.nodes["a"].attrs["retry.backoff"] == "exp"
    assert g.nodes["a"].attrs["x.y.z"] == 3


# --------------------------------------------------------------------------- defaults


def test_node_defaults_apply_to_later_nodes_only() -> None:
    """``node [...]`` statements come back as pseudo-nodes; their order matters."""
    raw = parse_dot("digraph { node [shape=box]; a; node [color=red]; b; a }")
    assert raw.nodes["a"].attrs == {"shape": "box"}
    assert raw.nodes["b"].attrs == {"shape": "box", "color": "red"}


def test_edge_defaults_apply_in_order() -> None:
    """``edge [...]`` applies to the edges after it; an edge's own attrs win."""
    raw = parse_dot("digraph { a -> b; edge [weight=2]; b -> c; c -> d [weight=5] }")
    assert [e.attrs for e in raw.edges] == [{}, {"weight": "2"}, {"weight": "5"}]


def test_subgraph_defaults_are_scoped() -> None:
    """Defaults set in a subgraph stay in it; nested subgraphs inherit them."""
    raw = parse_dot(
        "digraph { node [shape=box]\n"
        " subgraph cluster_a { node [color=red]; a; subgraph { node [style=x]; b } c }\n"
        " d }"
    )
    assert raw.nodes["a"].attrs == {"shape": "box", "color": "red"}
    assert raw.nodes["b"].attrs == {"shape": "box", "color": "red", "style": "x"}
    assert raw.nodes["c"].attrs == {"shape": "box", "color": "red"}
    assert raw.nodes["d"].attrs == {"shape": "box"}


def test_later_statements_add_to_a_node() -> None:
    """Every statement naming a node updates it; a later default does not."""
    raw = parse_dot("digraph { a [x=1]; node [y=2]; a [z=3]; a [x=4] }")
    assert raw.nodes["a"].attrs == {"x": "4", "z": "3"}


def test_graph_attributes_are_kept() -> None:
    """``graph [...]`` and ``key=value`` statements become Graph.attrs (from_pydot drops them)."""
    g = load_graph(wrap('graph [max_steps=7, goal="answer"]\nrankdir=LR\nstart -> done'))
    assert dict(g.attrs) == {"max_steps": 7, "goal": "answer", "rankdir": "LR"}
    assert g.max_steps == 7


def test_subgraph_attributes_are_kept_separately() -> None:
    """A subgraph's own attributes are recorded and do not flow into its nodes."""
    raw = parse_dot('digraph { subgraph cluster_x { label="group"; a [k=1] } }')
    assert [(s.name, s.attrs) for s in raw.subgraphs] == [("cluster_x", {"label": "group"})]
    assert raw.nodes["a"].attrs == {"k": "1"}
    assert raw.attrs == {}


def test_nodes_inside_subgraphs_keep_their_attributes() -> None:
    """from_pydot loses attributes of nodes inside subgraphs; we keep them."""
    g = load_graph(
        wrap(
            "subgraph cluster_work { node [max_retries=2]; w [handler=work, k=v] }\n"
            "start -> w -> done"
        )
    )
    assert g.nodes["w"].handler == "work"
    assert g.nodes["w"].attrs["k"] == "v"
    assert g.nodes["w"].retry.max_retries == 2


# --------------------------------------------------------------------------- nodes and edges


def test_implied_nodes_are_kept() -> None:
    """Nodes named only in edges are missing from pydot's get_nodes(); not here."""
    raw = parse_dot("digraph { node [shape=box]; a -> b }")
    assert list(raw.nodes) == ["a", "b"]
    assert not raw.nodes["a"].declared
    assert raw.nodes["b"].attrs == {"shape": "box"}


def test_chained_edges_each_get_the_attributes() -> None:
    """``a -> b -> c [x=1]`` is two edges, both with x=1, in order."""
    raw = parse_dot("digraph { a -> b -> c [x=1] }")
    assert [(e.src, e.dst, e.attrs) for e in raw.edges] == [
        ("a", "b", {"x": "1"}),
        ("b", "c", {"x": "1"}),
    ]


def test_parallel_edges_stay_distinct() -> None:
    """Three edges between the same two nodes stay three edges, in source order."""
    g = load_graph(
        wrap(
            "start -> r\n"
            'r -> done [label=a, condition="outcome=success"]\n'
            'r -> done [label=b, condition="outcome=fail"]\n'
            "r -> done [label=c]"
        )
    )
    out = g.out_edges("r")
    assert [e.label for e in out] == ["a", "b", "c"]
    assert [e.index for e in g.edges] == [0, 1, 2, 3]


def test_edge_to_a_subgraph_fans_out() -> None:
    """``a -> {b c}`` is an edge to each node of the anonymous subgraph."""
    raw = parse_dot("digraph { a -> {b c} [w=1] }")
    assert [(e.src, e.dst, e.attrs) for e in raw.edges] == [
        ("a", "b", {"w": "1"}),
        ("a", "c", {"w": "1"}),
    ]


def test_edges_keep_source_order_across_subgraphs() -> None:
    """Edges inside subgraphs and edge endpoints are numbered in source order."""
    raw = parse_dot("digraph { x -> y\n subgraph s { p -> q }\n {m -> n} -> z\n y -> p }")
    assert [(e.src, e.dst) for e in raw.edges] == [
        ("x", "y"),
        ("p", "q"),
        ("m", "n"),
        ("m", "z"),
        ("n", "z"),
        ("y", "p"),
    ]


def test_ports_become_edge_attributes() -> None:
    """``a:out -> b:in`` joins nodes a and b; the ports land in tailport/headport."""
    raw = parse_dot('digraph { a:out -> "b":in }')
    assert list(raw.nodes) == ["a", "b"]
    assert raw.edges[0].attrs == {"tailport": "out", "headport": "in"}


def test_comments_are_ignored_but_not_inside_strings() -> None:
    """// # and /* */ comments vanish; the same characters inside strings stay."""
    raw = parse_dot(
        "digraph {\n// a comment\n# another\n/* block\n a [x=1] */\n"
        ' b [url="http://x/#y", c="/* no */"] // trailing\n}'
    )
    assert list(raw.nodes) == ["b"]
    assert raw.nodes["b"].attrs == {"url": "http://x/#y", "c": "/* no */"}


def test_positions_of_nodes_and_edges() -> None:
    """pydot keeps no line numbers: nodes and edges are located in the source text."""
    raw = parse_dot('digraph {\n  a [x=1]\n  a -> b\n    "c d" -> a\n}')
    assert (raw.nodes["a"].line, raw.nodes["a"].col) == (2, 3)
    assert (raw.nodes["b"].line, raw.nodes["b"].col) == (3, 8)
    assert (raw.nodes["c d"].line, raw.nodes["c d"].col) == (4, 5)
    assert [(e.line, e.col) for e in raw.edges] == [(3, 5), (4, 11)]


def test_graph_header_is_read() -> None:
    """Name, direction and strictness come from the header."""
    raw: RawGraph = parse_dot('strict digraph "my graph" { }')
    assert (raw.name, raw.directed, raw.strict) == ("my graph", True, True)
    assert not parse_dot("graph { }").directed


# --------------------------------------------------------------------------- syntax errors


@pytest.mark.parametrize(
    ("text", "line", "col", "reason"),
    [
        ("digraph {\n  a -> ;\n}", 2, 5, "after '->', found ';'"),
        ("digraph {\n a -> b\n", 3, 1, "unexpected end of text"),
        ('digraph {\n  a [label="oops]\n}', 2, 12, "unterminated string"),
        ("digraph {\n /* never closed\n}", 2, 2, "unterminated comment"),
        ("digraph { a } trailing", 1, 15, "after the end of the graph"),
        ("graf { a }", 1, 1, "expected 'digraph'"),
        ("digraph { a }\ndigraph { b }", 2, 1, "only one graph per file"),
    ],
)
def test_syntax_errors_carry_position_and_print_nothing(
    capfd: pytest.CaptureFixture[str], text: str, line: int, col: int, reason: str
) -> None:
    """pydot prints and returns None on a syntax error; we raise with line and column."""
    with pytest.raises(DotSyntaxError) as info:
        parse_dot(text, "g.dot")
    err = info.value
    assert (err.line, err.col) == (line, col)
    assert reason in err.reason
    lines = text.splitlines()
    assert err.source_line == (lines[line - 1] if line <= len(lines) else "")
    assert str(err).startswith(f"g.dot:{line}:{col}: error: ")
    assert capfd.readouterr() == ("", "")


def test_load_graph_reports_syntax_errors_with_the_file_path(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A file's syntax error names the file as given."""
    path = tmp_path / "bad.dot"
    path.write_text("digraph {\n start -> -> done\n}\n")
    with pytest.raises(DotSyntaxError) as info:
        load_graph(path)
    assert str(info.value).startswith(f"{path}:2:")
    assert info.value.source_line == " start -> -> done"
    assert capfd.readouterr() == ("", "")


def test_deep_nesting_is_an_error_naming_the_line() -> None:
    """Nesting past MAX_DEPTH is a DotLimitError at the brace that goes too deep."""
    text = "digraph {\n" + "{\n" * 400 + "a" + "}" * 400 + "}"
    with pytest.raises(DotLimitError) as info:
        parse_dot(text, "deep.dot")
    assert (info.value.line, info.value.col) == (MAX_DEPTH + 1, 1)
    assert str(info.value).startswith(f"deep.dot:{MAX_DEPTH + 1}:1: error: subgraphs nested deeper")


def test_nesting_up_to_the_limit_is_read_once() -> None:
    """Nested named subgraphs (exponential for pydot's grammar) read in one pass."""
    depth = MAX_DEPTH - 1
    text = "digraph {" + "".join(f"subgraph s{i} {{ a{i} -> b{i}; " for i in range(depth))
    raw = parse_dot(text + "}" * depth + "}")
    assert len(raw.edges) == depth and len(raw.subgraphs) == depth
    assert raw.subgraphs[0].name == f"s{depth - 1}"  # innermost closes first


def test_edges_past_the_limit_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fan-out that expands past MAX_EDGES is a DotLimitError at its operator."""
    monkeypatch.setattr(engine.dot, "MAX_EDGES", 10)
    with pytest.raises(DotLimitError) as info:
        parse_dot("digraph {\n a -> b\n {c d e} -> {f g h i} }")
    assert (info.value.line, info.value.col) == (3, 10)


def test_one_fan_out_past_the_edge_limit_is_refused_before_it_is_built() -> None:
    """``{2000 nodes} -> {2000 nodes}`` (4M edges, 24 KB of text) is refused unexpanded."""
    side = 2000
    assert side * side > MAX_EDGES
    heads = " ".join(f"a{i}" for i in range(side))
    tails = " ".join(f"b{i}" for i in range(side))
    tracemalloc.start()
    try:
        with pytest.raises(DotLimitError, match=f"more than {MAX_EDGES} edges") as info:
            parse_dot(f"digraph {{\n {{{heads}}}\n -> {{{tails}}} }}")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (info.value.line, info.value.col) == (3, 2)
    assert peak < 20 * 2**20  # the 4M edges (gigabytes) were never made


def test_defaults_copied_into_many_nodes_are_bounded() -> None:
    """3,000 node defaults before 3,000 nodes is 9M values from 40 KB: refused, with its line."""
    n = 3000
    assert n * n > MAX_ATTRS
    defaults = " ".join(f"a{i}=1" for i in range(n))
    text = f"digraph {{\n node [{defaults}]\n" + "".join(f"n{i}\n" for i in range(n)) + "}"
    with pytest.raises(DotLimitError, match="defaults copied into more than") as info:
        parse_dot(text, "wide.dot")
    assert info.value.line == 2 + MAX_ATTRS // n + 1  # the first node past the limit
    assert info.value.path == "wide.dot"


@pytest.mark.parametrize(
    "stmts",
    [
        "{} {} {} {}",
        "a -> b; a -> b; a -> b; a -> b; a -> b; a -> b",
        "a -> {b c}",
        "a b c d e f g h",
    ],
    ids=["subgraphs", "edges", "fan-out", "nodes"],
)
def test_every_copy_of_the_defaults_counts(monkeypatch: pytest.MonkeyPatch, stmts: str) -> None:
    """Subgraph scopes, edges and nodes each take a copy of the defaults in force."""
    monkeypatch.setattr(engine.dot, "MAX_ATTRS", 11)
    defaults = "node [p=1 q=2 r=3]; edge [x=1 y=2 z=3]"
    with pytest.raises(DotLimitError):
        parse_dot(f"digraph {{ {defaults}; {stmts} }}")
    monkeypatch.setattr(engine.dot, "MAX_ATTRS", 24)
    parse_dot(f"digraph {{ {defaults}; {stmts} }}")


# --------------------------------------------------------------------------- Graphviz gaps

needs_graphviz = pytest.mark.skipif(shutil.which("nop") is None, reason="Graphviz not installed")
GAPS = {
    "semicolons": 'digraph { a [label="x"; shape=box; w=1] }',
    "negative": "digraph { a -> -1 -> -.5; -2 [x=-3] }",
    "justified": 'digraph { a [label="left\\lright\\rcentre\\n"] }',
}


@needs_graphviz
@pytest.mark.parametrize("text", GAPS.values(), ids=GAPS.keys())
def test_graphviz_reads_each_gap(tmp_path: Path, text: str) -> None:
    """Each construct below is one Graphviz reads (its reader, ``nop``, accepts it)."""
    path = tmp_path / "g.dot"
    path.write_text(text)
    assert subprocess.run(["nop", str(path)], capture_output=True).returncode == 0


def test_semicolons_separate_attributes() -> None:
    """``[a=1; b=2]`` is two attributes, as in Graphviz."""
    raw = parse_dot(GAPS["semicolons"])
    assert raw.nodes["a"].attrs == {"label": "x", "shape": "box", "w": "1"}


def test_negative_numerals_are_node_ids() -> None:
    """``a -> -1`` names a node ``-1``."""
    raw = parse_dot(GAPS["negative"])
    assert list(raw.nodes) == ["a", "-1", "-.5", "-2"]
    assert [(e.src, e.dst) for e in raw.edges] == [("a", "-1"), ("-1", "-.5")]
    assert raw.nodes["-2"].attrs == {"x": "-3"}


def test_justified_line_ends_are_kept_for_rendering() -> None:
    """``\\l`` and ``\\r`` keep their meaning (left, right line ends); ``\\n`` is a newline."""
    raw = parse_dot(GAPS["justified"])
    assert raw.nodes["a"].attrs["label"] == "left\\lright\\rcentre\n"


def test_latin1_graphs_are_read_as_latin1(tmp_path: Path) -> None:
    """``charset=latin1`` bytes are Latin-1, even where they would pass for UTF-8."""
    path = tmp_path / "l1.dot"
    path.write_bytes(
        b'digraph {\n charset=latin1\n start [shape=Mdiamond, label="caf\xe9 \xc3\xa9"]\n'
        b" done [shape=Msquare]\n start -> done\n}\n"
    )
    graph = load_graph(path)
    assert graph.nodes["start"].label == "caf\xe9 \xc3\xa9"


def test_non_utf8_without_charset_is_refused(tmp_path: Path) -> None:
    """Without ``charset=latin1`` a non-UTF-8 file is an error naming the byte."""
    path = tmp_path / "bad.dot"
    path.write_bytes(b'digraph { start [label="caf\xe9"] }')
    with pytest.raises(GraphFileError, match="not UTF-8 text"):
        load_graph(path)


@pytest.mark.parametrize("junk", ["`", '"open', "/* open", "-x"])
def test_a_bad_token_after_long_blanks_fails_at_once(junk: str) -> None:
    """A blank run before a bad token is skipped once (no retrying every split of it)."""
    with pytest.raises(DotSyntaxError) as info:
        parse_dot("digraph {" + " \n" * 40 + junk)
    assert info.value.line == 41


def test_the_later_graph_attribute_statement_wins() -> None:
    """``graph [x=1]; x=2`` and the reverse: the later one wins, as in Graphviz."""
    raw = parse_dot("digraph { graph [x=1]; x=2; y=1; graph [y=2] }")
    assert raw.attrs == {"x": "2", "y": "2"}


@pytest.mark.parametrize("text", ["digraph { node }", "digraph { a -> edge }"])
def test_keywords_are_not_node_names(text: str) -> None:
    """Graphviz refuses a keyword where a node belongs (pydot would take it as a name)."""
    with pytest.raises(DotSyntaxError):
        parse_dot(text)
