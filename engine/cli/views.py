"""What the command line shows: rich tables of traces and sessions, normalised DOT.

Views read engine objects and never change them; the engine never imports this
module.  ``rich`` is imported inside the functions that draw, so commands that print
nothing rich (``validate``, ``--json``) do not pay for it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TextIO

from engine.graph import Graph, Value
from engine.outcome import NodeRecord

if TYPE_CHECKING:
    from rich.table import Table

__all__ = [
    "graph_to_dot",
    "nodes_table",
    "print_renderable",
    "sessions_table",
    "trace_rows",
    "turns_table",
]

_STATUS_STYLE = {"success": "green", "fail": "red", "retry": "yellow", "partial": "yellow"}


def print_renderable(renderable: Any, file: TextIO | None = None) -> None:
    """Print a rich renderable to ``file`` (stdout by default, looked up at call time)."""
    from rich.console import Console

    Console(file=file or sys.stdout, highlight=False, soft_wrap=True).print(renderable)


def trace_rows(trace: Iterable[NodeRecord | Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Trace entries as ``NodeRecord.to_dict`` dicts (records or stored dicts alike)."""
    return [r.to_dict() if isinstance(r, NodeRecord) else dict(r) for r in trace]


def nodes_table(trace: Iterable[NodeRecord | Mapping[str, Any]], title: str = "") -> Table:
    """One row per visited node: node, handler, status, attempts, milliseconds."""
    from rich.table import Table

    table = Table(title=title or None, title_justify="left")
    table.add_column("#", justify="right", style="dim")
    table.add_column("node")
    table.add_column("handler", style="cyan")
    table.add_column("status")
    table.add_column("attempts", justify="right")
    table.add_column("ms", justify="right")
    for i, row in enumerate(trace_rows(trace), 1):
        status = str(row.get("status", ""))
        shown = f"[{_STATUS_STYLE.get(status, 'white')}]{status}[/]"
        if row.get("reason"):
            shown += f" [dim]{_escape(str(row['reason']))}[/]"
        table.add_row(
            str(i),
            _escape(str(row.get("id", ""))),
            _escape(str(row.get("handler", ""))),
            shown,
            str(row.get("attempts", "")),
            f"{float(row.get('duration_ms', 0.0)):.3f}",
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
    """One row per committed turn (``TurnRecord``-like): status, nodes, duration."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for name in ("turn", "status", "nodes", "ms", "when", "error"):
        table.add_column(name, justify="right" if name in ("turn", "ms") else "left")
    for t in turns:
        rows = trace_rows(t.trace)
        path = " → ".join(str(r.get("id", "")) for r in rows)
        ms = sum(float(r.get("duration_ms", 0.0)) for r in rows)
        table.add_row(
            str(t.turn),
            str(t.status),
            _escape(path),
            f"{ms:.3f}",
            _when(float(t.ts)),
            _escape(t.error or ""),
        )
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


def _quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _value(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, timedelta):
        ms = value / timedelta(milliseconds=1)
        return f"{ms / 1000:g}s" if ms >= 1000 and ms % 1000 == 0 else f"{ms:g}ms"
    return str(value)


def _attrs(attrs: Mapping[str, Value]) -> str:
    parts = [f"{_quote(k)}={_quote(_value(v))}" for k, v in attrs.items()]
    return f" [{', '.join(parts)}]" if parts else ""


def graph_to_dot(graph: Graph) -> str:
    """The graph as normalised DOT: defaults applied, subgraphs flattened, values typed,
    each node's handler and each conditional edge's condition shown in its label.

    Loading the output again gives a graph that routes the same way.
    """
    lines = [
        f"// normalised by turngraph from {graph.path} (sha256 {graph.source_hash[:12]})",
        f"digraph {_quote(graph.name or 'turn')} {{",
    ]
    if graph.attrs:
        lines.append(f"    graph{_attrs(graph.attrs)};")
    for node in graph.nodes.values():
        attrs: dict[str, Value] = {**node.attrs, "handler": node.handler, "shape": node.shape}
        attrs["label"] = f"{node.label or node.id}\n[{node.handler}]"
        lines.append(f"    {_quote(node.id)}{_attrs(attrs)};")
    for edge in graph.edges:
        eattrs: dict[str, Value] = dict(edge.attrs)
        if edge.condition is not None:
            # Only conditional edges get a composite label: an unconditional edge's
            # label is routing data (preferred_label) and must survive a reload.
            eattrs["condition"] = edge.condition.source
            shown = [edge.label] if edge.label else []
            shown.append(f"if {edge.condition.source}")
            eattrs["label"] = "\n".join(shown)
        lines.append(f"    {_quote(edge.src)} -> {_quote(edge.dst)}{_attrs(eattrs)};")
    lines.append("}")
    return "\n".join(lines) + "\n"
