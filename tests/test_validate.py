"""Validation: every rule, every problem reported at once with its place."""

from __future__ import annotations

from datetime import timedelta

import pytest

from engine.errors import GraphValidationError, Issue
from engine.graph import Value
from engine.loader import load_graph
from engine.registry import HandlerRegistry
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
    """With a registry, an unregistered handler is an error naming node and line."""
    text = "digraph {\n start -> recall -> done\n recall [handler=recal]\n}"
    registry = registry_of("start", "done", "recall")
    assert messages(text, registry) == [
        "<string>:3:2: error: node 'recall': unknown handler 'recal'",
    ]


def test_without_registry_any_handler_is_accepted() -> None:
    """No registry: handler names are not checked at load."""
    graph = load_graph("digraph { start -> x -> done; x [handler=whatever] }")
    assert graph.nodes["x"].handler == "whatever"


def test_node_id_must_be_registered_when_it_is_the_handler() -> None:
    """A node without handler/type/shape uses its id, which must then be registered."""
    text = "digraph { start -> summarise -> done }"
    assert messages(text, registry_of("start", "done")) == [
        "<string>:1:20: error: node 'summarise': unknown handler 'summarise'",
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
        (3, "node 'a': unknown handler 'nope'"),
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
