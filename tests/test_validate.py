"""Validation: every rule, every problem reported at once with its place."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from engine.errors import GraphValidationError, Issue
from engine.graph import Value
from engine.loader import load_graph
from engine.registry import Attr, Declaration, HandlerRegistry
from engine.validate import GRAPH_KINDS, NODE_KINDS, type_value


def errors_of(text: str, registry: HandlerRegistry | None = None) -> list[Issue]:
    """The error issues ``text`` raises (the test fails if it loads)."""
    with pytest.raises(GraphValidationError) as info:
        load_graph(text, registry=registry)
    return list(info.value.errors)


def messages(text: str, registry: HandlerRegistry | None = None) -> list[str]:
    """``str(issue)`` of every error, in the order reported."""
    return [str(i) for i in errors_of(text, registry)]


def registry_of(*names: str) -> HandlerRegistry:
    """A registry whose handlers do nothing."""
    return HandlerRegistry({name: (lambda node, ctx: None) for name in names})


# --------------------------------------------------------------------------- ends


def test_a_valid_graph_loads() -> None:
    """A plain chain from start to done passes every rule."""
    graph = load_graph("digraph { start -> work -> done }")
    assert graph.start == "start"
    assert graph.exits == frozenset({"done"})
    assert graph.warnings == ()


def test_missing_start_and_exit() -> None:
    """No start and no exit are two whole-graph errors, at the graph's own line."""
    assert messages("\ndigraph { a -> b }") == [
        "<string>:2:1: error: no start node (shape=Mdiamond or id 'start')",
        "<string>:2:1: error: no exit node (shape=Msquare or id 'exit'/'done')",
    ]


def test_two_start_nodes() -> None:
    """A second start node is an error at its own line."""
    text = "digraph {\n start -> a -> done\n begin [shape=Mdiamond]\n begin -> a\n}"
    assert messages(text) == [
        "<string>:3:2: error: node 'begin': a second start node (after 'start')"
    ]


def test_start_and_exit_by_shape_or_name() -> None:
    """Mdiamond/Msquare shapes and the names start/exit/done all count."""
    g = load_graph("digraph { s [shape=Mdiamond]; s -> a -> e; a -> exit; e [shape=Msquare] }")
    assert g.start == "s"
    assert g.exits == frozenset({"e", "exit"})


def test_no_edge_into_start_or_out_of_exit() -> None:
    """Edges into the start node or out of an exit are errors naming the edge."""
    text = "digraph {\n start -> a -> done\n a -> start\n done -> a\n}"
    assert messages(text) == [
        "<string>:3:4: error: edge a -> start: edge into the start node 'start'",
        "<string>:4:7: error: edge done -> a: edge out of the exit node 'done'",
    ]


# --------------------------------------------------------------------------- reachability


def test_unreachable_node() -> None:
    """A node the start cannot reach is an error at its line."""
    text = "digraph {\n start -> done\n island -> done\n}"
    assert messages(text) == ["<string>:3:2: error: node 'island': unreachable from start 'start'"]


def test_node_that_cannot_reach_an_exit() -> None:
    """A node with no path to an exit (a dead end or a closed loop) is an error."""
    text = "digraph {\n start -> a -> done\n a -> trap\n trap -> loop\n loop -> trap\n}"
    assert messages(text) == [
        "<string>:3:7: error: node 'trap': no path from here to an exit",
        "<string>:4:10: error: node 'loop': no path from here to an exit",
    ]


def test_cycles_are_allowed() -> None:
    """A loop that can leave towards an exit is fine."""
    load_graph("digraph { start -> a -> b -> a; b -> done }")


# --------------------------------------------------------------------------- handlers


def test_unknown_handler_with_registry() -> None:
    """With a registry, an unregistered handler is an error naming node and line, the
    nearest registered name, and every registered name in alphabetical order."""
    text = "digraph {\n start -> recall -> done\n recall [handler=recal]\n}"
    registry = registry_of("start", "done", "recall")
    assert messages(text, registry) == [
        "<string>:3:2: error: node 'recall': unknown handler 'recal' (did you mean 'recall'?); "
        "registered: conditional, done, exit, parallel, parallel.fan_in, recall, start, "
        "subgraph, wait.human",
    ]


