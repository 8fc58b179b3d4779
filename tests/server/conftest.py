"""Fixtures for the HTTP API tests: a served app over a real SQLite store."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest

from engine.errors import AdapterError
from engine.graph import Node, RetryPolicy
from engine.outcome import Outcome
from engine.registry import HandlerRegistry
from engine.server import create_app
from engine.testing import ScriptedHandler, build_graph
from sessions import SessionManager

from .serve_kit import Running


@pytest.fixture(autouse=True)
def _no_ambient_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TURNGRAPH_API_TOKEN", raising=False)
    monkeypatch.delenv("TURNGRAPH_LLM", raising=False)


@pytest.fixture
def db(tmp_path: Path) -> str:
    """A SQLite store URL in the test's folder."""
    return f"sqlite:///{tmp_path / 'serve.db'}"


@pytest.fixture
def served(db: str) -> Iterator[Running]:
    """The app (echo model, SQLite store) served on a free loopback port."""
    with Running(create_app(db, llm="echo", max_body=8192)) as running:
        yield running


@pytest.fixture
def flaky(db: str) -> Iterator[Running]:
    """A server whose turn graph retries ``llm_call`` once, and whose ``format`` fails
    on inputs saying "break" (a typed adapter error, so the turn fails whole)."""

    def fmt(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
        if "break" in ctx["session.input"]:
            raise AdapterError("format", "the template engine broke")
        return {"reply": f"re: {ctx['session.input']}"}

    def nothing(node: Node, ctx: Mapping[str, Any]) -> None:
        return None

    llm = ScriptedHandler(Outcome("retry", reason="rate limited"), None)
    registry = HandlerRegistry(
        {"start": nothing, "classify": nothing, "llm_call": llm, "format": fmt, "done": nothing}
    )
    retry = RetryPolicy(max_retries=2, initial_delay=0.001, jitter=False)
    graph = build_graph(
        ("start", "classify", "llm_call", "format", "done"), nodes={"llm_call": {"retry": retry}}
    )
    manager = SessionManager(db, registry=registry, turn_graph=graph)
    with Running(create_app(manager=manager)) as running:
        yield running


class Gated(Running):
    """A served app whose ``llm_call`` waits until ``gate`` is set: a slow model node
    whose turn stays running as long as a test needs."""

    gate: threading.Event


@pytest.fixture
def gated(db: str) -> Iterator[Gated]:
    """A server whose turn graph is ``start → classify → llm_call → format → done``,
    ``llm_call`` holding its turn until the test sets ``gated.gate``."""
    gate = threading.Event()

    async def llm_call(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
        await anyio.to_thread.run_sync(gate.wait, abandon_on_cancel=True)
        return {"llm.text": f"re: {ctx['session.input']}"}

    def fmt(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
        return {"reply": ctx["llm.text"]}

    def nothing(node: Node, ctx: Mapping[str, Any]) -> None:
        return None

    registry = HandlerRegistry(
        {
            "start": nothing,
            "classify": nothing,
            "llm_call": llm_call,
            "format": fmt,
            "done": nothing,
        }
    )
    graph = build_graph(("start", "classify", "llm_call", "format", "done"))
    manager = SessionManager(db, registry=registry, turn_graph=graph)
    server = Gated(create_app(manager=manager))
    server.gate = gate
    with server:
        try:
            yield server
        finally:
            gate.set()  # a test that failed mid-turn must not hold the server's shutdown
