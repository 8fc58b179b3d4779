"""Every rule a turn graph must follow, each problem reported as an :class:`Issue`.

Nothing here raises: each check returns its issues, the loader gathers all of them
and raises one :class:`~engine.errors.GraphValidationError` if any is an error.

**Attribute types.** Known attributes have a declared kind (:data:`NODE_KINDS`,
:data:`EDGE_KINDS`, :data:`GRAPH_KINDS`); a value of the wrong kind is an error
naming the node or edge and its line (``max_retries="lots"``, ``timeout="soon"``).

* ``count``: an integer ≥ 0; ``positive``: an integer ≥ 1; ``int``: any integer.
* ``factor``: a number ≥ 1; ``number``: any number (``2``, ``2.0``).
* ``bool``: ``true``/``false``/``yes``/``no``/``1``/``0`` (any case).
* ``duration``: ``250ms``, ``2s``, ``1.5s``, ``5m``, ``1h``, ``1d``, or a bare number
  of seconds, ≥ 0; typed as :class:`datetime.timedelta`.
* ``text``: kept as the string written (``label``, ``prompt``, ``condition``...).

Any other attribute is inferred: an integer, a float, ``true``/``false``, a duration
with a unit, else a string.  Quotes do not matter: ``x="2"`` and ``x=2`` are both 2.

**Structure.**

* exactly one start node, at least one exit node (see :mod:`engine.loader` for
  what makes a node a start or an exit);
* no edge into the start node, no edge out of an exit;
* every node reachable from the start; from every node an exit reachable;
* edges are directed (``->``) in a ``digraph``; a node named only in an edge is a
  node like any other (Graphviz creates it), so no edge can dangle;
* ``retry_target`` / ``fallback_retry_target`` name existing nodes;
* every fan-out (``parallel``) has one fan-in every branch reaches, no branch escapes to
  an exit or leads back into its fan-out, a fan-out nested in a branch joins at a fan-in
  of its own; a fan-in's ``join``/``merge`` are known and a quorum is at most the number
  of branches (:mod:`engine.branches`);
* with a registry, every node's handler is registered (the error names the nearest
  registered handler and lists them in alphabetical order).

A node whose outgoing edges all carry conditions gets a *warning*: when none of the
conditions holds, the run has no route out of it.  Warnings that need the handlers'
declarations (attributes nothing reads, condition keys nothing sets, placeholders
nothing fills) are :mod:`engine.lint`'s.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Literal

from engine.branches import branch_issues
from engine.errors import Issue
from engine.graph import Edge, Node, Value

__all__ = [
    "EDGE_KINDS",
    "GRAPH_KINDS",
    "NODE_KINDS",
    "Kind",
    "closest",
    "handler_issues",
    "names_by_nearness",
    "structure_issues",
    "type_attrs",
    "type_value",
]

Kind = Literal["text", "int", "count", "positive", "factor", "number", "bool", "duration"]

_TEXT_ATTRS = (
    "label",
    "xlabel",
    "prompt",
    "template",
    "condition",
    "handler",
    "type",
    "shape",
    "tooltip",
    "comment",
    "class",
    "style",
    "color",
    "fillcolor",
    "fontcolor",
    "fontname",
    "goal",
    "id",
    "url",
    "href",
    "model",
    "tailport",
    "headport",
    "name",
    "retry_target",
    "fallback_retry_target",
    "join",
    "merge",
    "graph",
    "inputs",
    "outputs",
    "dialect",
)
_RETRY_KINDS: dict[str, Kind] = {
    "retry.initial_delay": "duration",
    "retry.delay": "duration",
    "retry.factor": "factor",
    "retry.max_delay": "duration",
    "retry.jitter": "bool",
}
NODE_KINDS: Mapping[str, Kind] = {
    **dict.fromkeys(_TEXT_ATTRS, "text"),
    **_RETRY_KINDS,
    "max_retries": "count",
    "timeout": "duration",
    "blocking": "bool",
    "max_parallel": "positive",
    "goal_gate": "bool",
}
EDGE_KINDS: Mapping[str, Kind] = {**dict.fromkeys(_TEXT_ATTRS, "text"), "weight": "int"}
GRAPH_KINDS: Mapping[str, Kind] = {
    **dict.fromkeys(_TEXT_ATTRS, "text"),
    **_RETRY_KINDS,
    "max_steps": "positive",
    "turn_timeout": "duration",
    "default_max_retries": "count",
}

_INT = re.compile(r"[-+]?\d+\Z")
_FLOAT = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?\Z")
_DURATION = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h|d)\Z")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_BOOLS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
_EXPECTED = {
    "int": "an integer",
    "count": "an integer >= 0",
    "positive": "an integer >= 1",
    "factor": "a number >= 1",
    "number": "a number",
    "bool": "true or false",
    "duration": "a duration such as 250ms, 2s, 5m or 1h",
}


class _BadValue(Exception):
    """A value that does not fit its declared kind (internal; becomes an Issue)."""


def _duration(text: str) -> timedelta | None:
    match = _DURATION.match(text)
    if match is None:
        return None
    return timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])


def _typed(kind: Kind, text: str) -> Value:
    s = text.strip()
    if kind in ("int", "count", "positive"):
        value = int(s) if _INT.match(s) else None
        low = {"int": None, "count": 0, "positive": 1}[kind]
        if value is None or (low is not None and value < low):
            raise _BadValue
        return value
    if kind in ("factor", "number"):
        # "1e400" reads as inf: no weight or factor is infinite.
        if not _FLOAT.match(s) or not math.isfinite(float(s)):
            raise _BadValue
        if kind == "factor" and float(s) < 1.0:
            raise _BadValue
        return int(s) if kind == "number" and _INT.match(s) else float(s)
    if kind == "bool":
        if s.lower() not in _BOOLS:
            raise _BadValue
        return _BOOLS[s.lower()]
    duration = _duration(s)
    if duration is None and _FLOAT.match(s):
        duration = timedelta(seconds=float(s))
    if duration is None or duration < timedelta(0):
        raise _BadValue
    return duration


def _inferred(text: str) -> Value:
    s = text.strip()
    try:
        if _INT.match(s):
            return int(s)
        if _FLOAT.match(s):
            return float(s)
        if s in ("true", "false"):
            return s == "true"
        duration = _duration(s)
        return text if duration is None else duration
    except (ValueError, OverflowError):  # 5000-digit ints, 1e999h: leave as written
        return text


def type_value(key: str, text: str, kinds: Mapping[str, Kind]) -> Value:
    """``text`` typed by ``key``'s declared kind (inferred if undeclared).

    Raises ``ValueError`` with the expectation (``"an integer >= 0"``) if it does
    not fit.
    """
    kind = kinds.get(key)
    if kind is None:
        return _inferred(text)
    if kind == "text":
        return text
    try:
        return _typed(kind, text)
    except (_BadValue, ValueError, OverflowError):
        raise ValueError(_EXPECTED[kind]) from None


def type_attrs(
    attrs: Mapping[str, str | None], kinds: Mapping[str, Kind]
) -> tuple[dict[str, Value], list[str]]:
    """Type every attribute; returns the typed map and one message per bad value."""
    typed: dict[str, Value] = {}
    problems: list[str] = []
    for key, text in attrs.items():
        if text is None:
            problems.append(f"attribute {key!r} has no value")
            continue
        try:
            typed[key] = type_value(key, text, kinds)
        except ValueError as exc:
            problems.append(f"{key} must be {exc}, not {text!r}")
    return typed, problems


# --------------------------------------------------------------------------- structure


def _node_issue(path: str, node: Node, message: str) -> Issue:
    return Issue("error", f"node {node.id!r}: {message}", path, node.line, node.col, node=node.id)


def _edge_issue(path: str, edge: Edge, message: str, cols: Sequence[int] = ()) -> Issue:
    col = cols[edge.index] if edge.index < len(cols) else 0
    where = f"edge {edge.src} -> {edge.dst}"
    return Issue("error", f"{where}: {message}", path, edge.line, col, edge=(edge.src, edge.dst))


def _ends_issues(
    path: str, nodes: Mapping[str, Node], starts: Sequence[str], exits: Collection[str]
) -> list[Issue]:
    issues: list[Issue] = []
    if not starts:
        issues.append(Issue("error", "no start node (shape=Mdiamond or id 'start')", path))
    for extra in starts[1:]:
        issues.append(_node_issue(path, nodes[extra], f"a second start node (after {starts[0]!r})"))
    if not exits:
        issues.append(Issue("error", "no exit node (shape=Msquare or id 'exit'/'done')", path))
    return issues


def _edge_rule_issues(
    path: str,
    edges: Sequence[Edge],
    starts: Sequence[str],
    exits: Collection[str],
    cols: Sequence[int],
) -> list[Issue]:
    issues: list[Issue] = []
    for edge in edges:
        if edge.dst in starts:
            message = f"edge into the start node {edge.dst!r}"
            issues.append(_edge_issue(path, edge, message, cols))
        if edge.src in exits:
            message = f"edge out of the exit node {edge.src!r}"
            issues.append(_edge_issue(path, edge, message, cols))
    return issues


def _reachable(begin: Collection[str], links: Mapping[str, list[str]]) -> set[str]:
    """Every node reached from ``begin`` along ``links`` (``begin`` included)."""
    seen, todo = set(begin), list(begin)
    while todo:
        for nxt in links.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _reach_issues(
    path: str,
    edges: Sequence[Edge],
    nodes: Mapping[str, Node],
    starts: Sequence[str],
    exits: Collection[str],
) -> list[Issue]:
    succ: dict[str, list[str]] = {}
    pred: dict[str, list[str]] = {}
    links = [(e.src, e.dst) for e in edges]
    # A retry target is reached without an edge (a failure, an unmet goal gate).
    links += [(n.id, t) for n in nodes.values() for t in _targets(n) if t in nodes]
    for src, dst in links:
        succ.setdefault(src, []).append(dst)
        pred.setdefault(dst, []).append(src)
    issues: list[Issue] = []
    if len(starts) == 1:
        reached = _reachable(starts[:1], succ)
        for node_id, node in nodes.items():
            if node_id not in reached:
                issues.append(_node_issue(path, node, f"unreachable from start {starts[0]!r}"))
    if exits:
        reaching = _reachable(exits, pred)
        for node_id, node in nodes.items():
            if node_id not in reaching:
                issues.append(_node_issue(path, node, "no path from here to an exit"))
    return issues


def _targets(node: Node) -> tuple[str, ...]:
    return tuple(t for t in (node.retry_target, node.fallback_retry_target) if t is not None)


def _target_issues(path: str, nodes: Mapping[str, Node]) -> list[Issue]:
    issues: list[Issue] = []
    for node in nodes.values():
        for attr in ("retry_target", "fallback_retry_target"):
            target = getattr(node, attr)
            if target is not None and target not in nodes:
                issues.append(_node_issue(path, node, f"{attr} {target!r} is not a node"))
    return issues


def _warnings(path: str, nodes: Mapping[str, Node], edges: Sequence[Edge]) -> list[Issue]:
    outgoing: dict[str, list[Edge]] = {}
    for edge in edges:
        outgoing.setdefault(edge.src, []).append(edge)
    return [
        Issue(
            "warning",
            f"node {node_id!r}: every outgoing edge has a condition; "
            "when none holds the run has no route",
            path,
            nodes[node_id].line,
            nodes[node_id].col,
            node=node_id,
        )
        for node_id, out in outgoing.items()
        if node_id in nodes and all(e.condition is not None for e in out)
    ]


def structure_issues(
    path: str,
    nodes: Mapping[str, Node],
    edges: Sequence[Edge],
    starts: Sequence[str],
    exits: Collection[str],
    edge_cols: Sequence[int] = (),
) -> list[Issue]:
    """Every structural problem (errors and warnings) of a typed graph.

    ``starts`` are the start candidates in declaration order, ``exits`` the exit nodes;
    ``edge_cols[i]`` is the column of edge ``i`` (an :class:`Edge` keeps only its line).
    """
    return [
        *_ends_issues(path, nodes, starts, exits),
        *_edge_rule_issues(path, edges, starts, exits, edge_cols),
        *_reach_issues(path, edges, nodes, starts, exits),
        *_target_issues(path, nodes),
        *(_node_issue(path, node, msg) for node, msg in branch_issues(nodes, edges, exits)),
        *_warnings(path, nodes, edges),
    ]


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate nearest to ``word`` if one is close (a likely typo), else None."""
    found = difflib.get_close_matches(word, list(dict.fromkeys(candidates)), n=1, cutoff=0.75)
    return found[0] if found else None


