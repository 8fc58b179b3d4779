"""The workload every framework in :mod:`bench.peers` runs: one turn, six steps, mock adapters.

``classify → recall → llm_call → format → update_memory → done``.  The adapters are
cheap plain functions (a keyword classifier, a keyword recall over 32 facts, an echo
"model", a formatter), so what differs between frameworks is the framework: scheduling,
state handling, checkpointing.  Each turn appends two messages (user, assistant) to the
conversation's history, so a framework that copies history per turn shows it as growth.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "STEPS",
    "classify",
    "format_reply",
    "llm",
    "new_messages",
    "recall",
    "user_text",
]

STEPS = ("classify", "recall", "llm_call", "format", "update_memory", "done")
"""The six steps, in order."""

_FACTS = tuple(f"fact {i} about topic{i % 7} and item{i}" for i in range(32))
_FACT_WORDS = tuple(frozenset(f.split()) for f in _FACTS)


def user_text(i: int) -> str:
    """The ``i``-th user message of a benchmark conversation (varied, deterministic)."""
    return f"what about topic{i % 7} and item{i % 32}?" if i % 3 else f"hi there, turn {i}"


def classify(text: str) -> str:
    """Intent by keyword: ``question``, ``greeting`` or ``statement``."""
    t = text.strip().lower()
    if t.endswith("?"):
        return "question"
    if t.startswith(("hi", "hello")):
        return "greeting"
    return "statement"


def recall(text: str, k: int = 3) -> list[str]:
    """Up to ``k`` facts sharing a word with ``text``."""
    words = frozenset(text.lower().rstrip("?").split())
    return [f for f, w in zip(_FACTS, _FACT_WORDS, strict=True) if w & words][:k]


def llm(text: str, intent: str, recalled: list[str]) -> str:
    """The mock model: echoes the input, mentioning what was recalled."""
    return f"echo ({intent}, {len(recalled)} facts): {text}"


def format_reply(reply: str) -> str:
    """The reply as shown to the user."""
    return reply.strip()


def new_messages(text: str, reply: str) -> list[dict[str, Any]]:
    """The two messages one turn appends to the history."""
    return [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]
