"""The OpenAI and Anthropic adapters against real loopback servers speaking each wire
format: replies, streaming, tool calls, usage, node settings and every failure."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine import Engine, load_graph
from engine.errors import (
    LLMSpecError,
    MissingExtraError,
    ProviderAuthError,
    ProviderConnectionError,
    ProviderRequestError,
    ProviderResponseError,
    ProviderServerError,
    ProviderTimeout,
    RateLimited,
    StreamInterrupted,
    TransientAdapterError,
)
from engine.events import (
    Event,
    NodeCompleted,
    NodeRetrying,
    TextDelta,
    ToolCallCompleted,
    ToolCallRequested,
)
from handlers import build_registry
from handlers.adapters import ChatRequest, EchoModel, ToolBox, from_spec
from handlers.adapters.hosted import HostedModel, endpoint_host, retry_after_seconds
from tests.llm_servers import Cut, Fail, Hang, LLMServer, Raw, Reply, closed_port

ROOT = Path(__file__).resolve().parent.parent
TOOL_TURN = str(ROOT / "graphs" / "tool_turn.dot")
PROVIDERS = ("openai", "anthropic")
HI = ChatRequest([{"role": "user", "content": "hi"}], system="be brief")


@pytest.fixture(autouse=True)
def _no_ambient_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(params=PROVIDERS)
def server(request: pytest.FixtureRequest) -> Iterator[LLMServer]:
    pytest.importorskip(request.param)
    with LLMServer(request.param) as s:
        yield s


OPEN: list[HostedModel] = []


@pytest.fixture(autouse=True)
async def _close_adapters() -> Any:
    """Close each adapter's connections on the loop that opened them."""
    yield
    while OPEN:
        await OPEN.pop().aclose()


def model_at(server: LLMServer, **kw: Any) -> HostedModel:
    llm = from_spec(f"{server.provider}:default-model", base_url=server.url, **kw)
    assert isinstance(llm, HostedModel)
    OPEN.append(llm)
    return llm


def graph(dot: str, llm: Any, tools: ToolBox | None = None) -> tuple[Engine, Any]:
    registry = build_registry(llm=llm, tools=tools)
    return Engine(registry, sleep=_no_sleep), load_graph(dot, registry=registry)


async def _no_sleep(seconds: float) -> None:
    SLEPT.append(seconds)


SLEPT: list[float] = []

ONE_CALL = """digraph t { start [shape=Mdiamond] done [shape=Msquare]
  llm_call [handler=llm_call, max_retries=2, retry.initial_delay=0.01, retry.max_delay=5,
            retry.jitter=false %s]
  format [handler=format]
  start -> llm_call -> format -> done }"""


def _discard(text: str) -> None:
    pass


def one_call(extra: str = "") -> str:
    return ONE_CALL % extra


# --------------------------------------------------------------------------- replies


async def test_a_reply_carries_text_usage_and_model(server: LLMServer) -> None:
    """A plain (not streamed) call returns the text, the provider's usage and model."""
    server.script(Reply(tokens=("Hi", " there"), usage=(21, 2), model="served-model"))
    response = await model_at(server).respond(HI)
    assert response.text == "Hi there"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (21, 2)
    assert response.model == response.usage.model == "served-model"
    body = server.requests[0].body
    assert body["model"] == "default-model"
    assert "stream" not in body


async def test_the_wire_request_has_system_messages_and_settings(server: LLMServer) -> None:
    """System prompt, messages, max_tokens and temperature reach the server in its format."""
    request = ChatRequest(
        [{"role": "user", "content": "q"}], system="S", max_tokens=77, temperature=0.25
    )
    await model_at(server).respond(request)
    body = server.requests[0].body
    assert body["max_tokens"] == 77
    assert body["temperature"] == 0.25
    if server.provider == "openai":
        assert body["messages"] == [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "q"},
        ]
    else:
        assert body["system"] == "S"
        assert body["messages"] == [{"role": "user", "content": "q"}]


