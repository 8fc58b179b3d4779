"""What the command line shows: rich tables of traces and sessions, normalised DOT.

Views read engine objects and never change them; the engine never imports this
module.  ``rich`` is imported inside the functions that draw, so commands that print
nothing rich (``validate``, ``--json``) do not pay for it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from engine.dot_write import attr_list, quote, value_text
from engine.events import (
    Event,
    NodeFailed,
    NodeRetrying,
    NodeStarted,
    TextDelta,
    ToolCallCompleted,
    ToolCallRequested,
)
from engine.graph import Graph, Value
from engine.outcome import NodeRecord

if TYPE_CHECKING:
    from rich.table import Table

__all__ = [
    "LivePrinter",
    "graph_to_dot",
    "nodes_table",
    "print_renderable",
    "sessions_table",
    "trace_rows",
    "turns_table",
    "usage_table",
]

_STATUS_STYLE = {"success": "green", "fail": "red", "retry": "yellow", "partial": "yellow"}


def print_renderable(renderable: Any, file: TextIO | None = None) -> None:
    """Print a rich renderable to ``file`` (stdout by default, looked up at call time)."""
    from rich.console import Console

    Console(file=file or sys.stdout, highlight=False, soft_wrap=True).print(renderable)


def trace_rows(trace: Iterable[NodeRecord | Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Trace entries as ``NodeRecord.to_dict`` dicts (records or stored dicts alike)."""
    return [r.to_dict() if isinstance(r, NodeRecord) else dict(r) for r in trace]


class LivePrinter:
    """An observer that prints a model's reply as it streams (``TextDelta`` events).

    Text goes to ``out`` as it arrives, after ``prefix`` (``"bot> "`` in a chat); tool
    calls and results are one line each on ``note``.  When an attempt fails after some
    text (a stream cut), that text is void: a line on ``note`` says so and the retry
    starts a fresh line.  :attr:`last_text` is the last model visit's streamed text, so
    the caller prints the final reply only when it differs (a template reshaped it).
    """

    __slots__ = ("_fresh", "_line_open", "_parts", "note", "out", "prefix", "started")

    def __init__(self, out: TextIO | None = None, note: TextIO | None = None, prefix: str = ""):
        self.out = out or sys.stdout
        self.note = note or sys.stderr
        self.prefix = prefix
        self._parts: list[str] = []
        self._fresh = False
        self._line_open = False
        self.started = False
        """Whether any text was printed since :meth:`reset`."""

    @property
    def last_text(self) -> str:
        """The text streamed by the latest model visit."""
        return "".join(self._parts)

    def reset(self) -> None:
        """Forget the previous turn."""
        self._parts = []
        self._line_open = False
        self.started = False

    def end_line(self) -> None:
        """End the streamed line, if one is open."""
        if self._line_open:
            self.out.write("\n")
            self.out.flush()
            self._line_open = False

    def __call__(self, event: Event) -> None:
        if type(event) is TextDelta:
            if self._fresh:  # the first piece of a new visit: the last one is history
                self._parts = []
                self._fresh = False
            if not self._line_open:
                self.out.write(self.prefix)
                self._line_open = self.started = True
            self._parts.append(event.text)
            self.out.write(event.text)
            self.out.flush()
        elif isinstance(event, NodeStarted):
            self._fresh = True
        elif isinstance(event, NodeRetrying | NodeFailed) and self._parts:
            self.end_line()
            self._parts = []
            self.note.write(f"({event.node_id}: the reply so far is void: {event.reason})\n")
        elif isinstance(event, ToolCallRequested):
            self.end_line()
            args = json.dumps(dict(event.arguments), ensure_ascii=False, default=str)
            self.note.write(f"[tool] {event.name} {args}\n")
        elif isinstance(event, ToolCallCompleted):
            mark = "error" if event.is_error else "result"
            self.note.write(f"[tool] {event.name} {mark}: {' '.join(event.content.split())}\n")


CHANGED_WIDTH = 110
"""The narrowest terminal on which the node table shows its ``changed`` column."""


class _NodesView:
    """The node table, laid out when printed: the ``changed`` column (often the widest)
    appears only on a terminal of :data:`CHANGED_WIDTH` columns or more."""

    __slots__ = ("rows", "title")

    def __init__(self, rows: list[dict[str, Any]], title: str) -> None:
        self.rows = rows
        self.title = title

    def __rich_console__(self, console: Any, options: Any) -> Iterable[Table]:
        yield _nodes_table(self.rows, self.title, options.max_width >= CHANGED_WIDTH)


