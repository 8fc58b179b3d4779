"""Streamed turns as Server-Sent Events, from a loopback model server that streams (and
holds) its reply: event order, the final result, and a client that leaves mid-stream."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest

from engine.server import create_app
from handlers.adapters.spec import from_spec
from sessions import SessionManager
from tests.llm_servers import Held, LLMServer, Reply

from .serve_kit import GUARD, Running

SSE = {"accept": "text/event-stream"}


@pytest.fixture
def model() -> Iterator[LLMServer]:
    pytest.importorskip("openai")
    with LLMServer("openai") as server:
        yield server


@pytest.fixture
def served(model: LLMServer, db: str) -> Iterator[Running]:
    llm = from_spec("openai:m", base_url=model.url, api_key="test-key")
    with Running(create_app(manager=SessionManager(db, llm=llm))) as running:
        yield running
        running.call(llm.aclose())  # type: ignore[attr-defined]


def _events(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(event, data)`` pairs from SSE lines."""
    name = ""
    for line in lines:
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            yield name, json.loads(line[6:])


def test_a_streamed_turn_sends_its_events_then_the_result(
    served: Running, model: LLMServer
) -> None:
    model.script(Reply(tokens=("Hel", "lo", " there"), usage=(5, 3)))
    with served.client.stream(
        "POST", "/sessions/s/turns", json={"text": "hi"}, headers=SSE
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(_events(response.iter_lines()))
    names = [name for name, _ in events]
    assert names[0] == "RunStarted" and names[-2:] == ["TurnCommitted", "result"]
    assert names.index("NodeStarted") < names.index("TextDelta") < names.index("RunCompleted")
    text = "".join(data["text"] for name, data in events if name == "TextDelta")
    assert text == "Hello there"
    result = events[-1][1]
    assert result["reply"] == "Hello there" and result["status"] == "success"
    assert result["usage"]["input_tokens"] == 5 and result["turn"] == 1
    committed = events[-2][1]
    assert committed["session_id"] == "s" and committed["turn"] == 1
    assert served.client.get("/sessions/s/turns/1").json()["status"] == "success"


def test_a_client_that_leaves_mid_stream_does_not_cut_the_turn(
    served: Running, model: LLMServer
) -> None:
    """The turn finishes and commits whole; its outcome is read back afterwards."""
    held = Held(Reply(tokens=("Early", " bird", " gets"), usage=(4, 3)), after=1)
    model.script(held)
    try:
        with served.client.stream(
            "POST", "/sessions/gone/turns", json={"text": "hi"}, headers=SSE
        ) as response:
            for name, data in _events(response.iter_lines()):
                if name == "TextDelta":
                    assert data["text"] == "Early"
                    break  # leave: the connection closes with the stream still open
        assert served.client.get("/sessions/gone/turns/1").status_code == 404  # not yet
        threading.Event().wait(0.2)  # let the server see the disconnect first
    finally:
        held.release.set()
    for _ in range(int(GUARD / 0.05)):
        turn = served.client.get("/sessions/gone/turns/1")
        if turn.status_code == 200:
            break
        threading.Event().wait(0.05)
    assert turn.status_code == 200 and turn.json()["status"] == "success"
    messages = served.client.get("/sessions/gone/messages").json()["messages"]
    assert [m["content"] for m in messages] == ["hi", "Early bird gets"]


def test_a_non_streamed_turn_over_the_model_server(served: Running, model: LLMServer) -> None:
    model.script(Reply(tokens=("fine",), usage=(2, 1)))
    body = served.client.post("/sessions/p/turns", json={"text": "how?"}).json()
    assert body["reply"] == "fine" and body["usage"]["output_tokens"] == 1


def test_a_stream_on_a_missing_manager_loop_is_refused(db: str) -> None:
    """Before the lifespan starts there is no task group: a clear 503, not a crash."""
    app = create_app(db, llm="echo")
    transport = httpx.ASGITransport(app=app)

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.post("/sessions/x/turns", json={"text": "hi"}, headers=SSE)

    response = anyio.run(go)
    assert response.status_code == 503 and response.json()["error"]["kind"] == "SessionClosed"
