"""Add a tool of your own and let the model call it through graphs/tool_turn.dot.

    PYTHONPATH=. python examples/tool_loop.py

The offline ``EchoModel`` asks for a tool when the input reads ``/tool NAME ARGS``;
``dispatch_tools`` runs it and the model answers with the result.
"""

from __future__ import annotations

from pathlib import Path

import anyio

from engine import Engine, load_graph
from handlers import build_registry
from handlers.adapters import ToolBox

TOOL_TURN = Path(__file__).resolve().parent.parent / "graphs" / "tool_turn.dot"


async def main() -> tuple[str, list[str]]:
    """One tool-using turn; returns the reply and the node ids visited."""
    tools = ToolBox()  # calculator and clock, plus:

    @tools.tool(description="Count the words of a text.")
    def word_count(text: str) -> int:
        return len(text.split())

    registry = build_registry(tools=tools)
    graph = load_graph(str(TOOL_TURN), registry=registry)
    result = await Engine(registry).run(
        graph, {"session.input": "/tool word_count every turn is a graph"}
    )
    visited = [r.node_id for r in result.trace]
    reply = str(result.context["reply"])
    print(reply)
    print(" → ".join(visited))
    return reply, visited


if __name__ == "__main__":
    anyio.run(main)
