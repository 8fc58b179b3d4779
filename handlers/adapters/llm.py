"""The LLM adapter protocol and two offline models: :class:`EchoModel` and :class:`ScriptedModel`.

Neither pretends to be intelligent.  ``EchoModel`` is the CLI's default so a turn graph
runs end to end with no network and no key; ``ScriptedModel`` plays back a list of
answers for tests.  Hosted models are separate adapters implementing :class:`LLM`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from engine.errors import AdapterError
from engine.messages import LLMResponse, ToolCall, ToolSpec, Usage, estimate_tokens
from engine.scopes import sleep

__all__ = [
    "DEFAULT_TIMEOUT",
    "INVALID_ARGUMENTS",
    "LLM",
    "ChatRequest",
    "EchoModel",
    "ScriptedModel",
    "StreamingLLM",
    "count_tokens",
]

TOOL_MARKER = "/tool "

DEFAULT_TIMEOUT = 60.0
"""Seconds a hosted model's request may take before it is a ``ProviderTimeout``."""

INVALID_ARGUMENTS = "__invalid_arguments__"
"""The one key of a :class:`ToolCall`'s ``arguments`` when the model's arguments were not
a JSON object: its value is the text the model sent.  ``dispatch_tools`` answers such
a call with an error result, so the model can try again."""


@runtime_checkable
class LLM(Protocol):
    """A chat model.

    ``messages`` are ``{"role": ..., "content": ...}`` mappings (roles ``user``,
    ``assistant``, ``tool``, ``system``), oldest first.  Implementations raise
    :class:`~engine.errors.TransientAdapterError` for failures worth retrying
    (timeouts, rate limits, 5xx) and :class:`~engine.errors.AdapterError` otherwise.
    """

    async def complete(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        system: str | None = None,
        tools: Sequence[ToolSpec] | None = None,
        max_tokens: int | None = None,
    ) -> LLMResponse:
        """Answer the conversation ``messages``."""
        ...


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One request to a model, with the node's choices (``None``: the adapter's default)."""

    messages: Sequence[Mapping[str, Any]]
    system: str | None = None
    tools: Sequence[ToolSpec] | None = None
    max_tokens: int | None = None
    model: str | None = None
    temperature: float | None = None


@runtime_checkable
class StreamingLLM(LLM, Protocol):
    """A model that also takes a whole :class:`ChatRequest` (model, temperature...) and
    can stream: ``on_text`` is called with each piece of the reply as it arrives.

    A stream that stops before the reply is complete raises
    :class:`~engine.errors.StreamInterrupted`; the pieces already passed to ``on_text``
    are then void.
    """

    async def respond(
        self, request: ChatRequest, on_text: Callable[[str], None] | None = None
    ) -> LLMResponse:
        """Answer ``request``, streaming its text to ``on_text`` when given."""
        ...


def count_tokens(messages: Sequence[Mapping[str, Any]], system: str | None = None) -> int:
    """Estimated input tokens of a request (see :func:`estimate_tokens`)."""
    total = estimate_tokens(system or "")
    for m in messages:
        # estimate_tokens() inlined: this runs for every message of every model call.
        content = m.get("content", "")
        total += (len(content if type(content) is str else str(content)) + 3) // 4
    return total


def _truncate(text: str, max_tokens: int | None) -> str:
    if max_tokens is None or max_tokens <= 0:
        return text
    return text[: max_tokens * 4]


class EchoModel:
    """A deterministic offline model that repeats the last user message.

    * The last message is from the user: the reply is ``"echo: <its text>"``.
    * ...and it starts with ``/tool NAME ARGS`` while ``tools`` were offered: instead of
      text, it asks for tool ``NAME``.  ``ARGS`` is a JSON object, or else a plain string
      given to the tool's first parameter (``/tool calculator 2 * 21``).
    * The last messages are tool results: the reply is ``"echo: <their contents>"``.

    ``delay`` seconds are awaited per call (an anyio sleep) to simulate a model's
    latency in benchmarks.  No network, no randomness.
    """

    def __init__(self, *, delay: float = 0.0, name: str = "echo") -> None:
        if delay < 0:
            raise ValueError(f"delay must be >= 0, not {delay!r}")
        self.delay = delay
        self.name = name

    async def complete(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        system: str | None = None,
        tools: Sequence[ToolSpec] | None = None,
        max_tokens: int | None = None,
    ) -> LLMResponse:
        """Echo the conversation's last user message (or tool results); see the class."""
        if self.delay:
            await sleep(self.delay)
        calls, text = self._answer(messages, tools)
        text = _truncate(text, max_tokens)
        usage = Usage(count_tokens(messages, system), estimate_tokens(text))
        return LLMResponse(text=text, tool_calls=calls, usage=usage, model=self.name)

    def _answer(
        self, messages: Sequence[Mapping[str, Any]], tools: Sequence[ToolSpec] | None
    ) -> tuple[tuple[ToolCall, ...], str]:
        if not messages:
            return (), "echo: (nothing to echo)"
        results = _trailing_tool_results(messages)
        if results:
            return (), "echo: " + "; ".join(results)
        last = str(messages[-1].get("content", ""))
        if tools and last.lstrip().startswith(TOOL_MARKER):
            call = _parse_tool_marker(last.lstrip()[len(TOOL_MARKER) :], tools)
            if call is not None:
                return (call,), ""
        return (), f"echo: {last}"


