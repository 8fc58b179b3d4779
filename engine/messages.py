"""Plain records the adapters, handlers and sessions exchange: tool specs and calls, LLM replies,
memory items.  Frozen and free of any backend's types, so a hosted-model adapter maps
its SDK's objects onto these at its edge.  They are ``msgspec`` structs: immutable like
frozen dataclasses, and built in C (a turn makes a handful).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NoReturn

import msgspec

__all__ = [
    "SUMMARY_PREFIX",
    "ChatMessage",
    "LLMResponse",
    "MemoryItem",
    "ToolCall",
    "ToolResult",
    "ToolSpec",
    "Usage",
    "chat_entry",
    "estimate_tokens",
]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def estimate_tokens(text: str) -> int:
    """A rough token count (four characters a token, at least one for non-empty text).

    Good enough for budgets and usage figures of offline adapters; a hosted adapter
    reports the provider's own counts instead.
    """
    return (len(text) + 3) // 4  # 0 for "", at least 1 for any other text


SUMMARY_PREFIX = "Summary of the earlier conversation: "
"""How a compaction summary is shown to a model (as a ``system`` message)."""


def chat_entry(role: str, content: str) -> dict[str, Any]:
    """A history entry as a model reads it: ``{"role", "content"}``, a compaction
    ``summary`` shown as a ``system`` message."""
    if role == "summary":
        return {"role": "system", "content": SUMMARY_PREFIX + content}
    return {"role": role, "content": content}


class ChatMessage(dict[str, Any]):
    """A read-only ``{"role": ..., "content": ...}`` message, the shape models take.

    Sessions build one per history message, once, and hand the same ones to every
    later model call, so the dict refuses changes (copy it with ``dict(m)`` to edit).
    It is a real ``dict``: JSON-serialisable and comparable as is.
    """

    __slots__ = ()

    @classmethod
    def of(cls, role: str, content: str) -> ChatMessage:
        """The message for a history entry (see :func:`chat_entry`)."""
        return cls(chat_entry(role, content))

    def _refuse(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError("a ChatMessage is shared between turns; copy it with dict(m) to edit")

    __setitem__ = __delitem__ = _refuse
    clear = pop = popitem = setdefault = update = __ior__ = _refuse

    def __reduce__(self) -> tuple[type[ChatMessage], tuple[dict[str, Any]]]:
        # copy/pickle rebuild from a plain dict (item by item would hit _refuse).
        return (type(self), (dict(self),))


class ToolSpec(msgspec.Struct, frozen=True):
    """A tool as the model sees it: a name, what it does, and a JSON-schema of arguments.

    ``parameters`` is a JSON-schema object (``{"type": "object", "properties": {...},
    "required": [...]}``), the shape hosted tool-calling APIs expect.
    """

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = _EMPTY

    def parameter_names(self) -> tuple[str, ...]:
        """The argument names, required ones first, in schema order."""
        props = self.parameters.get("properties", {})
        required = [str(n) for n in self.parameters.get("required", ())]
        return tuple(required + [str(n) for n in props if n not in required])


class ToolCall(msgspec.Struct, frozen=True):
    """One tool invocation requested by a model.  ``id`` pairs it with its result."""

    name: str
    arguments: Mapping[str, Any] = _EMPTY
    id: str = ""


class ToolResult(msgspec.Struct, frozen=True):
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


class Usage(msgspec.Struct, frozen=True):
    """Tokens consumed by one model call, and by which model (``""``: not said)."""

    input_tokens: int = 0
    output_tokens: int = 0
    model: str = ""

    def to_dict(self) -> dict[str, int]:
        """``{"input_tokens": ..., "output_tokens": ...}``."""
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}


class LLMResponse(msgspec.Struct, frozen=True):
    """A model's answer: text, any tool calls it asks for, usage and the model's name."""

    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage = msgspec.field(default_factory=Usage)
    model: str = ""


class MemoryItem(msgspec.Struct, frozen=True):
    """One remembered piece of text.

    ``kind`` says what it is (``exchange``, ``fact``, ``reflection``...); ``score`` is
    set by :meth:`Memory.recall` (higher is more relevant); ``meta`` is free-form.
    An ``exchange`` (what ``update_memory`` stores) has the user's message as ``text``
    (what later inputs are matched against) and the answer in ``meta["reply"]``.
    """

    text: str
    kind: str = "exchange"
    score: float = 0.0
    meta: Mapping[str, Any] = _EMPTY

    def render(self) -> str:
        """The item as a model reads it: ``user: …\nassistant: …`` for an exchange
        with a reply, else ``text``."""
        reply = self.meta.get("reply") if self.kind == "exchange" else None
        if reply is None:
            return self.text
        return f"user: {self.text}\nassistant: {reply}"