def test_registered_handlers_are_listed_alphabetically_whatever_the_typo() -> None:
    """The list after an unknown handler is in alphabetical order (not nearest first), so
    it reads the same for every typo; the hint still names the nearest."""
    registry = registry_of("start", "done", "zeta", "alpha", "mid")
    for typo, hint in (("zeta_", " (did you mean 'zeta'?)"), ("alpah", " (did you mean 'alpha'?)")):
        text = f"digraph {{ start -> x -> done; x [handler={typo}] }}"
        [message] = messages(text, registry)
        head, listed = message.split("; registered: ")
        assert head.endswith(f"unknown handler {typo!r}{hint}")
        names = listed.split(", ")
        assert names == sorted(names) and {"alpha", "mid", "zeta"} <= set(names)


def test_a_long_registry_lists_the_nearest_names_alphabetically() -> None:
    """More than 30 registered names: the 30 nearest the typo, in alphabetical order,
    then how many more there are."""
    fillers = [f"zz{i:02}" for i in range(40)]
    registry = registry_of("start", "done", "summary", "summarise", *fillers)
    text = "digraph { start -> x -> done; x [handler=sumarise] }"
    [message] = messages(text, registry)
    listed = message.split("; registered: ")[1]
    names, more = listed.split(", ... ")
    shown = names.split(", ")
    assert len(shown) == 30 and shown == sorted(shown)
    assert {"summarise", "summary", "start", "done"} <= set(shown)
    assert more == f"({len(registry) - 30} more)"


def test_without_registry_any_handler_is_accepted() -> None:
    """No registry: handler names are not checked at load."""
    graph = load_graph("digraph { start -> x -> done; x [handler=whatever] }")
    assert graph.nodes["x"].handler == "whatever"


def test_node_id_must_be_registered_when_it_is_the_handler() -> None:
    """A node without handler/type/shape uses its id, which must then be registered."""
    text = "digraph { start -> summarise -> done }"
    assert messages(text, registry_of("start", "done")) == [
        "<string>:1:20: error: node 'summarise': unknown handler 'summarise'; "
        "registered: conditional, done, exit, parallel, parallel.fan_in, start, subgraph, "
        "wait.human",
    ]


# --------------------------------------------------------------------------- attributes


def test_attribute_type_errors_name_node_and_line() -> None:
    """max_retries="lots" and timeout="soon" are errors at the node's line."""
    text = 'digraph {\n start -> a -> done\n a [max_retries="lots", timeout="soon"]\n}'
    assert messages(text) == [
        "<string>:3:2: error: node 'a': max_retries must be an integer >= 0, not 'lots'",
        "<string>:3:2: error: node 'a': timeout must be a duration such as 250ms, 2s, 5m "
        "or 1h, not 'soon'",
    ]


def test_graph_and_edge_attribute_errors() -> None:
    """Graph attributes and edge attributes are typed and checked too."""
    text = "digraph {\n max_steps=0\n start -> done [weight=heavy]\n}"
    assert messages(text) == [
        "<string>:1:1: error: graph: max_steps must be an integer >= 1, not '0'",
        "<string>:3:8: error: edge start -> done: weight must be an integer, not 'heavy'",
    ]


def test_valueless_attribute_is_an_error() -> None:
    """``[flag]`` (no value) is reported rather than guessed."""
    assert messages("digraph { start -> a -> done; a [flag] }") == [
        "<string>:1:31: error: node 'a': attribute 'flag' has no value",
    ]


def test_retry_targets_must_exist() -> None:
    """retry_target and fallback_retry_target name nodes of the graph."""
    text = "digraph {\n start -> a -> done\n a [retry_target=b, fallback_retry_target=start]\n}"
    assert messages(text) == ["<string>:3:2: error: node 'a': retry_target 'b' is not a node"]


def test_condition_syntax_error_names_the_edge_and_line() -> None:
    """A bad condition is an error naming ``src -> dst`` and the edge's line."""
    text = 'digraph {\n start -> a\n a -> done [condition="outcome=="]\n a -> done\n}'
    assert messages(text) == [
        "<string>:3:4: error: edge a -> done: condition 'outcome==': expected a value after "
        "'==', found end of condition at column 10",
    ]


