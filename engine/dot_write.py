"""Writing DOT ids so that both :mod:`engine.dot` and Graphviz read back what was meant.

The reader resolves ``\\"``, ``\\\\`` and ``\\n`` and keeps every other escape as
written (``\\l`` and ``\\r``, left- and right-justified line ends; ``\\N``, ``\\G``...),
so a value holding ``\\l`` must be written with a single backslash for Graphviz to
justify the line, and only a backslash the reader would resolve is doubled.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["attr_list", "quote"]

# A backslash the reader would take as the start of an escape it resolves (or a line
# continuation), or the last character (it would escape the closing quote).
_RESOLVED = re.compile(r'\\(?=["\\n\r\n]|\Z)')


def quote(text: str) -> str:
    """``text`` as a quoted DOT id that :func:`engine.dot.parse_dot` reads back as ``text``.

    Escapes the reader keeps as written (``\\l``, ``\\r``, ``\\N``...) are written
    unchanged, so Graphviz gives them their meaning when it draws the graph.
    """
    escaped = _RESOLVED.sub(r"\\\\", text).replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def attr_list(items: Iterable[tuple[str, str]]) -> str:
    """`` [k="v", ...]`` for ``items`` (keys and values quoted), or "" when there are none."""
    parts = [f"{quote(k)}={quote(v)}" for k, v in items]
    return f" [{', '.join(parts)}]" if parts else ""