async def test_streamed_text_arrives_in_pieces_in_order(server: LLMServer) -> None:
    """With ``on_text`` the reply streams: pieces in order, joined they are the text."""
    server.script(Reply(tokens=("a", "b", "c", "d"), usage=(5, 4)))
    pieces: list[str] = []
    response = await model_at(server).respond(HI, pieces.append)
    assert pieces == ["a", "b", "c", "d"]
    assert response.text == "abcd"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (5, 4)
    assert server.requests[0].body["stream"] is True


async def test_several_tool_calls_in_one_response(server: LLMServer) -> None:
    """Structured tool calls, several per response, streamed or not."""
    calls = (("c1", "calculator", '{"expression": "6*7"}'), ("c2", "clock", "{}"))
    sink: list[str] = []
    for on_text in (None, sink.append):
        server.script(Reply(tokens=(), tool_calls=calls))
        response = await model_at(server).respond(HI, on_text)
        assert [(c.id, c.name, dict(c.arguments)) for c in response.tool_calls] == [
            ("c1", "calculator", {"expression": "6*7"}),
            ("c2", "clock", {}),
        ]


# --------------------------------------------------------------------------- engine


async def test_node_settings_win_over_the_adapter_default(server: LLMServer) -> None:
    """``model``, ``temperature``, ``max_tokens`` and ``system`` of a node are sent."""
    dot = one_call(', model="node-model", temperature=0.5, max_tokens=12, system="NODE"')
    engine, g = graph(dot, model_at(server))
    result = await engine.run(g, {"session.input": "hello"})
    assert result.ok, result.error
    body = server.requests[0].body
    assert (body["model"], body["temperature"], body["max_tokens"]) == ("node-model", 0.5, 12)
    system = body["system"] if server.provider == "anthropic" else body["messages"][0]["content"]
    assert system == "NODE"


async def test_a_bad_temperature_fails_the_node_by_name(server: LLMServer) -> None:
    engine, g = graph(one_call(", temperature=9"), model_at(server))
    result = await engine.run(g, {"session.input": "hello"})
    assert not result.ok
    assert "temperature must be a number from 0 to 2" in str(result.error)
    assert server.requests == []


async def test_tokens_are_events_and_usage_is_in_the_record(server: LLMServer) -> None:
    """An observed run streams: TextDelta events in order, usage in the node record."""
    server.script(Reply(tokens=("x", "y", "z"), usage=(9, 3), model="m1"))
    engine, g = graph(one_call(), model_at(server))
    events: list[Event] = []
    result = await engine.run(g, {"session.input": "go"}, observers=[events.append])
    assert result.ok and result.context["reply"] == "xyz"
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert [d.text for d in deltas] == ["x", "y", "z"]
    assert {d.node_id for d in deltas} == {"llm_call"}
    record = next(r for r in result.trace if r.node_id == "llm_call")
    assert record.to_dict()["input_tokens"] == 9
    assert record.to_dict()["output_tokens"] == 3
    assert record.to_dict()["model"] == "m1"
    done = next(e for e in events if isinstance(e, NodeCompleted) and e.node_id == "llm_call")
    assert done.usage == record.usage


async def test_an_unobserved_run_does_not_stream(server: LLMServer) -> None:
    engine, g = graph(one_call(), model_at(server))
    result = await engine.run(g, {"session.input": "go"})
    assert result.ok
    assert "stream" not in server.requests[0].body


async def test_a_cut_stream_is_retried_and_no_partial_reply_is_used(server: LLMServer) -> None:
    """A stream cut after some tokens is transient; the retry's reply is the one used."""
    server.script(Cut(Reply(tokens=("PART", "IAL", "!")), after=2), Reply(tokens=("whole",)))
    engine, g = graph(one_call(), model_at(server))
    events: list[Event] = []
    result = await engine.run(g, {"session.input": "go"}, observers=[events.append])
    assert result.ok, result.error
    assert result.context["reply"] == "whole"
    kinds = [type(e).__name__ for e in events if isinstance(e, TextDelta | NodeRetrying)]
    assert kinds == ["TextDelta", "TextDelta", "NodeRetrying", "TextDelta"]
    retry = next(e for e in events if isinstance(e, NodeRetrying))
    assert "StreamInterrupted" in retry.reason


