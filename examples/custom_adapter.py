"""Plug your own LLM adapter into the built-in handlers and run graphs/turn.dot.

    PYTHONPATH=. python examples/custom_adapter.py

Any object with an ``async complete(messages, *, system, tools, max_tokens)`` method
returning an ``LLMResponse`` is an LLM adapter (``handlers.adapters.LLM`` is a
Protocol: no base class needed).  A hosted model's adapter would call its API here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio

from engine import Engine, load_graph
from handlers import build_registry
from handlers.adapters import LLM, LLMResponse, ToolSpec, Usage, count_tokens

TURN = Path(__file__).resolve().parent.parent / "graphs" / "turn.dot"


class ReverseModel:
    """A toy model that answers with the user's words in reverse order."""

    async def complete(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        system: str | None = None,
        tools: Sequence[ToolSpec] | None = None,
        max_tokens: int | None = None,
    ) -> LLMResponse:
        """Reverse the words of the last message."""
        words = str(messages[-1]["content"]).split()
        text = " ".join(reversed(words))
        usage = Usage(count_tokens(messages, system), len(words))
        return LLMResponse(text=text, usage=usage, model="reverse-1")


async def main() -> tuple[str, str]:
    """Run one turn with the custom model; returns (reply, model name)."""
    model = ReverseModel()
    assert isinstance(model, LLM)  # the protocol is runtime-checkable
    registry = build_registry(llm=model)
    graph = load_graph(str(TURN), registry=registry)
    result = await Engine(registry).run(
        graph, {"session.input": "graphs are turns", "session.id": "example"}
    )
    reply, used = str(result.context["reply"]), str(result.context["llm.model"])
    print(f"{used}: {reply}")
    return reply, used


if __name__ == "__main__":
    anyio.run(main)
