"""The peer frameworks' versions of the :mod:`bench.peers_mock` turn.

Each ``make_*`` factory builds its framework's graph for one conversation and returns a
:data:`Turn` (``await turn(text) -> reply``); resources it opens (SQLite connections)
are closed by the ``AsyncExitStack`` it is given.  A factory raises ``ImportError`` when
its framework is not installed; the benchmark reports that and moves on.

Each peer gets its best ordinary configuration: LangGraph's synchronous ``invoke``
(and, for information, its async path), pydantic-graph without instrumentation, Burr
without tracking.
"""

from __future__ import annotations

import itertools
import operator
import sqlite3
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypedDict

from bench import peers_mock as mock

__all__ = ["PEERS", "Turn", "lg_graph", "make_burr", "make_langgraph", "make_pydantic_graph"]

Turn = Callable[[str], Awaitable[str]]
Factory = Callable[[AsyncExitStack, Path], Awaitable[Turn]]


class _LGState(TypedDict, total=False):
    input: str
    intent: str
    recalled: list[str]
    reply: str
    output: str
    messages: Annotated[list[dict[str, Any]], operator.add]


def lg_graph(checkpointer: Any) -> Any:
    """The mock turn as a compiled LangGraph ``StateGraph`` saving to ``checkpointer``."""
    from langgraph.graph import END, START, StateGraph

    g: Any = StateGraph(_LGState)
    g.add_node("classify", lambda s: {"intent": mock.classify(s["input"])})
    g.add_node("recall", lambda s: {"recalled": mock.recall(s["input"])})
    g.add_node("llm_call", lambda s: {"reply": mock.llm(s["input"], s["intent"], s["recalled"])})
    g.add_node("format", lambda s: {"output": mock.format_reply(s["reply"])})
    g.add_node("update_memory", lambda s: {"messages": mock.new_messages(s["input"], s["output"])})
    g.add_node("done", lambda s: {})
    g.add_edge(START, "classify")
    for a, b in itertools.pairwise(mock.STEPS):
        g.add_edge(a, b)
    g.add_edge("done", END)
    return g.compile(checkpointer=checkpointer)


def _lg_turn(graph: Any, **options: Any) -> Turn:
    config = {"configurable": {"thread_id": "bench"}}

    async def turn(text: str) -> str:
        out = graph.invoke({"input": text}, config, **options)
        return str(out["output"])

    return turn


async def make_langgraph(stack: AsyncExitStack, tmp: Path) -> Turn:
    """LangGraph, no checkpointer: every turn starts from empty state."""
    return _lg_turn(lg_graph(None))


async def make_langgraph_memory(stack: AsyncExitStack, tmp: Path) -> Turn:
    """LangGraph with ``InMemorySaver``: the thread's history is checkpointed in memory."""
    from langgraph.checkpoint.memory import InMemorySaver

    return _lg_turn(lg_graph(InMemorySaver()))


async def make_langgraph_sqlite(stack: AsyncExitStack, tmp: Path) -> Turn:
    """LangGraph with ``SqliteSaver`` on a file: a durable checkpoint after every step."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    conn = sqlite3.connect(tmp / "langgraph.db", check_same_thread=False)
    stack.callback(conn.close)
    return _lg_turn(lg_graph(SqliteSaver(conn)))


async def make_langgraph_sqlite_exit(stack: AsyncExitStack, tmp: Path) -> Turn:
    """LangGraph with ``SqliteSaver`` and ``durability="exit"``: one checkpoint write per
    run (per turn), as turngraph commits once per turn: the like-for-like row."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    conn = sqlite3.connect(tmp / "langgraph-exit.db", check_same_thread=False)
    stack.callback(conn.close)
    return _lg_turn(lg_graph(SqliteSaver(conn)), durability="exit")


async def make_langgraph_async_sqlite(stack: AsyncExitStack, tmp: Path) -> Turn:
    """LangGraph's async path (``ainvoke``) with ``AsyncSqliteSaver``: what an asyncio
    server would use."""
    import aiosqlite
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    conn = await aiosqlite.connect(tmp / "langgraph-async.db")
    stack.push_async_callback(conn.close)
    graph = lg_graph(AsyncSqliteSaver(conn))
    config = {"configurable": {"thread_id": "bench"}}

    async def turn(text: str) -> str:
        out = await graph.ainvoke({"input": text}, config)
        return str(out["output"])

    return turn


@dataclass
class _PGState:
    text: str = ""
    intent: str = ""
    recalled: list[str] = field(default_factory=list)
    reply: str = ""
    output: str = ""
    messages: list[dict[str, Any]] = field(default_factory=list)


