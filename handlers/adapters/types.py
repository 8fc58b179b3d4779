"""Plain records the adapters exchange with handlers: tool specs and calls, LLM replies,
memory items.  Frozen, slotted and free of any backend's types, so a hosted-model adapter
maps its SDK's objects onto these at its edge.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = [
    "LLMResponse",
    "MemoryItem",
    "ToolCall",
    "ToolResult",
    "ToolSpec",
    "Usage",
    "estimate_tokens",
]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def estimate_tokens(text: str) -> int:
    """A rough token count (four characters a token, at least one for non-empty text).

    Good enough for budgets and usage figures of offline adapters; a hosted adapter
    reports the provider's own counts instead.
    """
    return (len(text) + 3) // 4  # 0 for "", at least 1 for any other text


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool as the model sees it: a name, what it does, and a JSON-schema of arguments.

    ``parameters`` is a JSON-schema object (``{"type": "object", "properties": {...},
    "required": [...]}``), the shape hosted tool-calling APIs expect.
    """

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    def parameter_names(self) -> tuple[str, ...]:
        """The argument names, required ones first, in schema order."""
        props = self.parameters.get("properties", {})
        required = [str(n) for n in self.parameters.get("required", ())]
        return tuple(required + [str(n) for n in props if n not in required])


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool invocation requested by a model.  ``id`` pairs it with its result."""

    name: str
    arguments: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    id: str = ""


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What a tool returned (``content`` as text) or, with ``is_error``, why it failed."""

    name: str
    content: str
    is_error: bool = False
    call_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of this result."""
        return {
            "name": self.name,
            "content": self.content,
            "is_error": self.is_error,
            "call_id": self.call_id,
        }


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens consumed by one model call."""

    input_tokens: int = 0
    output_tokens: int = 0

    def to_dict(self) -> dict[str, int]:
        """``{"input_tokens": ..., "output_tokens": ...}``."""
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}


@dataclass(frozen=True, slots=True)
class LLMResponse:
    """A model's answer: text, any tool calls it asks for, usage and the model's name."""

    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage = field(default_factory=Usage)
    model: str = ""


@dataclass(frozen=True, slots=True)
class MemoryItem:
    """One remembered piece of text.

    ``kind`` says what it is (``exchange``, ``fact``, ``reflection``...); ``score`` is
    set by :meth:`Memory.recall` (higher is more relevant); ``meta`` is free-form.
    """

    text: str
    kind: str = "exchange"
    score: float = 0.0
    meta: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
