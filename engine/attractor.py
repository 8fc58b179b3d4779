"""The ``attractor`` dialect: how StrongDM Attractor's pipelines are read.

::

    load_graph("pipeline.dot", dialect="attractor")   # or in the file:
    digraph P { graph [dialect=attractor, goal="Ship it"] ... }

The default dialect (``turngraph``) is unchanged; a graph is read in this one when the
caller asks (``dialect=``, ``--dialect attractor``) or its graph says
``dialect=attractor``.  The differences, all applied once at load time:

* **Handlers.** A node's handler is its ``type`` (``tool`` is read as ``shell``), else
  ``subgraph`` when it has a ``graph=`` file (a sub-graph file is read in its own
  ``dialect=``, else its parent's), else its shape by :data:`SHAPE_HANDLERS` (``box``,
  the default shape, is ``codergen``, an LLM task; ``hexagon`` is ``wait.human``;
  ``parallelogram`` is ``shell``, which runs ``tool_command``).  A shapeless node
  named ``start``/``Start`` is the start, one named ``exit``/``end`` an exit (spec
  §7.2).  Other shapes resolve as in the default dialect (to the node's id).
* **Dead ends.** A node with no outgoing edge ends the run like an exit (spec §3.2:
  with its own status), so deliberate failure nodes are not errors.
* **Transforms** (spec §9.2): ``$goal`` in a ``prompt`` becomes the graph's ``goal``;
  ``model_stylesheet`` (:mod:`engine.stylesheet`) fills each node's missing
  ``llm_model``, ``llm_provider`` and ``reasoning_effort``; a syntax error in it is a
  load error.  ``default_max_retry`` is read as ``default_max_retries``.
* **Values.** Edge ``weight`` may be a float (``2.0``).  A ``goal_gate`` written as
  prose (``goal_gate="outcome = success"``, as some implementations do) is a warning
  and counts as ``true``.  ``fidelity``/``default_fidelity`` outside the spec's modes
  are a warning.
* **Parallel branches** (spec §4.8-4.9): a fan-out's ``join_policy`` is its fan-in's
  ``join``, and a key several branches write takes the last one's value
  (``merge=last_writer``) instead of failing the join.
* **Conditions** also take ``contains`` (substring, or membership in a list) and
  ``matches`` (a regular expression) (:mod:`engine.conditions`).

:data:`ATTRS` lists every spec attribute and what turngraph does with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from engine.errors import Issue
from engine.stylesheet import Rule, StylesheetError, node_classes, parse_stylesheet, styler
from engine.validate import EDGE_KINDS, GRAPH_KINDS, NODE_KINDS, Kind

if TYPE_CHECKING:  # the reader is imported only when a graph is read
    from engine.dot import RawAttrs, RawGraph, RawNode

__all__ = [
    "ATTRACTOR",
    "ATTRS",
    "DEFAULT_DIALECT",
    "DIALECTS",
    "EDGE_KINDS_A",
    "GRAPH_KINDS_A",
    "NODE_KINDS_A",
    "SHAPE_HANDLERS",
    "dead_ends",
    "handler",
    "prepare",
]

DEFAULT_DIALECT = "turngraph"
ATTRACTOR = "attractor"
DIALECTS = (DEFAULT_DIALECT, ATTRACTOR)
"""The dialects :func:`~engine.load_graph` reads."""

SHAPE_HANDLERS: Mapping[str, str] = {
    "mdiamond": "start",
    "msquare": "exit",
    "box": "codergen",
    "hexagon": "wait.human",
    "diamond": "conditional",
    "component": "parallel",
    "tripleoctagon": "parallel.fan_in",
    "parallelogram": "shell",
    "house": "stack.manager_loop",
}
"""Spec §2.8, with ``tool`` named ``shell`` (it runs ``tool_command``)."""
_TYPE_ALIASES = {"tool": "shell"}
_START_IDS = frozenset({"start", "Start"})
_EXIT_IDS = frozenset({"exit", "Exit", "end", "End"})
FIDELITY_MODES = frozenset(
    {"full", "truncate", "compact", "summary:low", "summary:medium", "summary:high"}
)
_BOOL_WORDS = frozenset({"true", "false", "yes", "no", "1", "0"})

ATTRS: Mapping[str, str] = {
    "goal": "used: $goal in prompts",
    "model_stylesheet": "used: fills llm_model, llm_provider, reasoning_effort",
    "default_max_retries": "used (alias default_max_retry)",
    "retry_target": "used (node and graph)",
    "fallback_retry_target": "used (node and graph)",
    "default_fidelity": "checked, ignored: every LLM task is a fresh request",
    "prompt": "used by codergen (the label when empty)",
    "max_retries": "used",
    "goal_gate": "used",
    "timeout": "used",
    "class": "used by the stylesheet",
    "llm_model": "used: the model asked of the configured adapter",
    "llm_provider": "set by the stylesheet, not used: the one configured adapter answers",
    "reasoning_effort": "set by the stylesheet, not used: no adapter takes an effort",
    "fidelity": "checked, ignored: every LLM task is a fresh request",
    "thread_id": "ignored: no LLM sessions are reused across nodes",
    "auto_status": "ignored: handlers always return a status",
    "allow_partial": "ignored: partial outcomes count as success",
    "tool_command": "used by shell (off unless enabled)",
    "loop_restart": "ignored: a run is never restarted (the edge is followed)",
    "weight": "used (integer or float)",
}
"""Every Attractor attribute (spec appendix A) and what this dialect does with it."""

_TEXT = ("tool_command", "llm_model", "llm_provider", "reasoning_effort", "fidelity", "thread_id")
NODE_KINDS_A: Mapping[str, Kind] = {
    **NODE_KINDS,
    **dict.fromkeys(_TEXT, "text"),
    "auto_status": "bool",
    "allow_partial": "bool",
}
EDGE_KINDS_A: Mapping[str, Kind] = {
    **EDGE_KINDS,
    "weight": "number",
    "fidelity": "text",
    "thread_id": "text",
    "loop_restart": "bool",
}
GRAPH_KINDS_A: Mapping[str, Kind] = {
    **GRAPH_KINDS,
    "model_stylesheet": "text",
    "default_fidelity": "text",
    "default_thread_id": "text",
}


def handler(node_id: str, attrs: Mapping[str, object]) -> str:
    """The handler of a node in this dialect (see the module doc)."""
    for key in ("handler", "type"):
        name = attrs.get(key)
        if isinstance(name, str) and name.strip():
            return _TYPE_ALIASES.get(name.strip(), name.strip())
    if isinstance(attrs.get("graph"), str):  # turngraph's sub-graph node, as by default
        return "subgraph"
    shape = attrs.get("shape")
    if not isinstance(shape, str) or not shape:
        if node_id in _START_IDS:
            return "start"
        if node_id in _EXIT_IDS:
            return "exit"
        return "codergen"
    return SHAPE_HANDLERS.get(shape.lower(), node_id)


def dead_ends(nodes: Mapping[str, object], sources: set[str], start: str | None) -> set[str]:
    """Nodes no edge leaves (they end the run like exits), the start excepted."""
    return {i for i in nodes if i not in sources and i != start}


def _issue(severity: str, message: str, path: str, line: int, col: int, node: str | None) -> Issue:
    return Issue("error" if severity == "error" else "warning", message, path, line, col, node)


def _fidelity(value: str | None, where: str, at: tuple[str, int, int, str | None]) -> list[Issue]:
    if value is None or value == "" or value in FIDELITY_MODES:
        return []
    modes = ", ".join(sorted(FIDELITY_MODES))
    return [_issue("warning", f"{where}: fidelity {value!r} is not one of {modes}", *at)]


def _node_attrs(
    attrs: RawAttrs, node_id: str, goal: str, styles: Mapping[str, str], at: tuple[str, int, int]
) -> tuple[RawAttrs, list[Issue]]:
    out = {**styles, **attrs}  # the node's own values win over the stylesheet's
    where = (*at, node_id)
    issues = _fidelity(out.get("fidelity"), f"node {node_id!r}", where)
    gate = out.get("goal_gate")
    if gate is not None and gate.strip().lower() not in _BOOL_WORDS:
        message = f"node {node_id!r}: goal_gate {gate!r} is not true/false; read as true"
        issues.append(_issue("warning", message, *where))
        out["goal_gate"] = "true"
    prompt = out.get("prompt")
    if prompt and "$goal" in prompt:
        out["prompt"] = prompt.replace("$goal", goal)
    return out, issues


def prepare(raw: RawGraph, path: str) -> tuple[RawGraph, list[Issue]]:
    """``raw`` with this dialect's load-time transforms applied, and their issues.

    ``raw`` itself is not changed.
    """

    attrs = dict(raw.attrs)
    issues: list[Issue] = []
    at = (path, raw.line, raw.col)
    if "default_max_retry" in attrs:
        attrs.setdefault("default_max_retries", attrs.pop("default_max_retry"))
    attrs["dialect"] = ATTRACTOR
    issues += _fidelity(attrs.get("default_fidelity"), "graph", (*at, None))
    rules: tuple[Rule, ...] = ()
    sheet = attrs.get("model_stylesheet")
    if sheet and sheet.strip():
        try:
            rules = parse_stylesheet(sheet)
        except StylesheetError as exc:
            issues.append(_issue("error", f"graph: {exc}", *at, None))
    goal = attrs.get("goal") or ""
    style = styler(rules)
    nodes: dict[str, RawNode] = {}
    for node in raw.nodes.values():
        shape = node.attrs.get("shape") or "box"
        styles = style(node.id, shape, node_classes(node.attrs.get("class")))
        new, found = _node_attrs(node.attrs, node.id, goal, styles, (path, node.line, node.col))
        nodes[node.id] = replace(node, attrs=new)
        issues += found
    for edge in raw.edges:
        where = (path, edge.line, edge.col, None)
        issues += _fidelity(edge.attrs.get("fidelity"), f"edge {edge.src} -> {edge.dst}", where)
    _joins(nodes, raw)
    return replace(raw, attrs=attrs, nodes=nodes, edges=list(raw.edges)), issues


def _is(node: RawNode, shape: str, kind: str) -> bool:
    return (node.attrs.get("shape") or "").lower() == shape or node.attrs.get("type") == kind


def _joins(nodes: dict[str, RawNode], raw: RawGraph) -> None:
    """Spec §4.8-4.9 on turngraph's fan-in: a fan-out's ``join_policy`` becomes its
    fan-in's ``join``, and a key several branches write takes the last one's value
    (``merge=last_writer``) rather than failing the join: the spec merges no branch
    context back at all."""
    succ: dict[str, list[str]] = {}
    for edge in raw.edges:
        succ.setdefault(edge.src, []).append(edge.dst)
    for node in list(nodes.values()):
        if _is(node, "tripleoctagon", "parallel.fan_in") and "merge" not in node.attrs:
            nodes[node.id] = replace(node, attrs={**node.attrs, "merge": "last_writer"})
    for node in list(nodes.values()):
        policy = node.attrs.get("join_policy")
        if policy and _is(node, "component", "parallel"):
            fan_in = _first_fan_in(node.id, succ, nodes)
            if fan_in is not None and "join" not in fan_in.attrs:
                nodes[fan_in.id] = replace(fan_in, attrs={**fan_in.attrs, "join": policy})


def _first_fan_in(
    start: str, succ: Mapping[str, list[str]], nodes: Mapping[str, RawNode]
) -> RawNode | None:
    """The nearest fan-in after ``start`` (breadth first), if any."""
    seen, todo = {start}, [start]
    while todo:
        nxt: list[str] = []
        for node_id in todo:
            for dst in succ.get(node_id, ()):
                if dst in seen or dst not in nodes:
                    continue
                if _is(nodes[dst], "tripleoctagon", "parallel.fan_in"):
                    return nodes[dst]
                seen.add(dst)
                nxt.append(dst)
        todo = nxt
    return None
