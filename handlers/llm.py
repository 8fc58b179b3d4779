"""``llm_call``, ``dispatch_tools`` and ``tool``: the model and the tools it may use."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from engine.errors import AdapterError, TransientAdapterError
from engine.events import current_emitter
from engine.graph import Node
from engine.messages import LLMResponse, MemoryItem, ToolCall, ToolResult, Usage
from engine.outcome import Outcome
from handlers._common import (
    NodeSettings,
    attr_bool,
    attr_int,
    attr_str,
    fill,
    input_text,
    recent_messages,
)
from handlers.adapters.llm import INVALID_ARGUMENTS, LLM, ChatRequest
from handlers.adapters.tools import Tools

__all__ = ["DEFAULT_SYSTEM", "DispatchTools", "LLMCall", "ToolNode", "add_usage"]

DEFAULT_SYSTEM = "You are a helpful assistant. Answer briefly and accurately."


def add_usage(context: Mapping[str, Any], response: LLMResponse) -> dict[str, int]:
    """``llm.usage`` plus this response's tokens (a run's total over all its calls)."""
    prior = context.get("llm.usage") or {}
    return {
        "input_tokens": int(prior.get("input_tokens", 0)) + response.usage.input_tokens,
        "output_tokens": int(prior.get("output_tokens", 0)) + response.usage.output_tokens,
    }


def _system(system: str, items: Sequence[MemoryItem]) -> str:
    if items:
        system += "\n\nRelevant memory:\n" + "\n".join(f"- {i.render()}" for i in items)
    return system


class _Settings(NamedTuple):
    """An ``llm_call`` node's settings, typed once per node."""

    system: str
    history: int
    max_tokens: int | None
    prompt: str | None
    tools: bool
    max_tool_rounds: int | None
    """``None`` when tools are off: the setting is then never read (nor checked)."""
    model: str | None
    temperature: float | None


def _temperature(node: Node) -> float | None:
    value = node.attrs.get("temperature")
    if value is None:
        return None
    try:
        number = float(value)  # type: ignore[arg-type]  # checked by the except
    except (TypeError, ValueError):
        number = -1.0
    if isinstance(value, bool) or not 0.0 <= number <= 2.0:
        raise ValueError(
            f"node {node.id!r}: temperature must be a number from 0 to 2, not {value!r}"
        )
    return number


def _parse(node: Node) -> _Settings:
    # Read in the order the settings were always checked, so a node with two bad
    # settings still reports the same one.
    tools = attr_bool(node, "tools", False)
    max_tool_rounds = attr_int(node, "max_tool_rounds", 3) if tools else None
    max_tokens = attr_int(node, "max_tokens", 0) or None
    history = attr_int(node, "history", 20)
    prompt = node.attrs.get("prompt")
    model = node.attrs.get("model")
    return _Settings(
        system=attr_str(node, "system", DEFAULT_SYSTEM),
        history=history,
        max_tokens=max_tokens,
        prompt=None if prompt is None else str(prompt),
        tools=tools,
        max_tool_rounds=max_tool_rounds,
        model=None if model is None or model == "" else str(model),
        temperature=_temperature(node),
    )


class LLMCall:
    """Asks the model for the reply.

    Messages: the last ``history`` (default 20) messages of ``session.history``, then the
    user's input (through the ``prompt`` template when set: ``{input}`` is replaced),
    then this turn's ``turn.messages`` (tool calls and results).  ``recall.items`` are
    added to the system prompt (``system`` setting, else :data:`DEFAULT_SYSTEM`).

    Sets ``llm.text``, ``llm.tool_calls``, ``llm.model``, ``llm.usage`` (tokens summed
    over the run's calls), ``llm.calls`` and ``llm.wants_tools``; the preferred label is
    ``tools`` or ``reply``.  Tools are offered only with ``tools=true``, and only while
    ``tools.rounds`` is below ``max_tool_rounds`` (default 3), which bounds a tool loop.
    ``max_tokens``, ``model`` and ``temperature`` are passed on: a node's values win over
    the adapter's defaults (``model`` and ``temperature`` reach only adapters with a
    ``respond`` method, :class:`~handlers.adapters.StreamingLLM`).  When the run is
    observed such a model streams: each piece of text is a ``TextDelta`` event, each
    tool call asked for a ``ToolCallRequested``.  The visit's usage (tokens, model) goes
    into its trace record.  Adapter errors propagate (transient ones are retried).
    """

    __slots__ = ("_respond", "_settings", "llm", "tools")

    def __init__(self, llm: LLM, tools: Tools) -> None:
        self.llm = llm
        self.tools = tools
        self._settings = NodeSettings(_parse)
        self._respond = getattr(llm, "respond", None)

    async def __call__(self, node: Node, context: Mapping[str, Any]) -> Outcome:
        items: Sequence[MemoryItem] = context.get("recall.items") or ()
        rounds = int(context.get("tools.rounds") or 0)
        settings = self._settings(node)
        offer = settings.tools and rounds < (settings.max_tool_rounds or 0)
        messages = self._messages(settings, context)
        system = _system(settings.system, items)
        tools = self.tools.specs() if offer else None
        emitter = current_emitter()
        if self._respond is not None:
            request = ChatRequest(
                messages, system, tools, settings.max_tokens, settings.model, settings.temperature
            )
            response = await self._respond(request, emitter.text if emitter else None)
        else:
            response = await self.llm.complete(
                messages, system=system, tools=tools, max_tokens=settings.max_tokens
            )
        wants = offer and bool(response.tool_calls)
        if emitter is not None and wants:
            for call in response.tool_calls:
                emitter.tool_call(call.id, call.name, call.arguments)
        updates = {
            "llm.text": response.text,
            "llm.tool_calls": response.tool_calls,
            "llm.model": response.model,
            "llm.usage": add_usage(context, response),
            "llm.calls": int(context.get("llm.calls") or 0) + 1,
            "llm.wants_tools": wants,
        }
        u = response.usage
        usage = Usage(u.input_tokens, u.output_tokens, response.model or u.model)
        label = "tools" if wants else "reply"
        return Outcome("success", updates, preferred_label=label, usage=usage)

    @staticmethod
    def _messages(settings: _Settings, context: Mapping[str, Any]) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = recent_messages(context, settings.history)
        text = input_text(context)
        if settings.prompt is not None:
            # {input} first is wrong: the user's own braces would then be expanded.
            text = fill(settings.prompt, context, {}).replace("{input}", text)
        messages.append({"role": "user", "content": text})
        messages.extend(context.get("turn.messages") or ())
        return messages


