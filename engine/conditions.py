"""The edge-condition language, compiled to Python closures at load time.

::

    condition="outcome=success"
    condition="context.intent=question && turn<10"
    condition="!context.done || (outcome!=fail && preferred_label=\\"retry\\")"

Grammar (``&&`` binds tighter than ``||``; ``!`` negates what follows it)::

    expr    := and ( "||" and )*
    and     := unary ( "&&" unary )*
    unary   := "!" unary | "(" expr ")" | clause
    clause  := key [ op value ]
    op      := "=" | "==" | "!=" | "<" | "<=" | ">" | ">="

**Keys** are names made of letters, digits, ``_``, ``.`` and ``-``:

* ``outcome`` (the last node's status) and ``preferred_label`` are read from the
  context, where the runner puts them before edges are chosen;
* ``context.X`` reads ``context["X"]``, falling back to ``context["context.X"]``;
* any other key is read as written: ``session.turn_count`` reads
  ``context["session.turn_count"]``, ``node.recall.status`` the status the runner
  recorded for node ``recall``.

**Values** are bare words (``success``, ``10``, ``-1.5``) or quoted with ``"`` or
``'`` (inside, a backslash escapes the next character).

**Word operators** (the ``attractor`` dialect only, ``extended=True``):
``key contains value`` holds when the value found is a string containing ``value`` or a
list, tuple or set holding it (as text); ``key matches value`` when the regular
expression ``value`` matches somewhere in the value as text (a bad expression is a
syntax error, and so is a repeated group holding a repetition such as ``(a+)+``, which
can backtrack for minutes on a text it almost matches: :func:`nested_repeat`).
``!tool.output contains "id"`` negates as usual.

**Semantics.** When both sides read as numbers the comparison is numeric
(``turn<10`` with ``turn`` = ``"9"`` is true); otherwise ``=``/``==``/``!=`` compare
text (``True``/``False`` read as ``true``/``false``) and ``<``, ``<=``, ``>``, ``>=``
are false.  A missing key (or ``None``) makes every comparison false except ``!=``,
which is true.  A bare key tests truthiness: missing, ``None``, ``False``, ``0``,
empty, and the strings ``false``, ``0``, ``no`` (any case) are false.  An empty
condition means "no condition".  Evaluating a compiled condition never raises.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from typing import Any

from engine.errors import GraphError
from engine.graph import Condition

__all__ = ["ConditionSyntaxError", "compile_condition", "condition_keys", "lex", "nested_repeat"]

Test = Callable[[Mapping[str, Any]], bool]
_MISSING: Any = object()


class ConditionSyntaxError(GraphError):
    """A condition that does not parse; ``pos`` is the 0-based offset in ``text``."""

    def __init__(self, text: str, pos: int, reason: str) -> None:
        super().__init__(f"condition {text!r}: {reason} at column {pos + 1}")
        self.text = text
        self.pos = pos
        self.reason = reason


# --------------------------------------------------------------------------- lexing

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<op>&&|\|\||==|!=|<=|>=|=|<|>|!|\(|\))
      | (?P<quoted>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<word>[^\s&|()!=<>"']+)
    )""",
    re.VERBOSE | re.DOTALL,
)
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\Z")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\Z")
_MAX_DEPTH = 32
"""Nested ``!`` and parentheses allowed; keeps parsing and evaluation far from the
recursion limit."""
_FALSY = frozenset({"", "false", "0", "no"})
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}

_WORD_OPS = ("contains", "matches")
_Token = tuple[str, str, int]  # (kind, text, offset)


def lex(pattern: re.Pattern[str], text: str, fail: Callable[[int, str], Exception]) -> list[_Token]:
    """``text`` cut into ``(kind, text, offset)`` tokens by ``pattern``'s named groups
    (each alternative skips leading blanks); ``fail(offset, reason)`` is raised at the
    first character no alternative takes.  Shared by conditions and stylesheets."""
    tokens: list[_Token] = []
    pos = 0
    while pos < len(text):
        match = pattern.match(text, pos)
        if match is None or match.lastgroup is None:
            if text[pos:].strip():
                bad = len(text) - len(text[pos:].lstrip())
                raise fail(bad, f"unexpected {text[bad]!r}")
            break
        kind = match.lastgroup
        tokens.append((kind, match.group(kind), match.start(kind)))
        pos = match.end()
    return tokens


def _lex(text: str) -> list[_Token]:
    return lex(_TOKEN, text, lambda at, why: ConditionSyntaxError(text, at, why))