def test_undirected_graph_and_edges() -> None:
    """``graph {}`` and ``--`` edges are rejected with a clear message."""
    # The wrong kind of graph stands alone: no noise about starts, exits or handlers.
    assert messages("graph { a -- b }") == [
        "<string>:1:1: error: an undirected 'graph': turn graphs are 'digraph'"
    ]
    assert messages("digraph {\n start -- done\n}") == [
        "<string>:2:8: error: edge start -> done: undirected '--' edge (turn graphs use '->')",
    ]


# --------------------------------------------------------------------------- all at once


def test_every_problem_is_reported_at_once() -> None:
    """One error lists every issue, sorted by line, with the count in its message."""
    text = (
        "digraph {\n"
        " start -> a -> done\n"
        ' a [max_retries=-1, handler=nope, retry_target="ghost"]\n'
        ' a -> b [condition="&&"]\n'
        " b -> start\n"
        " orphan\n"
        "}"
    )
    with pytest.raises(GraphValidationError) as info:
        load_graph(text, registry=registry_of("start", "done", "b", "orphan"))
    found = [(i.line, i.message) for i in info.value.issues]
    assert found == [
        (3, "node 'a': max_retries must be an integer >= 0, not '-1'"),
        (3, "node 'a': retry_target 'ghost' is not a node"),
        (
            3,
            "node 'a': unknown handler 'nope'; "
            "registered: b, conditional, done, exit, orphan, parallel, parallel.fan_in, start, "
            "subgraph, wait.human",
        ),
        (4, "edge a -> b: condition '&&': expected a key, found '&&' at column 1"),
        (5, "edge b -> start: edge into the start node 'start'"),
        (6, "node 'orphan': unreachable from start 'start'"),
        (6, "node 'orphan': no path from here to an exit"),
    ]
    assert str(info.value).startswith("<string>: 7 errors\n  <string>:3:2: error: ")
    assert info.value.issues[2].node == "a"
    assert info.value.issues[3].edge == ("a", "b")


def test_all_conditional_node_is_a_warning() -> None:
    """A node whose every outgoing edge is conditional loads, with a warning."""
    text = (
        "digraph {\n start -> r\n"
        ' r -> done [condition="outcome=success"]\n'
        ' r -> done [condition="outcome=fail"]\n}'
    )
    graph = load_graph(text)
    assert [str(w) for w in graph.warnings] == [
        "<string>:2:11: warning: node 'r': every outgoing edge has a condition; "
        "when none holds the run has no route"
    ]
    assert graph.warnings[0].severity == "warning"


def test_warnings_are_listed_with_errors() -> None:
    """When a graph fails, its warnings come along in ``issues`` but not ``errors``."""
    text = 'digraph { start -> r; r -> done [condition="outcome=success"]; x }'
    with pytest.raises(GraphValidationError) as info:
        load_graph(text)
    assert {i.severity for i in info.value.issues} == {"error", "warning"}
    assert all(i.severity == "error" for i in info.value.errors)


# --------------------------------------------------------------------------- typing rules


@pytest.mark.parametrize(
    ("key", "text", "expected"),
    [
        ("max_retries", "3", 3),
        ("max_retries", " 0 ", 0),
        ("timeout", "250ms", timedelta(milliseconds=250)),
        ("timeout", "30", timedelta(seconds=30)),
        ("timeout", "1.5m", timedelta(seconds=90)),
        ("timeout", "1d", timedelta(days=1)),
        ("retry.factor", "1.5", 1.5),
        ("retry.jitter", "no", False),
        ("retry.jitter", "YES", True),
        ("blocking", "1", True),
        ("label", "3", "3"),
        ("unknown", "42", 42),
        ("unknown", "-7", -7),
        ("unknown", "4.5e3", 4500.0),
        ("unknown", "true", True),
        ("unknown", "yes", "yes"),
        ("unknown", "2h", timedelta(hours=2)),
        ("unknown", "hello", "hello"),
        ("unknown", "9" * 5000, "9" * 5000),
        ("unknown", "99999999999999d", "99999999999999d"),
    ],
)
def test_type_value(key: str, text: str, expected: Value) -> None:
    """Declared kinds are enforced; undeclared values are inferred, never crash."""
    value = type_value(key, text, NODE_KINDS)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("key", "text"),
    [
        ("max_retries", "-1"),
        ("max_retries", "1.5"),
        ("timeout", "-2s"),
        ("timeout", "soon"),
        ("timeout", "99999999999999d"),
        ("retry.factor", "0.5"),
        ("blocking", "maybe"),
    ],
)
def test_type_value_rejects(key: str, text: str) -> None:
    """A value outside its declared kind raises ValueError saying what was expected."""
    with pytest.raises(ValueError, match=r"an integer|a duration|a number|true or false"):
        type_value(key, text, NODE_KINDS)