def _call_message(calls: Sequence[ToolCall]) -> dict[str, Any]:
    """The assistant's tool request, readable as text and exact in ``meta``."""
    shown = ", ".join(f"{c.name}({json.dumps(dict(c.arguments), default=str)})" for c in calls)
    meta = {
        "tool_calls": [{"id": c.id, "name": c.name, "arguments": dict(c.arguments)} for c in calls]
    }
    return {"role": "assistant", "content": f"[calling {shown}]", "meta": meta}


def _result_message(result: ToolResult) -> dict[str, Any]:
    meta = {"name": result.name, "call_id": result.call_id, "is_error": result.is_error}
    return {"role": "tool", "content": result.content, "meta": meta}


async def _run_tool(tools: Tools, call: ToolCall) -> ToolResult:
    """One call; a permanent tool error becomes an error result the model can read."""
    if INVALID_ARGUMENTS in call.arguments:
        text = str(call.arguments[INVALID_ARGUMENTS])[:200]
        reason = f"error: the arguments must be a JSON object, not {text!r}"
        return ToolResult(call.name, reason, is_error=True, call_id=call.id)
    try:
        result = await tools.call(call.name, call.arguments)
    except TransientAdapterError:
        raise
    except AdapterError as exc:
        return ToolResult(call.name, f"error: {exc.reason}", is_error=True, call_id=call.id)
    return ToolResult(result.name, result.content, result.is_error, call.id)


class DispatchTools:
    """Runs the tool calls in ``llm.tool_calls``, in order.

    Appends their :class:`ToolResult` to ``tools.results``, adds one to ``tools.rounds``
    and appends the request and the results to ``turn.messages`` (the next ``llm_call``
    sees them; the session stores them before the reply).  An unknown tool or bad
    arguments become an error result for the model to read; a transient failure
    propagates so the node is retried.  At most ``max_calls`` (default 8) calls a round.
    """

    __slots__ = ("tools",)

    def __init__(self, tools: Tools) -> None:
        self.tools = tools

    async def __call__(self, node: Node, context: Mapping[str, Any]) -> Outcome:
        calls: Sequence[ToolCall] = context.get("llm.tool_calls") or ()
        calls = tuple(calls)[: attr_int(node, "max_calls", 8)]
        emitter = current_emitter()
        results = []
        for c in calls:
            r = await _run_tool(self.tools, c)
            results.append(r)
            if emitter is not None:  # as each returns: observers can time each call
                emitter.tool_result(r.call_id, r.name, r.content, r.is_error)
        messages = list(context.get("turn.messages") or ())
        if calls:
            messages.append(_call_message(calls))
            messages.extend(_result_message(r) for r in results)
        updates = {
            "tools.results": (*(context.get("tools.results") or ()), *results),
            "tools.rounds": int(context.get("tools.rounds") or 0) + 1,
            "turn.messages": messages,
            "llm.wants_tools": False,
        }
        return Outcome("success" if calls else "skipped", updates)


class ToolNode:
    """A node that calls one tool itself (``shape=parallelogram`` or ``handler=tool``).

    Settings: ``tool`` (its name) and ``arg.NAME=VALUE`` arguments.  Sets ``tool.result``
    (the content) and appends to ``tools.results``; a tool error fails the node.
    """

    __slots__ = ("tools",)

    def __init__(self, tools: Tools) -> None:
        self.tools = tools

    async def __call__(self, node: Node, context: Mapping[str, Any]) -> Outcome:
        name = attr_str(node, "tool", "")
        if not name:
            return Outcome("fail", reason=f"node {node.id!r} names no tool (set tool=NAME)")
        args = self._arguments(node, name)
        result = await self.tools.call(name, args)
        updates = {
            "tool.result": result.content,
            "tools.results": (*(context.get("tools.results") or ()), result),
        }
        if result.is_error:
            return Outcome("fail", updates, reason=result.content)
        return Outcome("success", updates)

    def _arguments(self, node: Node, tool: str) -> dict[str, Any]:
        """``arg.*`` settings; a string parameter gets text even when DOT typed it
        (``arg.expression=2`` arrives as the integer 2)."""
        args: dict[str, Any] = {k[4:]: v for k, v in node.attrs.items() if k.startswith("arg.")}
        spec = next((s for s in self.tools.specs() if s.name == tool), None)
        props: Mapping[str, Any] = spec.parameters.get("properties", {}) if spec else {}
        for key, value in args.items():
            if props.get(key, {}).get("type") == "string" and not isinstance(value, str):
                args[key] = str(value).lower() if isinstance(value, bool) else str(value)
        return args