async def test_a_stream_without_its_final_event_is_interrupted(server: LLMServer) -> None:
    server.script(Cut(after=1, clean=True))
    with pytest.raises(StreamInterrupted, match="stream ended before the reply"):
        await model_at(server).respond(HI, _discard)


# --------------------------------------------------------------------------- tool loop


async def test_the_tool_loop_runs_tools_and_returns_results(server: LLMServer) -> None:
    """tool_turn.dot: two calls (one with bad arguments, one raising) go to the tools,
    the results and errors go back to the model, and its text answer ends the loop."""
    tools = ToolBox()

    @tools.tool(description="Fails.")
    def broken(x: int) -> str:
        raise RuntimeError("tool broke")

    calls = (
        ("c1", "calculator", '{"expression": "6*7"}'),
        ("c2", "broken", '{"x": 1}'),
        ("c3", "calculator", "[not an object"),
    )
    server.script(Reply(tokens=(), tool_calls=calls), Reply(tokens=("It", " is 42")))
    registry = build_registry(llm=model_at(server), tools=tools)
    g = load_graph(TOOL_TURN, registry=registry)
    events: list[Event] = []
    result = await Engine(registry).run(g, {"session.input": "6*7?"}, observers=[events.append])
    assert result.ok, result.error
    assert result.context["reply"] == "It is 42"
    path = [r.node_id for r in result.trace]
    assert path.count("llm_call") == 2 and path.count("dispatch_tools") == 1
    requested = [(e.call_id, e.name) for e in events if isinstance(e, ToolCallRequested)]
    assert requested == [("c1", "calculator"), ("c2", "broken"), ("c3", "calculator")]
    done = {e.call_id: e for e in events if isinstance(e, ToolCallCompleted)}
    assert (done["c1"].content, done["c1"].is_error) == ("42", False)
    assert done["c2"].is_error and "tool broke" in done["c2"].content
    assert done["c3"].is_error and "JSON object" in done["c3"].content
    second = server.requests[1].body
    assert "tools" in second
    sent = json.dumps(second["messages"])
    assert "42" in sent and "tool broke" in sent and "JSON object" in sent
    if server.provider == "openai":
        tool_msgs = [m for m in second["messages"] if m["role"] == "tool"]
        assert [m["tool_call_id"] for m in tool_msgs] == ["c1", "c2", "c3"]
    else:
        results = second["messages"][-1]["content"]
        assert [b["tool_use_id"] for b in results] == ["c1", "c2", "c3"]
        assert [b["is_error"] for b in results] == [False, True, True]
    usage = [r.usage for r in result.trace if r.usage is not None]
    assert len(usage) == 2


