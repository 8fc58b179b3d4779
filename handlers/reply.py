"""``format``: turn the model's text (or a fixed template) into the final ``reply``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from engine.graph import Node
from engine.outcome import Outcome
from handlers._common import NodeSettings, attr_int, attr_str, fill

__all__ = ["ALIASES", "DEFAULT_FALLBACK", "Format", "normalise"]

DEFAULT_FALLBACK = "Sorry, I have no answer to that."

ALIASES: Mapping[str, str] = {
    "text": "llm.text",
    "input": "input.text",
    "intent": "intent",
    "reason": "input.reason",
    "mode": "heartbeat.mode",
    "reflection": "heartbeat.reflection",
}
"""Short placeholder names usable in ``template``/``reply`` (any context key works too)."""

_BLANK_RUN = re.compile(r"\n{3,}")


def normalise(text: str) -> str:
    """Strip the text and each line's trailing spaces; at most one blank line in a row."""
    lines = text.strip().splitlines()
    if len(lines) == 1:
        return lines[0]  # already stripped: nothing to rstrip or collapse
    joined = "\n".join(line.rstrip() for line in lines)
    return _BLANK_RUN.sub("\n\n", joined)


class Format:
    """Sets ``reply``.

    From, in order: the ``reply`` setting (a fixed answer), the ``template`` setting, or
    ``llm.text``.  Placeholders such as ``{text}``, ``{input}``, ``{intent}``,
    ``{reason}`` (why input was rejected) or any context key (``{session.id}``) are
    filled; unknown ones stay as written.  The result is normalised (see
    :func:`normalise`), cut to ``max_chars`` when set (with an ellipsis), and replaced by
    ``fallback`` (default :data:`DEFAULT_FALLBACK`) when empty.
    """

    __slots__ = ("_settings",)

    def __init__(self) -> None:
        self._settings = NodeSettings(_parse)

    def __call__(self, node: Node, context: Mapping[str, Any]) -> Outcome:
        fixed, limit = self._settings(node)
        if fixed is not None:
            text = fill(fixed, context, ALIASES)
        else:
            text = str(context.get("llm.text") or "")
        reply = normalise(text)
        if limit and len(reply) > limit:
            reply = reply[: max(0, limit - 1)].rstrip() + "…"
        if not reply:
            reply = attr_str(node, "fallback", DEFAULT_FALLBACK)
        return Outcome("success", {"reply": reply})


def _parse(node: Node) -> tuple[str | None, int]:
    """``(the reply or template setting, max_chars)``."""
    fixed = node.attrs.get("reply", node.attrs.get("template"))
    return None if fixed is None else str(fixed), attr_int(node, "max_chars", 0)