def _trailing_tool_results(messages: Sequence[Mapping[str, Any]]) -> list[str]:
    """Contents of the tool messages at the end of the conversation, in order."""
    out: list[str] = []
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") != "tool":
            break
        out.append(str(messages[i].get("content", "")))
    out.reverse()
    return out


def _parse_tool_marker(rest: str, tools: Sequence[ToolSpec]) -> ToolCall | None:
    """``NAME ARGS`` → a ToolCall, or None when the text names no tool at all."""
    name, _, args = rest.strip().partition(" ")
    if not name:
        return None
    args = args.strip()
    arguments: dict[str, Any] = {}
    if args.startswith("{"):
        try:
            loaded = json.loads(args)
        except json.JSONDecodeError:
            loaded = None
        if isinstance(loaded, dict):
            arguments = loaded
    if not arguments and args:
        spec = next((t for t in tools if t.name == name), None)
        params = spec.parameter_names() if spec else ()
        arguments = {params[0] if params else "input": args}
    return ToolCall(name=name, arguments=arguments, id="call_1")


class ScriptedModel:
    """Plays back ``responses`` in order, one per call, and records every request.

    Each response is an :class:`LLMResponse`, a plain string (a text reply), or an
    exception instance, which is raised instead (to test retries and failures).  Once
    the script is exhausted, a call raises :class:`~engine.errors.AdapterError`.
    ``calls`` holds ``(messages, system, tools)`` for each request, copied.
    """

    def __init__(self, responses: Iterable[LLMResponse | str | BaseException]) -> None:
        self._responses = list(responses)
        self._next = 0
        self.calls: list[tuple[list[dict[str, Any]], str | None, tuple[ToolSpec, ...]]] = []

    @property
    def remaining(self) -> int:
        """How many scripted responses are left."""
        return len(self._responses) - self._next

    async def complete(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        system: str | None = None,
        tools: Sequence[ToolSpec] | None = None,
        max_tokens: int | None = None,
    ) -> LLMResponse:
        """The next scripted response (or raise the next scripted exception)."""
        self.calls.append(([dict(m) for m in messages], system, tuple(tools or ())))
        if self._next >= len(self._responses):
            raise AdapterError("scripted", f"script exhausted after {self._next} responses")
        item = self._responses[self._next]
        self._next += 1
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, str):
            usage = Usage(count_tokens(messages, system), estimate_tokens(item))
            return LLMResponse(text=item, usage=usage, model="scripted")
        return item