def _pg_steps(g: Any) -> list[Any]:
    async def classify(ctx: Any) -> None:
        ctx.state.text = ctx.inputs
        ctx.state.intent = mock.classify(ctx.inputs)

    async def recall(ctx: Any) -> None:
        ctx.state.recalled = mock.recall(ctx.state.text)

    async def llm_call(ctx: Any) -> None:
        s = ctx.state
        s.reply = mock.llm(s.text, s.intent, s.recalled)

    async def format_(ctx: Any) -> None:
        ctx.state.output = mock.format_reply(ctx.state.reply)

    async def update_memory(ctx: Any) -> None:
        ctx.state.messages.extend(mock.new_messages(ctx.state.text, ctx.state.output))

    async def done(ctx: Any) -> str:
        return str(ctx.state.output)

    fns = (classify, recall, llm_call, format_, update_memory, done)
    return [g.step(fn, node_id=name) for fn, name in zip(fns, mock.STEPS, strict=True)]


async def make_pydantic_graph(stack: AsyncExitStack, tmp: Path) -> Turn:
    """pydantic-graph's builder API: six async steps over a mutable dataclass state."""
    from pydantic_graph import GraphBuilder

    g: Any = GraphBuilder(
        state_type=_PGState, input_type=str, output_type=str, auto_instrument=False
    )
    steps = _pg_steps(g)
    g.add_edge(g.start_node, steps[0])
    for a, b in itertools.pairwise(steps):
        g.add_edge(a, b)
    g.add_edge(steps[-1], g.end_node)
    graph = g.build()
    state = _PGState()

    async def turn(text: str) -> str:
        return str(await graph.run(state=state, inputs=text))

    return turn


def _burr_actions() -> dict[str, Any]:
    from burr.core import State, action

    @action(reads=[], writes=["input", "intent"])
    def classify(state: State[Any], text: str) -> State[Any]:
        return state.update(input=text, intent=mock.classify(text))

    @action(reads=["input"], writes=["recalled"])
    def recall(state: State[Any]) -> State[Any]:
        return state.update(recalled=mock.recall(state["input"]))

    @action(reads=["input", "intent", "recalled"], writes=["reply"])
    def llm_call(state: State[Any]) -> State[Any]:
        return state.update(reply=mock.llm(state["input"], state["intent"], state["recalled"]))

    @action(reads=["reply"], writes=["output"])
    def format_(state: State[Any]) -> State[Any]:
        return state.update(output=mock.format_reply(state["reply"]))

    @action(reads=["input", "output"], writes=["messages"])
    def update_memory(state: State[Any]) -> State[Any]:
        return state.extend(messages=mock.new_messages(state["input"], state["output"]))

    @action(reads=[], writes=[])
    def done(state: State[Any]) -> State[Any]:
        return state

    fns = (classify, recall, llm_call, format_, update_memory, done)
    return dict(zip(mock.STEPS, fns, strict=True))


def _burr_app(persister: Any = None) -> Any:
    from burr.core import ApplicationBuilder

    steps = mock.STEPS
    builder: Any = ApplicationBuilder  # untyped upstream
    b: Any = (
        builder()
        .with_actions(**_burr_actions())
        .with_transitions(*itertools.pairwise(steps), ("done", "classify"))
        .with_state(messages=[])
        .with_entrypoint("classify")
    )
    if persister is not None:
        b = b.with_state_persister(persister).with_identifiers(app_id="bench")
    return b.build()


async def make_burr(stack: AsyncExitStack, tmp: Path) -> Turn:
    """Burr: function actions over its immutable ``State``; one ``run`` per turn."""
    return _burr_turn(_burr_app())


async def make_burr_sqlite(stack: AsyncExitStack, tmp: Path) -> Turn:
    """Burr with its ``SQLitePersister``: the state saved (committed) after every step,
    the only schedule Burr offers."""
    from burr.core.persistence import SQLitePersister

    persister: Any = SQLitePersister(str(tmp / "burr.db"))
    persister.initialize()
    stack.callback(persister.cleanup)
    return _burr_turn(_burr_app(persister))


def _burr_turn(app: Any) -> Turn:
    async def turn(text: str) -> str:
        _, _, state = app.run(halt_after=["done"], inputs={"text": text})
        return str(state["output"])

    return turn


PEERS: dict[str, tuple[str, Factory]] = {
    "LangGraph (no checkpointer)": ("langgraph", make_langgraph),
    "LangGraph + InMemorySaver": ("langgraph", make_langgraph_memory),
    "LangGraph + SqliteSaver": ("langgraph.checkpoint.sqlite", make_langgraph_sqlite),
    'LangGraph + SqliteSaver, durability="exit"': (
        "langgraph.checkpoint.sqlite",
        make_langgraph_sqlite_exit,
    ),
    "LangGraph async + AsyncSqliteSaver": (
        "langgraph.checkpoint.sqlite.aio",
        make_langgraph_async_sqlite,
    ),
    "pydantic-graph": ("pydantic_graph", make_pydantic_graph),
    "Burr": ("burr", make_burr),
    "Burr + SQLitePersister": ("burr", make_burr_sqlite),
}
"""Label → (distribution module to report the version of, factory)."""
