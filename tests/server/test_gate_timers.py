"""A gate's timeout over real HTTP: the server applies it at the deadline with no
further request, stores the turn, and its live watchers see it run like an answered
turn; an answer after it gets 409 NotPaused."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from engine.graph import Node
from engine.registry import HandlerRegistry
from engine.server import create_app
from sessions import SessionManager
from sessions.store import open_store

from .serve_kit import GUARD, Running
from .test_gates import GRAPH as GATED
from .test_live import _frames, _until

GRAPH = GATED.replace('question="Deploy?"', 'question="Deploy?", timeout="200ms", default=skip')


@pytest.fixture
def timed(tmp_path: Path) -> Iterator[Running]:
    """A server whose turns ask before deploying and skip after 200 ms unanswered."""

    def deploy(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
        return {"reply": f"deployed {ctx['session.input']}"}

    def skip(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
        late = " (timed out)" if ctx.get("node.approve.timed_out") else ""
        return {"reply": f"skipped {ctx['session.input']}{late}"}

    dot = tmp_path / "g.dot"
    dot.write_text(GRAPH)
    manager = SessionManager(
        f"sqlite:///{tmp_path / 'timers.db'}",
        registry=HandlerRegistry({"deploy": deploy, "skip": skip}),
        turn_graph=dot,
    )
    with Running(create_app(manager=manager)) as running:
        yield running


def _bounded(lines: Iterator[str]) -> Iterator[str]:
    """``lines`` until :data:`GUARD` seconds have gone by (a hang guard: the stream
    sends keepalive comments, so a read never times out on its own)."""
    give_up = time.monotonic() + GUARD
    for line in lines:
        assert time.monotonic() < give_up, "the stream never showed what was awaited"
        yield line


def test_a_timeout_fires_on_the_server_and_reaches_live_watchers(timed: Running) -> None:
    """After the paused turn, with no other request, the watcher sees the timed-out
    turn from ``RunStarted`` to its ``result``; it is stored, and a late answer is
    refused with 409 NotPaused."""
    with (
        httpx.Client(base_url=timed.url, timeout=GUARD) as watcher,
        watcher.stream("GET", "/sessions/w1/live") as response,
    ):
        frames = _frames(_bounded(response.iter_lines()))
        assert next(frames)[0] == "watching"
        paused = timed.client.post("/sessions/w1/turns", json={"text": "v1"}).json()
        assert paused["status"] == "paused"
        assert _until(frames, "result")[-1][1]["status"] == "paused"
        fired = _until(frames, "result")  # no request in between: the timer's turn
        assert fired[0][0] == "RunStarted"
        assert ("NodeCompleted", "skip") in [(n, d.get("node_id")) for n, d in fired]
        result = fired[-1][1]
        assert (result["status"], result["turn"]) == ("success", 1)
        assert result["reply"] == "skipped v1 (timed out)"
    (turn,) = timed.client.get("/sessions/w1/turns").json()["turns"]
    assert [n["id"] for n in turn["trace"]] == ["start", "approve", "skip", "done"]
    assert timed.client.get("/sessions/w1").json()["question"] is None
    late = timed.client.post("/sessions/w1/answer", json={"choice": "go"})
    assert late.status_code == 409 and late.json()["error"]["kind"] == "NotPaused"


def test_a_timeout_fires_on_the_server_with_nobody_watching(timed: Running) -> None:
    """Unwatched, the timed-out turn is stored all the same."""
    assert timed.client.post("/sessions/w2/turns", json={"text": "v2"}).json()["status"] == (
        "paused"
    )
    stored = threading.Event()
    for _ in range(int(GUARD / 0.02)):
        if timed.client.get("/sessions/w2/turns").json()["turns"]:
            stored.set()
            break
        stored.wait(0.02)
    assert stored.is_set(), "the timed-out turn was never stored"
    (turn,) = timed.client.get("/sessions/w2/turns").json()["turns"]
    assert turn["status"] == "success"
    assert timed.client.get("/sessions/w2").json()["question"] is None


def test_a_timed_out_turn_past_the_grace_period_is_cancelled_whole(tmp_path: Path) -> None:
    """A gate's timer runs a turn that outlasts the shutdown's grace: it is cancelled
    like a streamed turn past the grace (the server stops), storing nothing; the
    question stays stored for the next process to apply."""
    started = threading.Event()

    async def skip(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
        started.set()
        await anyio.sleep_forever()
        raise AssertionError("never reached")

    dot = tmp_path / "g.dot"
    dot.write_text(GRAPH)
    db = f"sqlite:///{tmp_path / 'grace.db'}"
    registry = HandlerRegistry({"deploy": lambda node, ctx: {}, "skip": skip})
    app = create_app(manager=SessionManager(db, registry=registry, turn_graph=dot), grace=0.2)
    running = Running(app, grace=0.2).start()
    try:
        paused = running.client.post("/sessions/g1/turns", json={"text": "v1"}).json()
        assert paused["status"] == "paused"
        assert started.wait(GUARD), "the gate's timeout never fired"
    finally:
        running.stop()  # within GUARD, or the timer's turn held the exit up

    async def stored() -> tuple[str | None, int]:
        async with open_store(db) as store:
            loaded = await store.load("g1")
            cp = loaded.checkpoint
            return (None if cp is None else cp.kind), loaded.meta.turn_count

    assert anyio.run(stored) == ("paused", 0)
