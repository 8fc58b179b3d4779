"""Attractor's ``model_stylesheet``: CSS-like rules choosing a node's model settings.

::

    model_stylesheet="
        * { llm_model: claude-sonnet-4-5; llm_provider: anthropic; }
        box { reasoning_effort: medium; }
        .code { llm_model: claude-opus-4-6; }
        #critical_review { llm_model: gpt-5.2; llm_provider: openai; }
    "

A rule is a selector and ``property: value`` declarations separated by ``;``.
Selectors, by specificity: ``*`` (every node, 0), a shape name (``box``, 1), ``.class``
(a node whose ``class`` lists it, 2), ``#id`` (one node, 3).  A more specific rule wins;
among equally specific ones the later wins.  Properties are :data:`PROPERTIES`; a value
is a bare word or a quoted string.  An attribute written on the node itself always
wins over the stylesheet (:func:`styled` fills only what is missing).

Used by the ``attractor`` dialect (:mod:`engine.attractor`) as a load-time transform,
so a compiled graph already carries each node's ``llm_model`` and the run pays nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from engine.conditions import lex
from engine.errors import GraphError

__all__ = [
    "PROPERTIES",
    "Rule",
    "StylesheetError",
    "node_classes",
    "parse_stylesheet",
    "styled",
    "styler",
]

PROPERTIES = frozenset({"llm_model", "llm_provider", "reasoning_effort"})
"""The properties a stylesheet may set (Attractor spec §8.4)."""

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<punct>[{};:])
      | (?P<quoted>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<selector>\*|[#.][A-Za-z0-9_\-]+)
      | (?P<word>[^\s{};:"']+)
    )""",
    re.VERBOSE | re.DOTALL,
)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*\Z")


class StylesheetError(GraphError):
    """A stylesheet that does not parse; ``pos`` is the 0-based offset in ``text``."""

    def __init__(self, pos: int, reason: str) -> None:
        super().__init__(f"model_stylesheet: {reason} at offset {pos}")
        self.pos = pos
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule: its selector, specificity, source order and declarations."""

    selector: str
    specificity: int
    order: int
    values: Mapping[str, str]

    def matches(self, node_id: str, shape: str, classes: frozenset[str]) -> bool:
        """Whether the rule applies to a node with this id, shape and classes."""
        kind, name = self.selector[:1], self.selector[1:]
        if self.selector == "*":
            return True
        if kind == "#":
            return name == node_id
        if kind == ".":
            return name in classes
        return self.selector.lower() == shape.lower()


def _tokens(text: str) -> list[tuple[str, str, int]]:
    return lex(_TOKEN, text, StylesheetError)


class _Parser:
    """Recursive descent over the tokens: rules, each a selector and its block."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.i = 0

    def fail(self, expected: str) -> StylesheetError:
        if self.i < len(self.tokens):
            _, found, pos = self.tokens[self.i]
            return StylesheetError(pos, f"expected {expected}, found {found!r}")
        return StylesheetError(len(self.text), f"expected {expected}, found end of stylesheet")

    def take(self, *kinds: str, text: str | None = None) -> str | None:
        if self.i < len(self.tokens):
            kind, value, _ = self.tokens[self.i]
            if kind in kinds and (text is None or value == text):
                self.i += 1
                return value
        return None

    def rules(self) -> tuple[Rule, ...]:
        rules: list[Rule] = []
        while self.i < len(self.tokens):
            selector = self.take("selector") or self.take("word")
            if selector is None or not (selector[0] in "*#." or _NAME.match(selector)):
                raise self.fail("a selector (*, SHAPE, .class or #id)")
            if self.take("punct", text="{") is None:
                raise self.fail("'{'")
            specificity = {"*": 0, ".": 2, "#": 3}.get(selector[0], 1)
            rules.append(Rule(selector, specificity, len(rules), self.block()))
        if not rules:
            raise self.fail("a rule")
        return tuple(rules)

    def block(self) -> dict[str, str]:
        values: dict[str, str] = {}
        while self.take("punct", text="}") is None:
            prop = self.take("word")
            if prop is None:
                raise self.fail("a property or '}'")
            if prop not in PROPERTIES:
                self.i -= 1
                raise self.fail("one of " + ", ".join(sorted(PROPERTIES)))
            if self.take("punct", text=":") is None:
                raise self.fail("':'")
            value = self.take("word", "quoted")
            if value is None:
                raise self.fail(f"a value for {prop}")
            values[prop] = _unquote(value)
            if self.take("punct", text=";") is None and not self._at("}"):
                raise self.fail("';' or '}'")
        return values

    def _at(self, text: str) -> bool:
        return self.i < len(self.tokens) and self.tokens[self.i][1] == text


def _unquote(value: str) -> str:
    if value[:1] in "\"'":
        return re.sub(r"\\(.)", r"\1", value[1:-1], flags=re.DOTALL)
    return value


def parse_stylesheet(text: str) -> tuple[Rule, ...]:
    """The rules of ``text`` in source order; raises :class:`StylesheetError`."""
    return _Parser(text).rules()


def node_classes(value: object) -> frozenset[str]:
    """A node's ``class`` attribute as a set (comma- or space-separated names)."""
    if not isinstance(value, str):
        return frozenset()
    return frozenset(c for c in re.split(r"[\s,]+", value) if c)


def styler(rules: Sequence[Rule]) -> Callable[[str, str, frozenset[str]], dict[str, str]]:
    """:func:`styled` for many nodes: the rules indexed by selector once, so each node
    costs the rules that match it rather than every rule (a stylesheet with a ``#id``
    rule per node of a large graph was quadratic)."""
    index: dict[str, list[Rule]] = {}
    for rule in rules:
        key = rule.selector.lower() if rule.specificity == 1 else rule.selector  # shapes: any case
        index.setdefault(key, []).append(rule)

    def style(node_id: str, shape: str, classes: frozenset[str]) -> dict[str, str]:
        keys = ("*", shape.lower(), *(f".{c}" for c in classes), f"#{node_id}")
        found = sorted(
            (r for k in keys for r in index.get(k, ())), key=lambda r: (r.specificity, r.order)
        )
        chosen: dict[str, str] = {}
        for rule in found:
            chosen.update(rule.values)
        return chosen

    return style


def styled(
    rules: Sequence[Rule], node_id: str, shape: str, classes: frozenset[str]
) -> dict[str, str]:
    """The properties ``rules`` give one node (more specific, then later, rules win)."""
    return styler(rules)(node_id, shape, classes)