async def test_the_tool_loop_stops_at_its_round_limit(server: LLMServer) -> None:
    """A model that always asks for tools gets no more tools after max_tool_rounds."""
    calls = (("c1", "clock", "{}"),)
    server.default = Reply(tokens=("done",), tool_calls=calls)
    registry = build_registry(llm=model_at(server))
    g = load_graph(TOOL_TURN, registry=registry)
    result = await Engine(registry).run(g, {"session.input": "loop"})
    assert result.ok, result.error
    assert [r.node_id for r in result.trace].count("dispatch_tools") == 3
    assert "tools" not in server.requests[-1].body


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    ("item", "error", "match"),
    [
        (Fail(500, "upstream broke"), ProviderServerError, "HTTP 500: upstream broke"),
        (Fail(503, "overloaded"), ProviderServerError, "HTTP 503"),
        (Fail(401, "invalid key"), ProviderAuthError, r"HTTP 401: invalid key \(check"),
        (Fail(403, "no access"), ProviderAuthError, "HTTP 403"),
        (Fail(400, "max_tokens too big"), ProviderRequestError, "HTTP 400: max_tokens too big"),
        (Raw(b'{"choices": [oops'), ProviderResponseError, "malformed response"),
        (Fail(429, "slow down", (("retry-after", "3"),)), RateLimited, "wait 3s"),
    ],
)
async def test_failures_are_typed_and_name_provider_host_status(
    server: LLMServer, item: Any, error: type[Exception], match: str
) -> None:
    """Each failure is its own error type naming the provider, host and status; the
    SDK never retries on its own (one request each)."""
    server.script(item)
    llm = model_at(server, api_key="sk-secret-key-123")
    with pytest.raises(error, match=match) as info:
        await llm.respond(HI)
    text = str(info.value)
    assert text.startswith(f"{server.provider}: 127.0.0.1:{server.port}:")
    assert "sk-secret-key-123" not in text
    assert len(server.requests) == 1
    assert server.requests[0].headers.get("authorization", "").endswith("sk-secret-key-123") or (
        server.requests[0].headers.get("x-api-key") == "sk-secret-key-123"
    )


async def test_a_key_echoed_by_the_server_is_never_shown(server: LLMServer) -> None:
    server.script(Fail(401, "Incorrect API key provided: sk-secret-key-123"))
    with pytest.raises(ProviderAuthError) as info:
        await model_at(server, api_key="sk-secret-key-123").respond(HI)
    assert "sk-secret-key-123" not in str(info.value)
    assert "***" in str(info.value)


async def test_malformed_sse_is_a_response_error(server: LLMServer) -> None:
    frame = (
        b"data: {oops\n\n"
        if server.provider == "openai"
        else b"event: content_block_delta\ndata: {oops\n\n"
    )
    server.script(Raw(frame, "text/event-stream"))
    with pytest.raises(ProviderResponseError, match="malformed response"):
        await model_at(server).respond(HI, _discard)


async def test_a_refused_connection_is_transient_and_retried(server: LLMServer) -> None:
    llm = from_spec(f"{server.provider}:m", base_url=f"http://127.0.0.1:{closed_port()}/v1")
    assert isinstance(llm, HostedModel)
    with pytest.raises(ProviderConnectionError, match="cannot connect") as info:
        await llm.respond(HI)
    assert isinstance(info.value, TransientAdapterError)
    engine, g = graph(one_call(), llm)
    result = await engine.run(g, {"session.input": "x"})
    assert not result.ok
    record = next(r for r in result.trace if r.node_id == "llm_call")
    assert record.attempts == 3
    assert "ProviderConnectionError" in str(result.error)


async def test_a_slow_server_is_a_timeout(server: LLMServer) -> None:
    server.script(Hang(5))
    with pytest.raises(ProviderTimeout, match=r"no answer within 0.2s"):
        await model_at(server, timeout=0.2).respond(HI)


async def test_a_5xx_then_success_is_retried_by_the_node(server: LLMServer) -> None:
    server.script(Fail(502, "bad gateway"), Reply(tokens=("ok",)))
    engine, g = graph(one_call(), model_at(server))
    result = await engine.run(g, {"session.input": "x"})
    assert result.ok and result.context["reply"] == "ok"
    assert next(r for r in result.trace if r.node_id == "llm_call").attempts == 2


async def test_an_auth_error_is_not_retried(server: LLMServer) -> None:
    server.script(Fail(401, "nope"))
    engine, g = graph(one_call(), model_at(server))
    result = await engine.run(g, {"session.input": "x"})
    assert not result.ok and len(server.requests) == 1
    assert "ANTHROPIC_API_KEY" in str(result.error) or "OPENAI_API_KEY" in str(result.error)


