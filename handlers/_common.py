"""Small helpers the built-in handlers share: typed node settings, history access,
placeholder substitution.  Private: the public face is :mod:`handlers`."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from engine.graph import Node
from engine.messages import chat_entry

__all__ = [
    "NodeSettings",
    "attr_bool",
    "attr_int",
    "attr_str",
    "fill",
    "input_text",
    "recent_messages",
    "role_content",
]


T = TypeVar("T")


class NodeSettings(Generic[T]):
    """A handler's settings, parsed from a node's attributes once per :class:`Node`.

    A ``Node`` is immutable, so what ``parse(node)`` returns stays right for as long as
    that node exists; the turn loop then reads a tuple instead of re-typing attributes
    on every visit.  Entries are keyed by ``id(node)`` and hold the node itself (so the
    id cannot be reused while cached; the identity check is a second guard).  A
    ``parse`` that raises caches nothing: a bad setting fails every visit, as before.
    At most ``size`` nodes are kept; past that the cache starts over.
    """

    __slots__ = ("_entries", "_parse", "size")

    def __init__(self, parse: Callable[[Node], T], *, size: int = 256) -> None:
        self._parse = parse
        self._entries: dict[int, tuple[Node, T]] = {}
        self.size = size

    def __call__(self, node: Node) -> T:
        """The parsed settings of ``node``."""
        entry = self._entries.get(id(node))
        if entry is not None and entry[0] is node:
            return entry[1]
        value = self._parse(node)
        if len(self._entries) >= self.size:
            self._entries.clear()
        self._entries[id(node)] = (node, value)
        return value


def attr_str(node: Node, key: str, default: str) -> str:
    """Node setting ``key`` as text (``default`` when absent)."""
    value = node.attrs.get(key)
    return default if value is None else str(value)


def attr_int(node: Node, key: str, default: int) -> int:
    """Node setting ``key`` as a non-negative integer; a bad value fails the node clearly."""
    value = node.attrs.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"node {node.id!r}: {key} must be an integer, not {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"node {node.id!r}: {key} must be an integer, not {value!r}") from None
    if number < 0:
        raise ValueError(f"node {node.id!r}: {key} must be >= 0, not {number}")
    return number


_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0", ""})


def attr_bool(node: Node, key: str, default: bool) -> bool:
    """Node setting ``key`` as a boolean (``true``/``false``, ``yes``/``no``, ``1``/``0``)."""
    value = node.attrs.get(key)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"node {node.id!r}: {key} must be true or false, not {value!r}")


def input_text(context: Mapping[str, Any]) -> str:
    """The turn's input: ``input.text`` once classified, else ``session.input``."""
    text = context.get("input.text")
    if text is None:
        text = context.get("session.input")
    return "" if text is None else str(text)


def role_content(message: Any) -> tuple[str, str]:
    """``(role, content)`` of a history entry: a mapping or an object with those attributes."""
    # Attribute access first: history entries are usually Message records, and an
    # isinstance check against the Mapping ABC costs more than the whole lookup.
    role = getattr(message, "role", None)
    if role is not None:
        return str(role), str(getattr(message, "content", ""))
    if isinstance(message, Mapping):
        return str(message.get("role", "user")), str(message.get("content", ""))
    return "user", ""


def recent_messages(context: Mapping[str, Any], limit: int) -> list[dict[str, Any]]:
    """The last ``limit`` messages of ``session.history`` as ``{role, content}`` dicts.

    Indexes only the tail, so the cost does not grow with the history's length (the
    history is a read-only view; it is never copied whole).  A ``summary`` entry becomes
    a ``system`` message, the role models understand.  A session's history hands out
    its cached, read-only :class:`~engine.messages.ChatMessage` dicts.
    """
    history: Sequence[Any] = context.get("session.history") or ()
    chat_tail = getattr(history, "chat_tail", None)
    if chat_tail is not None:
        cached: list[dict[str, Any]] | None = chat_tail(limit)
        if cached is not None:
            return cached
    n = len(history)
    out: list[dict[str, Any]] = []
    for message in history[max(0, n - limit) : n]:
        # role_content() inlined for its common case (a Message record with text
        # fields): this loop runs for every message a model call sees, every turn.
        try:
            role, content = message.role, message.content
        except AttributeError:
            role, content = role_content(message)
        else:
            if type(role) is not str or type(content) is not str:
                role, content = role_content(message)
        # A plain dict, built for this call only (the caller may change it); one of
        # strings only is also left alone by the garbage collector.
        out.append(chat_entry(role, content))
    return out


_PLACEHOLDER = re.compile(r"\{([A-Za-z_][\w.]*)\}")


def fill(template: str, context: Mapping[str, Any], aliases: Mapping[str, str]) -> str:
    """Replace ``{name}`` with a context value: an alias (``{text}`` → ``llm.text``) or a
    context key (``{session.id}``).  Unknown names stay as written, so literal braces in
    a template never raise."""

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        key = aliases.get(name, name)
        if key not in context:
            return match.group(0)
        value = context[key]
        return "" if value is None else str(value)

    return _PLACEHOLDER.sub(sub, template)
