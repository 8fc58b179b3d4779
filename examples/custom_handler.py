"""Register your own handler next to the built-ins and run a small inline graph.

    PYTHONPATH=. python examples/custom_handler.py

The ``shout`` node upper-cases the model's text before ``format`` turns it into the
reply; the rest of the pipeline is made of built-in handlers with offline adapters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio

from engine import Engine, Node, load_graph
from handlers import build_registry

GRAPH = """
digraph shouting_turn {
    start [shape=Mdiamond]
    done  [shape=Msquare]
    classify [handler=classify]
    llm_call [handler=llm_call]
    shout    [handler=shout, suffix="!"]     // our own handler, with a setting
    format   [handler=format]
    start -> classify -> llm_call -> shout -> format -> done
}
"""


async def main() -> str:
    """Run one turn through the inline graph; returns the reply."""
    registry = build_registry()

    @registry.handler("shout")
    def shout(node: Node, context: Mapping[str, Any]) -> Mapping[str, Any]:
        """Upper-case ``llm.text``; a plain mapping return means success with updates."""
        suffix = str(node.get("suffix", ""))
        return {"llm.text": str(context.get("llm.text", "")).upper() + suffix}

    graph = load_graph(GRAPH, registry=registry)
    result = await Engine(registry).run(graph, {"session.input": "hello graphs"})
    reply = str(result.context["reply"])
    print(reply)
    return reply


if __name__ == "__main__":
    anyio.run(main)