def nodes_table(trace: Iterable[NodeRecord | Mapping[str, Any]], title: str = "") -> Any:
    """One row per visited node: node, handler, status, attempts, milliseconds; when the
    turn ran parallel branches, a ``branch`` column; when a visit called a model, its
    ``model`` and ``tokens`` (in/out) columns and a ``total`` row summing the tokens of
    the turn; when the trace records them and the terminal is wide enough, a ``changed``
    column of the context keys each visit wrote.  A rich renderable (print it with
    :func:`print_renderable`)."""
    return _NodesView(trace_rows(trace), title)


def _nodes_table(rows: list[dict[str, Any]], title: str, wide: bool) -> Table:
    from rich.table import Table

    usage = any("input_tokens" in r for r in rows)
    branched = any(r.get("branch") for r in rows)
    changed = wide and any("changed" in r for r in rows)
    table = Table(title=title or None, title_justify="left")
    table.add_column("#", justify="right", style="dim")
    # On a narrow terminal the model column gives way before node and handler names do.
    table.add_column("node", min_width=_widest(rows, "id"))
    if branched:
        table.add_column("branch", style="magenta", min_width=_widest(rows, "branch"))
    table.add_column("handler", style="cyan", min_width=_widest(rows, "handler"))
    table.add_column("status")
    table.add_column("attempts", justify="right")
    table.add_column("ms", justify="right")
    if changed:
        table.add_column("changed", style="magenta")
    if usage:
        table.add_column("model")
        table.add_column("tokens", justify="right")
    for i, row in enumerate(rows, 1):
        status = str(row.get("status", ""))
        shown = f"[{_STATUS_STYLE.get(status, 'white')}]{status}[/]"
        if row.get("reason"):
            shown += f" [dim]{_escape(str(row['reason']))}[/]"
        cells = [str(i), _escape(str(row.get("id", "")))]
        if branched:
            cells.append(_escape(str(row.get("branch") or "")))
        cells += [
            _escape(str(row.get("handler", ""))),
            shown,
            str(row.get("attempts", "")),
            f"{float(row.get('duration_ms', 0.0)):.3f}",
        ]
        if changed:
            cells.append(_escape(" ".join(map(str, row.get("changed", ())))))
        if usage:
            if "input_tokens" in row:
                cells.append(_escape(str(row.get("model", ""))))
                cells.append(f"{row['input_tokens']}/{row['output_tokens']}")
            else:
                cells += ["", ""]
        table.add_row(*cells)
    if usage:
        used = [r for r in rows if "input_tokens" in r]
        tokens_in = sum(int(r["input_tokens"]) for r in used)
        tokens_out = sum(int(r["output_tokens"]) for r in used)
        ms = sum(float(r.get("duration_ms", 0.0)) for r in rows)
        models = _escape(", ".join(dict.fromkeys(str(r.get("model", "")) for r in used)))
        total = ["", "total", *([""] if branched else []), "", "", ""]
        total += [f"{ms:.3f}", *([""] if changed else []), models, f"{tokens_in}/{tokens_out}"]
        table.add_row(*total, style="bold", end_section=True)
    return table


def _widest(rows: Sequence[Mapping[str, Any]], key: str, cap: int = 24) -> int:
    """The width of the longest ``key`` value in ``rows``, at most ``cap``."""
    return min(cap, max((len(str(r.get(key, ""))) for r in rows), default=0))


