"""``session.stream()`` against loopback OpenAI and Anthropic servers (real HTTP, real
SSE): text arrives while the server still holds the stream open; a stream cut mid-way
is retried with its text void, or fails the turn, and no partial reply is committed;
usage comes from the server; a manager built from a spec closes the adapter it made."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from engine.events import NodeRetrying, TextDelta, TurnCommitted
from handlers.adapters import from_spec
from sessions import SessionManager, TurnResult
from tests.llm_servers import Cut, Held, LLMServer, Reply


@pytest.fixture(params=("openai", "anthropic"))
def server(request: pytest.FixtureRequest) -> Iterator[LLMServer]:
    pytest.importorskip(request.param)
    with LLMServer(request.param) as s:
        yield s


def _manager(server: LLMServer) -> tuple[SessionManager, Any]:
    llm = from_spec(f"{server.provider}:m", base_url=server.url)
    return SessionManager("memory:", llm=llm), llm


async def test_text_arrives_before_the_server_finishes(server: LLMServer) -> None:
    """The first delta reaches the consumer while the server holds the rest back."""
    held = Held(Reply(tokens=("first", " second", " third"), usage=(9, 3)), after=1)
    server.script(held)
    manager, llm = _manager(server)
    async with manager:
        session = await manager.get_or_create("s1")
        texts: list[str] = []
        items: list[Any] = []
        async for item in session.stream("hi"):
            items.append(item)
            if isinstance(item, TextDelta):
                if not texts:
                    assert not held.release.is_set()
                    held.release.set()
                texts.append(item.text)
        await llm.aclose()
    assert texts == ["first", " second", " third"]
    result = items[-1]
    assert isinstance(result, TurnResult) and result.ok
    assert result.reply == "first second third"
    assert isinstance(items[-2], TurnCommitted)
    assert result.usage.by_model["test-model"].to_dict() == {
        "calls": 1,
        "input_tokens": 9,
        "output_tokens": 3,
    }


async def test_a_cut_stream_is_retried_and_only_the_whole_reply_is_committed(
    server: LLMServer,
) -> None:
    server.script(Cut(Reply(tokens=("par", "tial", " reply")), after=2), Reply(tokens=("whole",)))
    manager, llm = _manager(server)
    async with manager:
        session = await manager.get_or_create("s1")
        items = [item async for item in session.stream("hi")]
        messages = await session.all()
        await llm.aclose()
    kinds = [type(i).__name__ for i in items if isinstance(i, TextDelta | NodeRetrying)]
    assert kinds == ["TextDelta", "TextDelta", "NodeRetrying", "TextDelta"]
    result = items[-1]
    assert isinstance(result, TurnResult) and result.reply == "whole"
    assert [m.content for m in messages] == ["hi", "whole"]


async def test_a_stream_cut_on_every_attempt_fails_the_turn_and_commits_no_reply(
    server: LLMServer,
) -> None:
    cut = Cut(Reply(tokens=("never", " whole")), after=1)
    server.script(cut, cut, cut)  # turn.dot's llm_call: max_retries=2
    manager, llm = _manager(server)
    async with manager:
        session = await manager.get_or_create("s1")
        items = [item async for item in session.stream("hi")]
        result = items[-1]
        assert isinstance(result, TurnResult) and result.status == "fail"
        assert "stream" in str(result.error).lower()
        assert await session.all() == ()
        assert session.phase == "idle" and not session.busy
        again = await session.send("again")  # the server's default reply
        assert again.ok and again.reply == "Hello, world"
        await llm.aclose()


async def test_a_manager_built_from_a_spec_closes_its_adapter(
    server: LLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = "OPENAI_BASE_URL" if server.provider == "openai" else "ANTHROPIC_BASE_URL"
    monkeypatch.setenv(env, server.url)
    async with SessionManager("memory:", llm=f"{server.provider}:spec-model") as manager:
        session = await manager.get_or_create("s1")
        result = await session.send("hi")
        assert result.ok and result.reply == "Hello, world"
        client = manager.llm._client  # type: ignore[union-attr]
        assert not client.is_closed()
    assert client.is_closed()
    assert server.requests[0].body["model"] == "spec-model"
