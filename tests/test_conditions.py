"""The edge-condition language: grammar, lookups, comparison rules, errors."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.conditions import ConditionSyntaxError, compile_condition
from engine.errors import GraphError


def holds(text: str, **context: Any) -> bool:
    """Compile ``text`` and evaluate it on ``context`` (dots spelled as ``__``)."""
    condition = compile_condition(text)
    assert condition is not None
    assert condition.source == text
    return condition({k.replace("__", "."): v for k, v in context.items()})


@pytest.mark.parametrize(
    ("text", "context", "expected"),
    [
        ("outcome=success", {"outcome": "success"}, True),
        ("outcome=success", {"outcome": "fail"}, False),
        ("outcome==success", {"outcome": "success"}, True),
        ("outcome!=success", {"outcome": "fail"}, True),
        ("outcome != success", {"outcome": "success"}, False),
        ("preferred_label=retry", {"preferred_label": "retry"}, True),
        ("turn<10", {"turn": 9}, True),
        ("turn<10", {"turn": 10}, False),
        ("turn<=10", {"turn": 10}, True),
        ("turn>2.5", {"turn": "3"}, True),
        ("turn>=3", {"turn": 3.0}, True),
        ("turn=10", {"turn": "10.0"}, True),
        ("turn=10", {"turn": 10}, True),
        ("name<b", {"name": "a"}, False),
        ("flag=true", {"flag": True}, True),
        ("flag=false", {"flag": False}, True),
        ("x='a b'", {"x": "a b"}, True),
        ('x="a \\" b"', {"x": 'a " b'}, True),
    ],
)
def test_comparisons(text: str, context: dict[str, Any], expected: bool) -> None:
    """Numeric when both sides are numbers, text equality otherwise, ordering only on numbers."""
    condition = compile_condition(text)
    assert condition is not None
    assert condition(context) is expected


def test_context_prefix_looks_up_short_then_long_key() -> None:
    """``context.X`` reads context["X"], then context["context.X"]."""
    assert holds("context.intent=question", intent="question")
    assert holds("context.intent=question", context__intent="question")
    assert not holds("context.intent=question", intent="chat", context__intent="question")


def test_other_keys_are_read_as_written() -> None:
    """Dotted keys such as session.turn_count are context keys verbatim."""
    assert holds("session.turn_count>=3", session__turn_count=3)
    assert holds("node.recall.status=success", node__recall__status="success")
    assert not holds("session.turn_count>=3", turn_count=5)


def test_missing_keys_make_comparisons_false_except_not_equal() -> None:
    """A missing key is None: =, <, > are false and != is true."""
    for op in ("=", "==", "<", "<=", ">", ">="):
        assert not holds(f"missing{op}1")
        assert not holds(f"missing{op}x")
    assert holds("missing!=1")
    assert holds("missing!=x")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, False),
        ("", False),
        ("false", False),
        ("FALSE", False),
        ("0", False),
        ("no", False),
        (0, False),
        (False, False),
        ([], False),
        ("yes", True),
        ("anything", True),
        (1, True),
        (True, True),
        (["x"], True),
    ],
)
def test_bare_key_is_truthiness(value: Any, expected: bool) -> None:
    """A bare key tests truthiness; ``!key`` negates it."""
    assert holds("flag", flag=value) is expected
    assert holds("!flag", flag=value) is (not expected)


def test_and_binds_tighter_than_or() -> None:
    """``a || b && c`` is ``a || (b && c)``."""
    assert holds("a || b && c", a=True, b=False, c=False)
    assert not holds("(a || b) && c", a=True, b=False, c=False)
    assert holds("a && b || c", a=False, b=True, c=True)


def test_negation_and_parentheses_nest() -> None:
    """``!`` applies to a parenthesised group as well as to a key."""
    assert holds("!(outcome=fail || retries>3)", outcome="success", retries=1)
    assert not holds("!(outcome=fail || retries>3)", outcome="success", retries=4)
    assert holds("!!x", x=True)


def test_long_chains() -> None:
    """Three or more clauses in a row combine correctly."""
    assert holds("a && b && c", a=1, b=1, c=1)
    assert not holds("a && b && c", a=1, b=0, c=1)
    assert holds("a || b || c", a=0, b=0, c=1)
    assert not holds("a || b || c", a=0, b=0, c=0)


def test_blank_condition_is_no_condition() -> None:
    """An empty or blank condition means the edge is unconditional."""
    assert compile_condition("") is None
    assert compile_condition("   ") is None


def test_evaluation_never_raises() -> None:
    """Odd context values and odd contexts read as false instead of raising."""

    class Bad:
        def __str__(self) -> str:
            raise RuntimeError("boom")

    condition = compile_condition("x=1 && y=a")
    assert condition is not None
    assert condition({"x": Bad(), "y": "a"}) is False
    assert condition({"x": object(), "y": "a"}) is False
    assert condition(None) is False  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "pos", "reason"),
    [
        ("outcome=", 8, "expected a value"),
        ("&& x", 0, "expected a key"),
        ("(a", 2, "expected ')'"),
        ("a b", 2, "expected '&&' or '||'"),
        ("a = = b", 4, "expected a value"),
        ("1x=2", 0, "expected a key"),
        ("a=b)", 3, "expected '&&' or '||'"),
        ('a="b', 2, "unexpected '\"'"),
        ("a ||", 4, "expected a key"),
        ("(" * 40 + "a" + ")" * 40, 32, "nesting too deep"),
        ("!" * 40 + "a", 32, "nesting too deep"),
    ],
)
def test_syntax_errors_name_the_position(text: str, pos: int, reason: str) -> None:
    """A bad condition raises ConditionSyntaxError (a GraphError) with the offset."""
    with pytest.raises(ConditionSyntaxError) as info:
        compile_condition(text)
    assert isinstance(info.value, GraphError)
    assert info.value.pos == pos
    assert reason in info.value.reason
    assert info.value.text == text


CONDITION_TOKENS = [
    "outcome", "context.x", "turn", "=", "==", "!=", "<", "<=", ">", ">=", "&&", "||",
    "!", "(", ")", "success", "10", "-1.5", "'q'", '"a b"', " ",
]  # fmt: skip


@settings(max_examples=200, deadline=None, database=None)
@given(
    st.text(max_size=60) | st.lists(st.sampled_from(CONDITION_TOKENS), max_size=20).map("".join),
    st.dictionaries(
        st.sampled_from(["outcome", "x", "context.x", "turn"]),
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    ),
)
def test_compile_either_works_or_raises_syntax_error(text: str, context: dict[str, Any]) -> None:
    """Any text compiles or raises ConditionSyntaxError; evaluation returns a bool."""
    try:
        condition = compile_condition(text)
    except ConditionSyntaxError:
        return
    if condition is not None:
        assert condition(context) in (True, False)


@pytest.mark.parametrize(
    ("pattern", "at"),
    [("(a+)+$", 4), ("(a*)*", 4), (r"(\w*\s?)*", 8), ("((a)+)+", 6), ("([a-z]+){1,}", 8)],
)
def test_matches_refuses_a_repeated_group_holding_a_repetition(pattern: str, at: int) -> None:
    """``(a+)+`` takes seconds on 24 characters, minutes on 30: refused at load, naming
    where in the expression (a hostile .dot file must not hang a server's event loop)."""
    text = 'x matches "{}"'.format(pattern.replace("\\", "\\\\"))  # quoted: \\ is \
    with pytest.raises(ConditionSyntaxError) as info:
        compile_condition(text, extended=True)
    assert info.value.reason.startswith("bad expression: a repeated group holding a repetition")
    assert info.value.reason.endswith(f"at position {at}")


@pytest.mark.parametrize(
    "pattern",
    ["(?:ab)+", "(a+)?", "(a{2})+", "[(]a+[)]+", r"\(a+\)+", "x(ab)+c", "PASS$", "^(yes|no)$"],
)
def test_matches_takes_repetitions_that_cannot_nest(pattern: str) -> None:
    text = 'x matches "{}"'.format(pattern.replace("\\", "\\\\"))
    condition = compile_condition(text, extended=True)
    assert condition is not None and condition({"x": "zz"}) in (True, False)