def test_graph_kinds_declare_max_steps() -> None:
    """max_steps is a positive integer at graph level."""
    assert type_value("max_steps", "5", GRAPH_KINDS) == 5
    with pytest.raises(ValueError, match="an integer >= 1"):
        type_value("max_steps", "0", GRAPH_KINDS)


# --------------------------------------------------------------------------- lint: names


def lint(text: str, registry: HandlerRegistry | None = None) -> list[str]:
    """``str(issue)`` of every lint warning of ``text`` against the built-in registry."""
    from engine.lint import lint_graph
    from handlers import build_registry

    registry = registry or build_registry()
    return [str(i) for i in lint_graph(load_graph(text, registry=registry), registry, text)]


TYPOS = """digraph typos {
    graph [max_step=20, goal="be kind", rankdir=LR, version=3]
    start [shape=Mdiamond]
    done [shape=Msquare]
    classify [handler=classify, max_retires=2]
    llm_call [handler=llm_call, max_tokenz=5, timeot="2s", color=red, fontname=Helvetica]
    reject [handler=format, template="no: {reasn} {nosuchkey} {input} {session.id}"]
    start -> classify
    classify -> reject [condition="context.input.blockd=true || outcom=fail", colour=red]
    classify -> llm_call [condition="context.intent=question && node.classify.status=success"]
    classify -> llm_call
    llm_call -> done [condition="node.ghost.status=success", style=dashed]
    llm_call -> done
    reject -> done
}
"""


def test_lint_finds_every_typo_with_its_place_and_nearest_name() -> None:
    """Each misspelt attribute, key and placeholder is a warning at the name itself,
    with "did you mean" when a known name is close; Graphviz's own attributes, graph
    metadata and correct names are not mentioned."""
    assert lint(TYPOS) == [
        "<string>:2:12: warning: graph: the engine reads no attribute 'max_step'; "
        "did you mean 'max_steps'?",
        "<string>:5:33: warning: node 'classify': neither a handler nor the engine reads "
        "attribute 'max_retires'; did you mean 'max_retries'?",
        "<string>:6:33: warning: node 'llm_call': neither a handler nor the engine reads "
        "attribute 'max_tokenz'; did you mean 'max_tokens'?",
        "<string>:6:47: warning: node 'llm_call': neither a handler nor the engine reads "
        "attribute 'timeot'; did you mean 'timeout'?",
        "<string>:7:43: warning: node 'reject': template: placeholder {reasn} is filled by no "
        "key (it stays as written); did you mean '{reason}'?",
        "<string>:7:51: warning: node 'reject': template: placeholder {nosuchkey} is filled by "
        "no key (it stays as written)",
        "<string>:9:36: warning: edge classify -> reject: condition reads "
        "'context.input.blockd', which nothing sets; did you mean 'context.input.blocked'?",
        "<string>:9:65: warning: edge classify -> reject: condition reads 'outcom', which "
        "nothing sets; did you mean 'outcome'?",
        "<string>:9:79: warning: edge classify -> reject: attribute 'colour' is read by "
        "neither the engine nor Graphviz; did you mean 'color'?",
        "<string>:12:34: warning: edge llm_call -> done: condition reads "
        "'node.ghost.status', which nothing sets",
    ]


def test_a_graph_attribute_set_after_the_nodes_is_placed_where_it_is_written() -> None:
    """A typo in ``graph [...]`` or a bare ``name=value`` below a bracketed node points
    at the name, not at 1:1."""
    text = (
        "digraph g {\n  start [shape=Mdiamond]\n  done [shape=Msquare]\n  start -> done\n"
        "  max_stepz=4\n  graph [turn_timeot=3]\n}\n"
    )
    assert lint(text) == [
        "<string>:5:3: warning: graph: the engine reads no attribute 'max_stepz'; "
        "did you mean 'max_steps'?",
        "<string>:6:10: warning: graph: the engine reads no attribute 'turn_timeot'; "
        "did you mean 'turn_timeout'?",
    ]


