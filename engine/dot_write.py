"""Writing DOT ids so that both :mod:`engine.dot` and Graphviz read back what was meant.

The reader resolves ``\\"``, ``\\\\`` and ``\\n`` and keeps every other escape as
written, so a value holding ``\\l`` (a left-justified line end) came from ``\\l`` and
must be written with a single backslash for Graphviz to justify the line.  Graphviz's
label escapes (``\\l``, ``\\r``; ``\\N``, ``\\G``, ``\\E``, ``\\T``, ``\\H``, ``\\L``, the
names it substitutes) stay single; every other backslash is doubled, so Graphviz
shows it and the reader reads it back as one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.graph import Value

__all__ = ["attr_list", "quote", "value_text"]

# A backslash that does not start one of Graphviz's label escapes.
_LITERAL = re.compile(r"\\(?![lrNGETHL])")


def quote(text: str) -> str:
    """``text`` as a quoted DOT id that :func:`engine.dot.parse_dot` reads back as ``text``.

    Graphviz's label escapes (``\\l``, ``\\r``, ``\\N``...) are written unchanged, so
    it gives them their meaning when it draws the graph; other backslashes are doubled.
    """
    escaped = _LITERAL.sub(r"\\\\", text).replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def attr_list(items: Iterable[tuple[str, str]]) -> str:
    """`` [k="v", ...]`` for ``items`` (keys and values quoted), or "" when there are none."""
    parts = [f"{quote(k)}={quote(v)}" for k, v in items]
    return f" [{', '.join(parts)}]" if parts else ""


def value_text(value: Value) -> str:
    """A typed attribute value as DOT text the loader types back to ``value``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, timedelta):
        ms = value / timedelta(milliseconds=1)
        return f"{ms / 1000:g}s" if ms >= 1000 and ms % 1000 == 0 else f"{ms:g}ms"
    return str(value)