def names_by_nearness(name: str, names: Iterable[str]) -> list[str]:
    """``names`` sorted nearest to ``name`` first (ties by name)."""
    matcher = difflib.SequenceMatcher(b=name)  # the fixed side is the one it indexes

    def key(other: str) -> tuple[float, str]:
        matcher.set_seq1(other)
        return (-matcher.ratio(), other)

    return sorted(names, key=key)


_LISTED = 30
"""Registered names shown after an unknown handler (the nearest, when there are more)."""


def _unknown_handler(name: str, known: Collection[str]) -> str:
    ranked = names_by_nearness(name, known)
    match = closest(name, ranked)
    hint = f" (did you mean {match!r}?)" if match else ""
    # Alphabetical, so the list reads the same whatever the typo; a long registry is cut
    # to the names nearest the typo, which are the ones worth reading.
    shown = ", ".join(sorted(ranked[:_LISTED]))
    more = len(ranked) - _LISTED
    if more > 0:
        shown += f", ... ({more} more)"
    return f"unknown handler {name!r}{hint}; registered: {shown or 'none'}"


def handler_issues(path: str, nodes: Mapping[str, Node], known: Collection[str]) -> list[Issue]:
    """One error per node whose handler is not in ``known`` (a registry works), naming
    the nearest registered handler as a likely typo and the registered handlers in
    alphabetical order (the 30 nearest when there are more)."""
    return [
        _node_issue(path, node, _unknown_handler(node.handler, known))
        for node in nodes.values()
        if node.handler not in known
    ]