def test_shipped_graphs_and_examples_lint_clean() -> None:
    """The graphs in graphs/ and the README's custom graph give no warning at all."""
    from pathlib import Path

    from engine.lint import lint_graph
    from handlers import build_registry

    registry = build_registry()
    for path in sorted(Path(__file__).parent.parent.glob("graphs/*.dot")):
        graph = load_graph(path, registry=registry)
        assert graph.warnings == () and lint_graph(graph, registry, path.read_text()) == []


def test_attribute_from_a_node_default_is_not_a_typo() -> None:
    """``node [max_tokens=...]`` lands on every node; an attribute some registered handler
    reads is accepted everywhere, while one nothing reads is still found, at the
    default statement that set it."""
    text = (
        "digraph {\n"
        "  node [max_tokens=64, max_tokenz=1]\n"
        "  start [shape=Mdiamond]; done [shape=Msquare]\n"
        "  llm_call [handler=llm_call]\n"
        "  start -> llm_call -> done\n"
        "}"
    )
    found = lint(text)
    assert len(found) == 3  # start, llm_call and done all carry max_tokenz
    assert all(f.startswith("<string>:2:24: warning:") and "'max_tokenz'" in f for f in found)


def test_an_undeclared_handler_is_trusted() -> None:
    """A handler registered without a declaration may read and write anything: its
    nodes' attributes are not checked, nor any condition key or placeholder."""
    from handlers import build_registry

    registry = build_registry()
    registry.register("shout", lambda node, ctx: {"shout.done": True})
    text = (
        "digraph {\n  start -> shout -> format -> done\n"
        '  shout [suffix="!"]\n  format [template="{shout.doen}"]\n'
        '  shout -> done [condition="context.shout.done=true"]\n}'
    )
    assert lint(text, registry) == []
    registry.register(
        "shout",
        lambda node, ctx: {"shout.done": True},
        replace=True,
        declares=Declaration(writes=("shout.done",), attrs=(Attr("suffix"),)),
    )
    assert lint(text, registry) == [
        "<string>:4:21: warning: node 'format': template: placeholder {shout.doen} is filled by "
        "no key (it stays as written); did you mean '{shout.done}'?"
    ]


def test_a_key_set_only_by_handlers_outside_the_graph_is_reported() -> None:
    """``llm.text`` is written by ``llm_call``; in a graph without one, nothing sets it."""
    text = (
        "digraph {\n start -> classify -> format -> done\n"
        ' classify -> done [condition="context.llm.text"]\n}'
    )
    assert lint(text) == [
        "<string>:3:31: warning: edge classify -> done: condition reads 'context.llm.text', "
        "which nothing sets"
    ]


def test_tool_arguments_and_session_keys_are_known() -> None:
    """``arg.*`` is the tool node's declared family; ``session.*`` keys come from the
    session; ``node.ID.status`` of an existing node comes from the runner."""
    text = (
        "digraph {\n start -> calc -> done\n"
        " calc [shape=parallelogram, tool=calculator, arg.expression=2]\n"
        ' calc -> done [condition="session.turn_count>3 && node.calc.status=fail"]\n}'
    )
    assert lint(text) == []


# --------------------------------------------------------------------------- the registry


def test_registry_declarations_are_kept_on_the_spec() -> None:
    """``declares`` is stored once, at registration, on the handler's spec."""
    decl = Declaration(summary="s", attrs=(Attr("n", "int", 1, "a number"),))
    registry = HandlerRegistry()

    @registry.handler("x", declares=decl)
    def x(node: object, ctx: object) -> None: ...

    assert registry.get("x").declaration is decl
    assert decl.attr("n") == Attr("n", "int", 1, "a number") and decl.attr("m") is None
    assert registry.copy().get("x").declaration is decl


# --------------------------------------------------------------------------- command line


