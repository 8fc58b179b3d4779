"""``anthropic:MODEL``: the Messages API through the official ``anthropic`` SDK.

The key comes from ``api_key`` or ``ANTHROPIC_API_KEY``, the endpoint from ``base_url``
or ``ANTHROPIC_BASE_URL``.  The SDK is imported when an :class:`AnthropicModel` is built
(``pip install 'turngraph[anthropic]'``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from engine.messages import LLMResponse, ToolCall, ToolSpec, Usage
from handlers.adapters.hosted import (
    HostedModel,
    dumps,
    parse_arguments,
)
from handlers.adapters.llm import ChatRequest

__all__ = ["DEFAULT_MAX_TOKENS", "AnthropicModel", "anthropic_messages", "anthropic_tools"]

DEFAULT_MAX_TOKENS = 1024
"""The Messages API requires ``max_tokens``; used when neither node nor caller sets it."""


def anthropic_tools(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    """Tool specs as Messages API ``tools``."""
    return [
        {
            "name": t.name,
            "description": t.description,
            "input_schema": dict(t.parameters) or {"type": "object", "properties": {}},
        }
        for t in tools
    ]


def _blocks(m: Mapping[str, Any]) -> tuple[str, Any]:
    """``(role, content)`` of one message in the Messages API's shape."""
    role = str(m.get("role", "user"))
    content = str(m.get("content", ""))
    meta = m.get("meta") or {}
    if role == "assistant" and meta.get("tool_calls"):
        uses = [
            {"type": "tool_use", "id": c["id"], "name": c["name"], "input": c.get("arguments", {})}
            for c in meta["tool_calls"]
        ]
        return "assistant", uses
    if role == "tool":
        if meta.get("call_id"):
            block = {
                "type": "tool_result",
                "tool_use_id": meta["call_id"],
                "content": content,
                "is_error": bool(meta.get("is_error")),
            }
            return "user", [block]
        return "user", f"[tool {meta.get('name', '')} result] {content}"
    return role, content


def anthropic_messages(request: ChatRequest) -> tuple[str, list[dict[str, Any]]]:
    """The request as ``(system, messages)``: ``system`` messages (a compaction summary)
    join the system prompt; the results of one round of tool calls share one user turn."""
    system = [request.system] if request.system else []
    out: list[dict[str, Any]] = []
    for m in request.messages:
        role, content = _blocks(m)
        if role == "system":
            system.append(str(content))
            continue
        prev = out[-1]["content"] if out and out[-1]["role"] == "user" else None
        if role == "user" and isinstance(content, list) and isinstance(prev, list):
            prev.extend(content)
            continue
        out.append({"role": role, "content": content})
    return "\n\n".join(system), out


class AnthropicModel(HostedModel):
    """A Messages API model (see the module).  ``model`` is the default; a node's
    ``model=`` wins.  Streams when asked to (``on_text``)."""

    provider = "anthropic"
    key_env = "ANTHROPIC_API_KEY"
    url_env = "ANTHROPIC_BASE_URL"
    default_url = "https://api.anthropic.com"

    def _client_of(self, sdk: Any) -> Any:
        return sdk.AsyncAnthropic(
            api_key=self.api_key, base_url=self.base_url, max_retries=0, timeout=self.timeout
        )

    def _arguments(self, request: ChatRequest) -> dict[str, Any]:
        system, messages = anthropic_messages(request)
        kwargs: dict[str, Any] = {
            "model": request.model or self.model,
            "messages": messages,
            "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
        }
        if system:
            kwargs["system"] = system
        if request.temperature is not None:
            # Newer SDKs no longer take ``temperature`` as an argument; the wire field
            # is still what servers read, so it goes in the body as is.
            kwargs["extra_body"] = {"temperature": request.temperature}
        if request.tools:
            kwargs["tools"] = anthropic_tools(request.tools)
        return kwargs

    async def _create(self, kwargs: dict[str, Any], *, stream: bool) -> Any:
        if stream:
            return await self._client.messages.create(**kwargs, stream=True)
        return await self._client.messages.create(**kwargs)

    def _parse(self, response: Any) -> LLMResponse:
        try:
            text: list[str] = []
            calls: list[ToolCall] = []
            for block in response.content:
                if block.type == "text":
                    text.append(block.text)
                elif block.type == "tool_use":
                    args = block.input if isinstance(block.input, dict) else None
                    raw = None if args is None else dumps(args)
                    calls.append(parse_arguments(raw, block.name, block.id))
            model = str(response.model or self.model)
            usage = Usage(response.usage.input_tokens, response.usage.output_tokens, model)
            return LLMResponse("".join(text), tuple(calls), usage, model)
        except (AttributeError, TypeError) as exc:
            raise self.malformed(f"no content/usage in the answer ({exc})") from exc

    async def _collect(self, stream: Any, on_text: Callable[[str], None]) -> LLMResponse:
        """Read a stream of Messages API events to ``message_stop``."""
        text: list[str] = []
        calls: dict[int, list[str]] = {}  # block index -> [id, name, json pieces...]
        tokens_in = tokens_out = 0
        model = ""
        stopped = False
        async for event in stream:
            kind = event.type
            if kind == "content_block_delta":
                delta = event.delta
                if delta.type == "text_delta":
                    text.append(delta.text)
                    on_text(delta.text)
                elif delta.type == "input_json_delta" and event.index in calls:
                    calls[event.index].append(delta.partial_json)
            elif kind == "content_block_start" and event.content_block.type == "tool_use":
                calls[event.index] = [event.content_block.id, event.content_block.name]
            elif kind == "message_start":
                model = event.message.model or ""
                tokens_in = event.message.usage.input_tokens or 0
            elif kind == "message_delta":
                tokens_out = event.usage.output_tokens or tokens_out
            elif kind == "message_stop":
                stopped = True
        if not stopped:
            raise self.interrupted()
        model = model or self.model
        tool_calls = tuple(
            parse_arguments("".join(e[2:]), e[1], e[0]) for _, e in sorted(calls.items())
        )
        return LLMResponse("".join(text), tool_calls, Usage(tokens_in, tokens_out, model), model)
