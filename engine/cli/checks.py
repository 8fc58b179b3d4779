"""``validate`` and ``render``'s view of a graph's problems.

:func:`check_file` gathers every problem of one file: the loader's errors and
warnings, then the lint warnings (:mod:`engine.lint`) that need the registry's
declarations, also for a graph whose only errors are unknown handlers.
:func:`marked_dot` draws a graph that fails validation with its problems marked:
offending nodes and edges red, each with the messages as its tooltip and an
``xlabel``, whole-graph problems in the graph's label.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from engine.dot_write import attr_list, quote
from engine.errors import GraphError, GraphValidationError, Issue

if TYPE_CHECKING:
    from engine.dot import RawGraph
    from engine.graph import Graph
    from engine.registry import HandlerRegistry

__all__ = ["Checked", "check_file", "marked_dot", "parse_for_drawing", "strict"]


@dataclass(frozen=True, slots=True)
class Checked:
    """One file's problems in source order; ``graph`` is None when it failed to load."""

    path: str
    issues: tuple[Issue, ...]
    graph: Graph | None

    @property
    def failed(self) -> bool:
        """Whether any problem is an error."""
        return any(i.severity == "error" for i in self.issues)


def _source(path: str) -> str | None:
    from engine.loader import read_dot  # bounded: never more than a graph file may hold

    try:
        return read_dot(path).decode("utf-8-sig", errors="replace")
    except GraphError:
        return None


def check_file(path: str, registry: HandlerRegistry, dialect: str | None = None) -> Checked:
    """Every problem of the graph at ``path`` read in ``dialect`` (default: its own);
    raises the loader's other GraphErrors (a missing, binary or unparsable file), which
    have nothing more to say."""
    from pathlib import Path

    from engine.lint import lint_graph
    from engine.loader import load_graph

    source = Path(path)  # not the str: load_graph reads a str holding "{" as DOT text
    try:
        loaded = load_graph(source, registry=registry, dialect=dialect)
        graph: Graph | None = loaded
        issues = list(loaded.warnings)
    except GraphValidationError as exc:
        issues = list(exc.issues)
        try:  # the file's only errors may be unknown handlers: check the rest anyway
            graph = load_graph(source, dialect=dialect)
            issues += graph.warnings
        except GraphValidationError:
            graph = None
    if graph is not None:
        issues += lint_graph(graph, registry, _source(path))
    issues.sort(key=lambda i: (i.line, i.col))
    failed = any(i.severity == "error" for i in issues)
    return Checked(path, tuple(issues), None if failed else graph)


def strict(issues: Sequence[Issue]) -> tuple[Issue, ...]:
    """``issues`` with every warning made an error (``validate --strict``)."""
    return tuple(replace(i, severity="error") for i in issues)


# --------------------------------------------------------------------------- drawing

_ERROR_STYLE = {"color": "red", "fontcolor": "red", "penwidth": "2"}


def _attrs(attrs: Mapping[str, str | None]) -> str:
    return attr_list((k, v) for k, v in attrs.items() if v is not None)


_SHOWN = 60
"""Characters of each message shown beside a node (the tooltip has them whole)."""


def _marks(messages: Sequence[str]) -> dict[str, str]:
    short = [m if len(m) <= _SHOWN else m[: _SHOWN - 1] + "…" for m in messages]
    return {**_ERROR_STYLE, "tooltip": "\n".join(messages), "xlabel": "\n".join(short)}


def _short(issue: Issue) -> str:
    """The message without the ``node 'x': `` / ``edge a -> b: `` it is drawn on."""
    head, sep, rest = issue.message.partition(": ")
    drawn_on = issue.node is not None or issue.edge is not None
    return rest if sep and drawn_on and head.startswith(("node ", "edge ")) else issue.message


def marked_dot(raw: RawGraph, issues: Sequence[Issue]) -> str:
    """``raw`` as DOT, with each problem drawn on the node or edge it concerns."""
    on_node: dict[str, list[str]] = {}
    on_edge: dict[tuple[str, str], list[str]] = {}
    whole: list[str] = []
    for issue in issues:
        text = f"{issue.severity}: {_short(issue)}"
        if issue.node is not None and issue.node in raw.nodes:
            on_node.setdefault(issue.node, []).append(text)
        elif issue.edge is not None:
            on_edge.setdefault(issue.edge, []).append(text)
        else:
            whole.append(text)
    errors = sum(i.severity == "error" for i in issues)
    title = f"{raw.name or 'graph'}: {errors} error(s), {len(issues) - errors} warning(s)"
    label = "\n".join([title, *whole])
    graph_attrs = {**raw.attrs, "label": label, "labelloc": "t", "fontcolor": "red"}
    lines = [f"digraph {quote(raw.name or 'turn')} {{", f"    graph{_attrs(graph_attrs)};"]
    for node in raw.nodes.values():
        attrs = dict(node.attrs)
        if node.id in on_node:
            attrs.update(_marks(on_node[node.id]))
        lines.append(f"    {quote(node.id)}{_attrs(attrs)};")
    for edge in raw.edges:
        attrs = dict(edge.attrs)
        if (edge.src, edge.dst) in on_edge:
            attrs.update(_marks(on_edge[(edge.src, edge.dst)]))
        lines.append(f"    {quote(edge.src)} -> {quote(edge.dst)}{_attrs(attrs)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def parse_for_drawing(path: str) -> RawGraph:
    """The file read as DOT, not validated (raises the loader's file and syntax errors)."""
    from engine.dot import parse_dot
    from engine.errors import GraphFileError

    text = _source(path)
    if text is None:
        raise GraphFileError(path, "cannot be read")
    return parse_dot(text, path)