# --------------------------------------------------------------------------- values


def _as_text(value: Any) -> str:
    if value is True or value is False:
        return "true" if value else "false"
    return str(value)


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        return float(value)
    return None


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in _FALSY
    return bool(value)


# --------------------------------------------------------------------------- clauses
#
# A clause is a lookup and a predicate on the value found.  Each clause catches its
# own exceptions (odd values whose __str__ raises, a context that is not a mapping),
# so the and/or/not combinators above them need no wrapper and evaluation never raises.

Predicate = Callable[[Any], bool]


def _leaf(key: str, pred: Predicate) -> Test:
    """``pred`` applied to the value of ``key`` in the context (see module doc)."""
    if key.startswith("context.") and len(key) > len("context."):
        short = key[len("context.") :]

        def test_context(ctx: Mapping[str, Any]) -> bool:
            try:
                value = ctx.get(short, _MISSING)
                return pred(ctx.get(key) if value is _MISSING else value)
            except Exception:
                return False

        return test_context

    def test(ctx: Mapping[str, Any]) -> bool:
        try:
            return pred(ctx.get(key))
        except Exception:
            return False

    return test


def _text_predicate(op: str, literal: str) -> Predicate:
    """Comparison with a value that is not a number: text equality only."""
    if op in ("=", "=="):
        return lambda v: (
            v == literal if v.__class__ is str else (v is not None and _as_text(v) == literal)
        )
    if op == "!=":
        return lambda v: (
            v != literal if v.__class__ is str else (v is None or _as_text(v) != literal)
        )
    return lambda v: False


def _number_predicate(op: str, literal: str) -> Predicate:
    """Comparison with a number: numeric if the value is one too, else as text."""
    compare, number = _COMPARE[op], float(literal)
    as_text = _text_predicate(op, literal)

    def pred(value: Any) -> bool:
        found = _as_number(value)
        return as_text(value) if found is None else compare(found, number)

    return pred


_REPEAT = re.compile(r"[*+]|\{(\d*)(,?)(\d*)\}")


def _repeats(match: re.Match[str]) -> bool:
    """Whether a quantifier repeats a variable number of times (``*``, ``+``, ``{1,}``,
    ``{0,3}``; not ``{2}``, a fixed count, which leaves nothing to backtrack over)."""
    if match.group() in ("*", "+"):
        return True
    _, comma, high = match.groups()
    return bool(comma) and (not high or int(high) > 1)


def _class_end(pattern: str, i: int) -> int:
    """The offset after the character class opening at ``i`` (``[...]``)."""
    j = i + 1
    j += pattern.startswith("^", j)
    j += pattern.startswith("]", j)  # a leading "]" is literal
    while j < len(pattern) and pattern[j] != "]":
        j += 2 if pattern[j] == "\\" else 1
    return j + 1


def nested_repeat(pattern: str) -> int | None:
    """The offset of a repeated group that holds a repetition, such as ``(a+)+`` or
    ``(\\w*\\s?)*``, else ``None``.

    Such a pattern can take exponential time on a text it almost matches
    (catastrophic backtracking), and a condition is evaluated inside the run: a
    ``matches`` holding one is refused at load.  Other slow shapes (``(a|a)*``,
    ``.*.*.*x`` on a long text) are not detected.
    """
    groups: list[bool] = []  # per open group: whether it holds a repetition yet
    held = False  # the atom just read is a group holding a repetition
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        quantifier = _REPEAT.match(pattern, i)
        if quantifier is not None and _repeats(quantifier):
            if held:
                return i
            if groups:
                groups[-1] = True
            i, held = quantifier.end(), False
            continue
        if ch == ")":
            held = groups.pop() if groups else False
            if held and groups:
                groups[-1] = True
            i += 1
            continue
        if ch == "(":
            groups.append(False)
        held = False
        i = _class_end(pattern, i) if ch == "[" else i + (2 if ch == "\\" else 1)
    return None


def _word_predicate(op: str, literal: str) -> Predicate:
    """``contains`` and ``matches``: tests on the value found as text (or a collection)."""
    if op == "matches":
        pattern = re.compile(literal)
        at = nested_repeat(literal)
        if at is not None:
            raise re.error("a repeated group holding a repetition (slow to fail)", literal, at)
        return lambda v: v is not None and pattern.search(_as_text(v)) is not None

    def contains(value: Any) -> bool:
        if isinstance(value, list | tuple | set | frozenset):
            return any(_as_text(item) == literal for item in value)
        return value is not None and literal in _as_text(value)

    return contains


