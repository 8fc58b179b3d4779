"""``openai:MODEL``: Chat Completions through the official ``openai`` SDK.

Works with OpenAI and with every server that speaks its wire format (Ollama, vLLM,
llama.cpp's server, LM Studio): point ``base_url`` (or ``OPENAI_BASE_URL``) at it.  The
key comes from ``api_key`` or ``OPENAI_API_KEY``; a local server needs none.  The SDK
is imported when an :class:`OpenAIModel` is built (``pip install 'turngraph[openai]'``).
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

__all__ = ["OpenAIModel", "openai_messages", "openai_tools"]


def openai_tools(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    """Tool specs as Chat Completions ``tools``."""
    return [
        {
            "type": "function",
            "function": {
                "name": t.name,
                "description": t.description,
                "parameters": dict(t.parameters) or {"type": "object", "properties": {}},
            },
        }
        for t in tools
    ]


def _message(m: Mapping[str, Any]) -> dict[str, Any]:
    role = str(m.get("role", "user"))
    content = str(m.get("content", ""))
    meta = m.get("meta") or {}
    if role == "assistant" and meta.get("tool_calls"):
        calls = [
            {
                "id": c["id"],
                "type": "function",
                "function": {"name": c["name"], "arguments": dumps(c.get("arguments", {}))},
            }
            for c in meta["tool_calls"]
        ]
        return {"role": "assistant", "content": None, "tool_calls": calls}
    if role == "tool":
        if meta.get("call_id"):
            return {"role": "tool", "tool_call_id": meta["call_id"], "content": content}
        # A tool result from an earlier turn's history has lost its call id, which the
        # API requires: the model reads it as text instead.
        return {"role": "user", "content": f"[tool {meta.get('name', '')} result] {content}"}
    return {"role": role, "content": content}


def openai_messages(request: ChatRequest) -> list[dict[str, Any]]:
    """The request's conversation as Chat Completions ``messages`` (system first)."""
    out = [{"role": "system", "content": request.system}] if request.system else []
    out.extend(_message(m) for m in request.messages)
    return out


class OpenAIModel(HostedModel):
    """A Chat Completions model (see the module).  ``model`` is the default; a node's
    ``model=`` wins.  Streams when asked to (``on_text``), with usage included."""

    provider = "openai"
    key_env = "OPENAI_API_KEY"
    url_env = "OPENAI_BASE_URL"
    default_url = "https://api.openai.com/v1"

    def _client_of(self, sdk: Any) -> Any:
        return sdk.AsyncOpenAI(
            api_key=self.api_key, base_url=self.base_url, max_retries=0, timeout=self.timeout
        )

    def _arguments(self, request: ChatRequest) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": request.model or self.model,
            "messages": openai_messages(request),
        }
        if request.max_tokens:
            kwargs["max_tokens"] = request.max_tokens
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        if request.tools:
            kwargs["tools"] = openai_tools(request.tools)
        return kwargs

    async def _create(self, kwargs: dict[str, Any], *, stream: bool) -> Any:
        create = self._client.chat.completions.create
        if stream:
            return await create(**kwargs, stream=True, stream_options={"include_usage": True})
        return await create(**kwargs)

    def _parse(self, response: Any) -> LLMResponse:
        try:
            message = response.choices[0].message
            calls = tuple(
                parse_arguments(c.function.arguments, c.function.name, c.id)
                for c in message.tool_calls or ()
            )
            usage = response.usage
            tokens = (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)
            model = str(response.model or self.model)
            return LLMResponse(
                str(message.content or ""), calls, Usage(tokens[0], tokens[1], model), model
            )
        except (AttributeError, IndexError, TypeError) as exc:
            raise self.malformed(f"no choices/message in the answer ({exc})") from exc

    async def _collect(self, stream: Any, on_text: Callable[[str], None]) -> LLMResponse:
        """Read a stream to its end: text to ``on_text`` as it comes, tool calls and
        usage gathered; a stream that ends without a finish reason was cut."""
        text: list[str] = []
        calls: dict[int, list[str]] = {}  # index -> [id, name, argument pieces...]
        finished = False
        usage = Usage()
        model = ""
        append = text.append
        async for chunk in stream:
            # The common chunk is one choice with a piece of text: read each field once.
            for choice in chunk.choices or ():
                delta = choice.delta
                if delta is not None:
                    piece = delta.content
                    if piece:
                        append(piece)
                        on_text(piece)
                    if delta.tool_calls:
                        _add_call_deltas(calls, delta.tool_calls)
                if choice.finish_reason:
                    finished = True
            if chunk.usage is not None:
                usage = Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
            if not model:
                model = chunk.model or ""
        if not finished:
            raise self.interrupted()
        model = model or self.model
        tool_calls: tuple[ToolCall, ...] = tuple(
            parse_arguments("".join(e[2:]), e[1], e[0]) for _, e in sorted(calls.items())
        )
        usage = Usage(usage.input_tokens, usage.output_tokens, model)
        return LLMResponse("".join(text), tool_calls, usage, model)


def _add_call_deltas(calls: dict[int, list[str]], deltas: Any) -> None:
    """Fold streamed tool-call pieces into ``calls``: index -> [id, name, arguments...]."""
    for c in deltas:
        entry = calls.setdefault(c.index, ["", ""])
        if c.id:
            entry[0] = c.id
        if c.function is not None:
            entry[1] = entry[1] or (c.function.name or "")
            entry.append(c.function.arguments or "")
