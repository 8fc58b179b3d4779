"""``classify``: look at the turn's input before anything expensive happens."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from engine.graph import Node
from engine.outcome import Outcome
from handlers._common import NodeSettings, attr_int, attr_str

__all__ = ["DEFAULT_DENY", "Classify", "intent_of"]

DEFAULT_DENY = ("ignore previous instructions", "ignore all previous instructions", "rm -rf /")
"""Phrases that block an input by default (a node's ``deny="a|b"`` replaces them)."""

_QUESTION_WORDS_TEXT = """
who what when where why how which whose whom is are am can could do does did should
would will shall may might
"""
_QUESTION_WORDS = frozenset(_QUESTION_WORDS_TEXT.split())
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACES = re.compile(r"\s+")


def intent_of(text: str) -> str:
    """``tool`` (``/tool ...``), ``command`` (``/...``), ``question`` or ``chat``."""
    if text.startswith("/tool ") or text == "/tool":
        return "tool"
    if text.startswith("/"):
        return "command"
    words = text.lower().split(maxsplit=1)
    if text.endswith("?") or (words and words[0].strip(",.!") in _QUESTION_WORDS):
        return "question"
    return "chat"


class Classify:
    """Reads ``session.input``; sets ``input.text`` (stripped), ``input.empty``,
    ``input.blocked``, ``input.reason`` (why it is empty or blocked, else ``""``) and
    ``intent``; the preferred label is the intent.

    Settings: ``max_chars`` (default 4000: longer input is blocked), ``deny`` (phrases
    separated by ``|``, matched case-insensitively; ``deny=""`` disables the list).
    Control characters other than tab and newline block an input too.
    """

    __slots__ = ("_settings",)

    def __init__(self) -> None:
        self._settings = NodeSettings(_parse)

    def __call__(self, node: Node, context: Mapping[str, Any]) -> Outcome:
        raw = context.get("session.input")
        text = "" if raw is None else str(raw).strip()
        reason = "empty input" if not text else self._blocked(node, text)
        intent = intent_of(text) if text else "chat"
        updates = {
            "input.text": text,
            "input.empty": not text,
            "input.blocked": bool(text) and bool(reason),
            "input.reason": reason,
            "intent": intent,
        }
        return Outcome("success", updates, preferred_label=intent)

    def _blocked(self, node: Node, text: str) -> str:
        limit, phrases = self._settings(node)
        if limit and len(text) > limit:
            return f"input longer than {limit} characters"
        if _CONTROL.search(text):
            return "input contains control characters"
        if phrases:
            folded = _SPACES.sub(" ", text.lower())
            for phrase in phrases:
                if phrase in folded:
                    return "input contains a blocked phrase"
        return ""


def _parse(node: Node) -> tuple[int, tuple[str, ...]]:
    """``(max_chars, deny phrases folded to lower case, blanks dropped)``."""
    deny = attr_str(node, "deny", "|".join(DEFAULT_DENY))
    phrases = tuple(filter(None, (p.strip().lower() for p in deny.split("|"))))
    return attr_int(node, "max_chars", 4000), phrases