async def test_retry_after_is_honoured_when_it_fits(server: LLMServer) -> None:
    """A 429's Retry-After below retry.max_delay is waited (not less), then retried."""
    SLEPT.clear()
    server.script(Fail(429, "later", (("retry-after", "2"),)), Reply(tokens=("ok",)))
    engine, g = graph(one_call(), model_at(server))
    result = await engine.run(g, {"session.input": "x"})
    assert result.ok, result.error
    assert SLEPT == [2.0]


async def test_retry_after_beyond_max_delay_fails_at_once(server: LLMServer) -> None:
    """A Retry-After longer than retry.max_delay fails the node now, saying so."""
    SLEPT.clear()
    server.script(Fail(429, "later", (("retry-after", "120"),)))
    engine, g = graph(one_call(), model_at(server))
    result = await engine.run(g, {"session.input": "x"})
    assert not result.ok
    assert "server asked to wait 120s, more than retry.max_delay=5s" in str(result.error)
    assert SLEPT == [] and len(server.requests) == 1


# --------------------------------------------------------------------------- specs


def test_from_spec_builds_each_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(from_spec("echo"), EchoModel)
    for provider in PROVIDERS:
        pytest.importorskip(provider)
        env = "OPENAI_BASE_URL" if provider == "openai" else "ANTHROPIC_BASE_URL"
        monkeypatch.setenv(env, "http://user:pw@localhost:9999/v1")
        llm = from_spec(f"{provider}:llama3:8b")
        assert isinstance(llm, HostedModel)
        assert (llm.model, llm.host, llm.provider) == ("llama3:8b", "localhost:9999", provider)
        assert "pw" not in repr(llm)


@pytest.mark.parametrize(
    ("spec", "match"),
    [("gpt-4", "unknown provider 'gpt-4'"), ("openai:", "name the model"), ("openai", "name")],
)
def test_bad_specs_are_typed_errors(spec: str, match: str) -> None:
    with pytest.raises(LLMSpecError, match=match):
        from_spec(spec)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_missing_sdk_names_the_pip_command(
    provider: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, provider, None)  # import now fails, as if absent
    with pytest.raises(MissingExtraError) as info:
        from_spec(f"{provider}:m")
    assert f"pip install 'turngraph[{provider}]'" in str(info.value)


def test_build_registry_takes_a_spec() -> None:
    pytest.importorskip("openai")
    registry = build_registry(llm="openai:some-model")
    llm = registry.get("llm_call").fn.llm  # type: ignore[attr-defined]
    assert isinstance(llm, HostedModel) and llm.model == "some-model"


def test_endpoint_host_and_retry_after_parsing() -> None:
    assert endpoint_host("https://u:p@api.example.com/v1") == "api.example.com"
    assert endpoint_host("http://127.0.0.1:8080/v1") == "127.0.0.1:8080"
    assert retry_after_seconds({"retry-after": "1.5"}) == 1.5
    assert retry_after_seconds({"retry-after-ms": "250"}) == 0.25
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert retry_after_seconds({}) is None


def test_the_cli_start_does_not_import_an_sdk() -> None:
    """Importing the handlers (as every CLI command does) loads no provider SDK."""
    code = "import handlers, sys; print('openai' in sys.modules, 'anthropic' in sys.modules)"
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("value", ["soon", "in a minute", "Wed, 99 Foo 2015", "1e999", "nan"])
async def test_a_garbled_retry_after_is_still_a_rate_limit(server: LLMServer, value: str) -> None:
    """A 429 whose Retry-After is neither seconds nor a date is a RateLimited with no
    wait known (it was a bare ValueError out of the date parser)."""
    server.script(Fail(429, "slow down", (("retry-after", value),)))
    with pytest.raises(RateLimited) as info:
        await model_at(server, api_key="sk-secret-key-123").respond(HI)
    assert info.value.retry_after is None
    assert "sk-secret-key-123" not in str(info.value)
    assert retry_after_seconds({"retry-after": value}) is None
    assert retry_after_seconds({"retry-after-ms": value, "retry-after": "2"}) == 2.0