def _clause(key: str, op: str, literal: str) -> Test:
    if op in _WORD_OPS:
        return _leaf(key, _word_predicate(op, literal))
    if _NUMBER.match(literal.strip()):
        return _leaf(key, _number_predicate(op, literal))
    return _leaf(key, _text_predicate(op, literal))


# --------------------------------------------------------------------------- parsing


class _Parser:
    """Recursive descent over the token list, building closures as it goes."""

    def __init__(self, text: str, extended: bool = False) -> None:
        self.text = text
        self.extended = extended
        self.tokens = _lex(text)
        self.i = 0
        self.depth = 0
        self.keys: list[tuple[str, int]] = []

    def peek(self) -> _Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def fail(self, reason: str) -> ConditionSyntaxError:
        token = self.peek()
        pos = token[2] if token else len(self.text)
        found = f"{token[1]!r}" if token else "end of condition"
        return ConditionSyntaxError(self.text, pos, f"{reason}, found {found}")

    def accept(self, *texts: str) -> str | None:
        token = self.peek()
        if token is not None and token[0] == "op" and token[1] in texts:
            self.i += 1
            return token[1]
        return None

    def parse(self) -> Test:
        test = self.expr()
        if self.peek() is not None:
            raise self.fail("expected '&&' or '||'")
        return test

    def expr(self) -> Test:
        parts = [self.conj()]
        while self.accept("||"):
            parts.append(self.conj())
        return parts[0] if len(parts) == 1 else _any(tuple(parts))

    def conj(self) -> Test:
        parts = [self.unary()]
        while self.accept("&&"):
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else _all(tuple(parts))

    def unary(self) -> Test:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise self.fail("nesting too deep")
        try:
            return self._unary()
        finally:
            self.depth -= 1

    def _unary(self) -> Test:
        if self.accept("!"):
            inner = self.unary()
            return lambda ctx: not inner(ctx)
        if self.accept("("):
            inner = self.expr()
            if not self.accept(")"):
                raise self.fail("expected ')'")
            return inner
        return self.clause()

    def clause(self) -> Test:
        token = self.peek()
        if token is None or token[0] != "word" or not _KEY.match(token[1]):
            raise self.fail("expected a key")
        self.keys.append((token[1], token[2]))
        self.i += 1
        op = self.accept(*_COMPARE) or self._word_op()
        if op is None:
            return _leaf(token[1], _truthy)
        value = self.peek()
        if value is None or value[0] == "op":
            raise self.fail(f"expected a value after {op!r}")
        self.i += 1
        try:
            return _clause(token[1], op, _unquote(value))
        except re.error as exc:
            raise ConditionSyntaxError(self.text, value[2], f"bad expression: {exc}") from None

    def _word_op(self) -> str | None:
        token = self.peek()
        if self.extended and token is not None and token[:2] in {("word", w) for w in _WORD_OPS}:
            self.i += 1
            return token[1]
        return None


def _unquote(token: _Token) -> str:
    kind, text, _ = token
    if kind == "quoted":
        return re.sub(r"\\(.)", r"\1", text[1:-1], flags=re.DOTALL)
    return text


def _all(parts: tuple[Test, ...]) -> Test:
    if len(parts) == 2:
        first, second = parts
        return lambda ctx: first(ctx) and second(ctx)
    return lambda ctx: all(part(ctx) for part in parts)


def _any(parts: tuple[Test, ...]) -> Test:
    if len(parts) == 2:
        first, second = parts
        return lambda ctx: first(ctx) or second(ctx)
    return lambda ctx: any(part(ctx) for part in parts)


def compile_condition(text: str, *, extended: bool = False) -> Condition | None:
    """Compile ``text`` into a :class:`~engine.graph.Condition`; ``None`` if it is blank.

    ``extended`` adds the word operators ``contains`` and ``matches`` (the ``attractor``
    dialect).

    Raises :class:`ConditionSyntaxError` (a :class:`~engine.errors.GraphError`) with
    the offending offset; the loader turns it into an issue naming the edge.
    """
    if not text.strip():
        return None
    return Condition(text, _Parser(text, extended).parse())


def condition_keys(text: str, *, extended: bool = False) -> tuple[tuple[str, int], ...]:
    """The keys ``text`` reads, each with its 0-based offset, in order (for ``validate``).

    Raises :class:`ConditionSyntaxError` like :func:`compile_condition`.
    """
    parser = _Parser(text, extended)
    parser.parse()
    return tuple(parser.keys)