def test_cli_validate_prints_lint_warnings_and_strict_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``validate`` prints the warnings and exits 0; ``--strict`` makes them errors (2)."""
    from engine.cli import main as cli

    path = tmp_path / "typos.dot"
    path.write_text(TYPOS)
    assert cli.main(["validate", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 11 and out[-1] == f"{path}: ok (5 nodes, 7 edges)"
    assert out[1].startswith(f"{path}:5:33: warning: node 'classify'")
    assert cli.main(["validate", "--strict", str(path)]) == 2
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 10 and all(": error: " in line for line in out)
    assert cli.main(["validate", "--strict", "graphs/turn.dot"]) == 0


def test_cli_validate_lints_a_graph_whose_only_errors_are_unknown_handlers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown handler does not hide the typos in the rest of the graph."""
    from engine.cli import main as cli

    path = tmp_path / "g.dot"
    path.write_text(
        "digraph {\n start -> clasify\n llm_call [timeot=2]\n"
        ' clasify -> llm_call [condition="outcome=success"]\n llm_call -> done\n}'
    )
    assert cli.main(["validate", str(path)]) == 2
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{path}:2:11: error: node 'clasify': unknown handler 'clasify' ")
    assert "(did you mean 'classify'?); registered: check_goals, choose_mode, classify," in out[0]
    assert out[1].startswith(f"{path}:2:11: warning: node 'clasify': every outgoing edge")
    assert out[2].startswith(f"{path}:3:12: warning: node 'llm_call': ")
    assert len(out) == 3


def test_cli_render_marks_the_problems_of_a_failing_graph(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A graph that fails validation is still drawn, offending nodes and edges in red
    with the messages as tooltip and xlabel; the exit code says it failed."""
    from engine.cli import main as cli
    from engine.dot import parse_dot

    src = tmp_path / "bad.dot"
    src.write_text(
        "digraph bad {\n start -> clasify -> done\n done -> start\n orphan [handler=format]\n}"
    )
    out = tmp_path / "bad.out.dot"
    assert cli.main(["render", str(src), "-o", str(out)]) == 2
    assert "problem(s) marked in red" in capsys.readouterr().err
    drawn = parse_dot(out.read_text(), str(out))
    clasify = drawn.nodes["clasify"].attrs
    assert clasify["color"] == "red" and "unknown handler 'clasify'" in str(clasify["tooltip"])
    assert "unreachable from start" in str(drawn.nodes["orphan"].attrs["xlabel"])
    assert "color" not in drawn.nodes["start"].attrs
    back = [e for e in drawn.edges if (e.src, e.dst) == ("done", "start")]
    assert back[0].attrs["color"] == "red"
    assert "edge out of the exit node" in str(back[0].attrs["tooltip"])
    assert str(drawn.attrs["label"]).startswith("bad: 5 error(s), 0 warning(s)")


@pytest.mark.skipif(not shutil.which("dot"), reason="Graphviz's dot is not installed")
def test_cli_render_draws_a_failing_graph_as_svg(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Graphviz accepts the marked drawing (red nodes carry their tooltip in the SVG)."""
    from engine.cli import main as cli

    src = tmp_path / "bad.dot"
    src.write_text('digraph {\n start -> a -> done\n a [handler="nope"]\n}')
    out = tmp_path / "bad.svg"
    assert cli.main(["render", str(src), "-o", str(out)]) == 2
    svg = out.read_text()
    assert "unknown handler &#39;nope&#39;" in svg and 'stroke="red"' in svg


def test_cli_render_of_a_valid_graph_with_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A graph that loads is rendered normalised as before (exit 0); its warnings go to
    stderr, so the drawing on stdout stays clean."""
    from engine.cli import main as cli

    path = tmp_path / "typos.dot"
    path.write_text(TYPOS)
    assert cli.main(["render", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("// normalised by turngraph")
    assert "xlabel" not in captured.out and "penwidth" not in captured.out
    assert len(captured.err.splitlines()) == 10
    assert "did you mean 'max_retries'?" in captured.err


def test_every_graphviz_attribute_pydot_knows_is_never_warned_about() -> None:
    """The list of Graphviz's attributes covers pydot's (nodes, edges, graphs, clusters)."""
    import pydot.core

    known = {
        *pydot.core.NODE_ATTRIBUTES,
        *pydot.core.EDGE_ATTRIBUTES,
        *pydot.core.GRAPH_ATTRIBUTES,
        *pydot.core.CLUSTER_ATTRIBUTES,
    }
    from engine.lint import GRAPHVIZ_ATTRS

    assert known <= GRAPHVIZ_ATTRS
    attrs = ", ".join(f'{a}="1"' for a in sorted(known - {"label", "shape", "style"}))
    text = f"digraph {{\n graph [{attrs}]\n start -> classify -> done\n classify [{attrs}]\n"
    assert lint(text + f" classify -> done [{attrs}]\n}}") == []
