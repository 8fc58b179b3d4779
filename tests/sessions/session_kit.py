"""Helpers for the session tests: tiny graphs and registries, a running manager, polling.

Kept out of ``conftest.py`` on purpose: a test module must never import a conftest
(pytest and mypy may know it under another name).  The unique module name keeps
``import session_kit`` unambiguous on ``sys.path``.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio

from engine.graph import Graph, Node
from engine.registry import HandlerRegistry
from engine.testing import build_graph
from sessions import Limits, SessionManager
from sessions.store.base import Store

CHAIN = ("start", "classify", "recall", "llm_call", "format", "done")


# --------------------------------------------------------------------------- graphs


def reply_registry(**overrides: Any) -> HandlerRegistry:
    """Handlers for :data:`CHAIN` and ``beat``: ``format`` replies ``re: <input>``.

    ``overrides`` replace handlers by name (or add new ones).
    """

    def nothing(node: Node, ctx: Mapping[str, Any]) -> None:
        return None

    def fmt(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
        return {"reply": f"re: {ctx['session.input']}"}

    handlers: dict[str, Any] = {name: nothing for name in (*CHAIN, "beat")}
    handlers["format"] = fmt
    handlers.update(overrides)
    return HandlerRegistry(handlers)


def chain_graph(**node_fields: Mapping[str, Any]) -> Graph:
    """The six-node turn chain, with optional per-node field overrides (``timeout``...)."""
    return build_graph(CHAIN, nodes=node_fields)


def heartbeat_graph() -> Graph:
    """A two-node heartbeat graph: ``hb_start -> beat``."""
    return build_graph(("hb_start", "beat"), nodes={"hb_start": {"handler": "start"}})


SECRET = b"turngraph-test-secret"


@asynccontextmanager
async def running(
    store: Store,
    registry: HandlerRegistry | None = None,
    *,
    graph: Graph | None = None,
    limits: Limits | None = None,
    **kw: Any,
) -> AsyncIterator[SessionManager]:
    """A running manager over ``store`` with test graphs (override any part)."""
    async with SessionManager(
        store,
        registry=registry or reply_registry(),
        turn_graph=graph or chain_graph(),
        heartbeat_graph=kw.pop("heartbeat_graph", None) or heartbeat_graph(),
        limits=limits or Limits(),
        **kw,
    ) as m:
        yield m


async def wait_until(predicate: Callable[[], bool], *, limit: float = 5.0) -> None:
    """Yield to other tasks until ``predicate()`` holds (fails the test after ``limit`` s)."""
    with anyio.fail_after(limit):
        while not predicate():  # noqa: ASYNC110 - polling state that has no event to wait on
            await anyio.sleep(0.001)


@contextmanager
def cyclic_gc_off() -> Iterator[None]:
    """The cyclic garbage collector off inside (after one collection, so nothing made
    before is counted): only reference counting frees anything."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