def usage_table(usage: Mapping[str, Any], title: str = "usage") -> Table:
    """Model usage by model and in total (a ``UsageTotals.to_dict()``): calls and tokens."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("model")
    for name in ("calls", "input tokens", "output tokens"):
        table.add_column(name, justify="right")
    for model, m in usage["by_model"].items():
        table.add_row(
            _escape(model or "?"), str(m["calls"]), str(m["input_tokens"]), str(m["output_tokens"])
        )
    table.add_row(
        "total",
        str(usage["calls"]),
        str(usage["input_tokens"]),
        str(usage["output_tokens"]),
        style="bold",
    )
    return table


def sessions_table(metas: Sequence[Any], title: str = "sessions") -> Table:
    """One row per session (``SessionMeta``-like objects)."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for name, justify in (
        ("id", "left"),
        ("type", "left"),
        ("turns", "right"),
        ("messages", "right"),
        ("mode", "left"),
        ("updated", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for m in metas:
        table.add_row(
            _escape(str(m.id)),
            str(m.type),
            str(m.turn_count),
            str(m.message_count),
            _escape(str(m.cognitive_mode)),
            _when(float(m.updated_at)),
        )
    return table


def turns_table(turns: Sequence[Any], title: str = "turns") -> Table:
    """One row per committed turn (``TurnRecord``-like): status, nodes, duration, and
    the model tokens (in/out) when its trace records them."""
    from rich.table import Table

    from engine.outcome import total_usage

    usages = [total_usage(trace_rows(t.trace)) for t in turns]
    names = ["turn", "status", "nodes", "ms", "when", "error"]
    if any(usages):
        names.insert(4, "tokens")
    table = Table(title=title, title_justify="left")
    for name in names:
        table.add_column(name, justify="right" if name in ("turn", "ms", "tokens") else "left")
    for t, usage in zip(turns, usages, strict=True):
        rows = trace_rows(t.trace)
        path = " → ".join(str(r.get("id", "")) for r in rows)
        ms = sum(float(r.get("duration_ms", 0.0)) for r in rows)
        cells = [str(t.turn), str(t.status), _escape(path), f"{ms:.3f}"]
        if len(names) > 6:
            cells.append(f"{usage['input_tokens']}/{usage['output_tokens']}" if usage else "")
        cells += [_when(float(t.ts)), _escape(t.error or "")]
        table.add_row(*cells)
    return table


def _when(ts: float) -> str:
    if not ts:
        return ""
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _escape(text: str) -> str:
    """Text shown literally by rich (``[x]`` in user data is not markup)."""
    return text.replace("[", r"\[")


# --------------------------------------------------------------------------- DOT


def _attrs(attrs: Mapping[str, Value]) -> str:
    return attr_list((k, value_text(v)) for k, v in attrs.items())


def graph_to_dot(
    graph: Graph,
    node_marks: Mapping[str, Mapping[str, Value]] | None = None,
    edge_marks: Mapping[tuple[str, str] | int, Mapping[str, Value]] | None = None,
) -> str:
    """The graph as normalised DOT: defaults applied, subgraphs flattened, values typed,
    each node's handler and each conditional edge's condition shown in its label.

    Loading the output again gives a graph that routes the same way.  ``node_marks``
    and ``edge_marks`` (by node id; by ``(src, dst)`` then ``Edge.index``) add drawing
    attributes over the
    node's or edge's own, e.g. a turn's path (:func:`engine.cli.trace_dot.traced_dot`).
    """
    node_marks = node_marks or {}
    edge_marks = edge_marks or {}
    lines = [
        f"// normalised by turngraph from {graph.path} (sha256 {graph.source_hash[:12]})",
        f"digraph {quote(graph.name or 'turn')} {{",
    ]
    if graph.attrs:
        lines.append(f"    graph{_attrs(graph.attrs)};")
    for node in graph.nodes.values():
        attrs: dict[str, Value] = {**node.attrs, "handler": node.handler, "shape": node.shape}
        attrs["label"] = f"{node.label or node.id}\n[{node.handler}]"
        attrs.update(node_marks.get(node.id, {}))
        lines.append(f"    {quote(node.id)}{_attrs(attrs)};")
    for edge in graph.edges:
        eattrs: dict[str, Value] = dict(edge.attrs)
        if edge.condition is not None:
            # Only conditional edges get a composite label: an unconditional edge's
            # label is routing data (preferred_label) and must survive a reload.
            eattrs["condition"] = edge.condition.source
            shown = [edge.label] if edge.label else []
            shown.append(f"if {edge.condition.source}")
            eattrs["label"] = "\n".join(shown)
        eattrs.update(edge_marks.get((edge.src, edge.dst), {}))
        eattrs.update(edge_marks.get(edge.index, {}))
        lines.append(f"    {quote(edge.src)} -> {quote(edge.dst)}{_attrs(eattrs)};")
    lines.append("}")
    return "\n".join(lines) + "\n"
