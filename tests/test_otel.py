"""OpenTelemetry spans of turns, read back through the SDK's in-memory exporter.

Each test builds its own ``TracerProvider`` and passes it in (the global provider is never
set).  Model calls go to the loopback OpenAI-compatible server of ``tests.llm_servers``
(real HTTP, real SSE) or to the offline echo model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import NoOpTracerProvider, SpanKind, StatusCode

from engine.errors import MissingExtraError
from engine.events import Event, NodeStarted
from engine.messages import LLMResponse, Usage
from handlers.adapters import ChatRequest, EchoModel, ToolBox, from_spec
from sessions import SessionManager
from sessions.telemetry import CAPTURE_ENV, ENABLE_ENV, Telemetry
from tests.llm_servers import Fail, LLMServer, Reply

ROOT = Path(__file__).resolve().parent.parent
TOOL_TURN = str(ROOT / "graphs" / "tool_turn.dot")
CONTENT_KEYS = {
    "gen_ai.input.messages",
    "gen_ai.output.messages",
    "gen_ai.tool.call.arguments",
    "gen_ai.tool.call.result",
}


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def _telemetry(exporter: InMemorySpanExporter, capture: bool = False) -> Telemetry:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Telemetry(provider, capture_content=capture)


@pytest.fixture
def server() -> Iterator[LLMServer]:
    pytest.importorskip("openai")
    with LLMServer("openai") as s:
        yield s


def _tools() -> ToolBox:
    tools = ToolBox()

    @tools.tool(description="Add two numbers.")
    def add(a: int, b: int) -> str:
        return str(a + b)

    return tools


def _named(spans: Sequence[ReadableSpan], prefix: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name.startswith(prefix)]


def _parent_of(span: ReadableSpan, spans: Sequence[ReadableSpan]) -> ReadableSpan:
    assert span.parent is not None, span.name
    return next(s for s in spans if s.context.span_id == span.parent.span_id)


async def test_a_turn_is_a_workflow_span_with_a_child_per_node_visit(
    exporter: InMemorySpanExporter,
) -> None:
    tel = _telemetry(exporter)
    async with SessionManager("memory:", llm=EchoModel(), telemetry=tel) as manager:
        session = await manager.get_or_create("alice")
        assert (await session.send("hello")).ok
        assert (await session.send("again")).ok
    spans = exporter.get_finished_spans()
    turns = _named(spans, "invoke_workflow")
    assert [t.name for t in turns] == ["invoke_workflow turn", "invoke_workflow turn"]
    second = turns[1]
    attrs = dict(second.attributes or {})
    assert attrs["gen_ai.operation.name"] == "invoke_workflow"
    assert attrs["gen_ai.conversation.id"] == "alice"
    assert attrs["turngraph.turn"] == 2
    assert attrs["turngraph.turn.status"] == "success"
    assert second.status.status_code != StatusCode.ERROR
    assert second.parent is None
    assert turns[0].context.trace_id != second.context.trace_id  # a trace per turn
    nodes = [s for s in _named(spans, "node ") if s.context.trace_id == second.context.trace_id]
    assert [n.name for n in nodes][:3] == ["node start", "node classify", "node recall"]
    for node in nodes:
        assert _parent_of(node, spans) is second
        a = dict(node.attributes or {})
        assert a["turngraph.node.id"] == node.name.removeprefix("node ")
        assert a["turngraph.node.status"] in ("success", "skipped", "partial")
        assert a["turngraph.node.attempts"] == 1
        assert isinstance(a["turngraph.node.duration"], float)
    llm = next(n for n in nodes if n.name == "node llm_call")
    assert dict(llm.attributes or {})["turngraph.node.handler"] == "llm_call"
    (chat,) = [s for s in _named(spans, "chat") if s.context.trace_id == second.context.trace_id]
    assert _parent_of(chat, spans) is llm and chat.kind == SpanKind.CLIENT
    c = dict(chat.attributes or {})
    assert c["gen_ai.operation.name"] == "chat"
    assert c["gen_ai.provider.name"] == "echo"
    tokens = (c["gen_ai.usage.input_tokens"], c["gen_ai.usage.output_tokens"])
    assert all(isinstance(n, int) and n > 0 for n in tokens), tokens
    assert not CONTENT_KEYS & {k for s in spans for k in (s.attributes or {})}


async def test_model_and_tool_calls_carry_the_genai_attributes_and_content_when_asked(
    exporter: InMemorySpanExporter, server: LLMServer
) -> None:
    server.script(
        Reply(tokens=("let me add",), tool_calls=(("c1", "add", '{"a": 2, "b": 40}'),)),
        Reply(tokens=("it is", " 42"), usage=(20, 4), model="served-model"),
    )
    llm = from_spec("openai:asked-model", base_url=server.url)
    tel = _telemetry(exporter, capture=True)
    manager = SessionManager(
        "memory:", llm=llm, tools=_tools(), turn_graph=TOOL_TURN, telemetry=tel
    )
    async with manager:
        session = await manager.get_or_create("bob")
        result = await session.send("what is 2 + 40?")
        assert result.ok and result.reply == "it is 42"
    await llm.aclose()  # type: ignore[attr-defined]
    spans = exporter.get_finished_spans()
    (turn,) = _named(spans, "invoke_workflow")
    assert json.loads(str((turn.attributes or {})["gen_ai.input.messages"])) == [
        {"role": "user", "parts": [{"type": "text", "content": "what is 2 + 40?"}]}
    ]
    assert "it is 42" in str((turn.attributes or {})["gen_ai.output.messages"])
    chats = _named(spans, "chat")
    assert [c.name for c in chats] == ["chat asked-model", "chat asked-model"]
    first, last = (dict(c.attributes or {}) for c in chats)
    assert first["gen_ai.provider.name"] == "openai"
    assert first["gen_ai.request.model"] == "asked-model"
    assert first["gen_ai.response.model"] == "test-model"
    assert (first["gen_ai.usage.input_tokens"], first["gen_ai.usage.output_tokens"]) == (11, 3)
    assert last["gen_ai.response.model"] == "served-model"
    assert (last["gen_ai.usage.input_tokens"], last["gen_ai.usage.output_tokens"]) == (20, 4)
    assert "what is 2 + 40?" in str(last["gen_ai.input.messages"])
    assert "it is 42" in str(last["gen_ai.output.messages"])
    (tool,) = _named(spans, "execute_tool")
    assert tool.name == "execute_tool add"
    assert _parent_of(tool, spans).name == "node dispatch_tools"
    assert _parent_of(_parent_of(tool, spans), spans) is turn
    t = dict(tool.attributes or {})
    assert t["gen_ai.operation.name"] == "execute_tool"
    assert (t["gen_ai.tool.name"], t["gen_ai.tool.call.id"]) == ("add", "c1")
    assert json.loads(str(t["gen_ai.tool.call.arguments"])) == {"a": 2, "b": 40}
    assert t["gen_ai.tool.call.result"] == "42"
    assert tool.status.status_code != StatusCode.ERROR


async def test_each_tool_call_span_covers_its_own_call(
    exporter: InMemorySpanExporter, server: LLMServer
) -> None:
    """Two calls in one round: each span starts before its tool runs and ends before the
    next one starts (results are reported as each call returns)."""
    ran: dict[str, int] = {}
    tools = ToolBox()

    @tools.tool(description="First.")
    def first() -> str:
        ran["first"] = time.time_ns()
        return "1"

    @tools.tool(description="Second.")
    def second() -> str:
        ran["second"] = time.time_ns()
        return "2"

    server.script(
        Reply(tokens=("two calls",), tool_calls=(("a", "first", "{}"), ("b", "second", "{}"))),
        Reply(tokens=("done",)),
    )
    llm = from_spec("openai:m", base_url=server.url)
    tel = _telemetry(exporter)
    async with SessionManager(
        "memory:", llm=llm, tools=tools, turn_graph=TOOL_TURN, telemetry=tel
    ) as manager:
        assert (await (await manager.get_or_create("t")).send("go")).ok
    await llm.aclose()  # type: ignore[attr-defined]
    spans = exporter.get_finished_spans()
    one, two = _named(spans, "execute_tool")
    assert (one.name, two.name) == ("execute_tool first", "execute_tool second")
    assert one.start_time is not None and one.end_time is not None
    assert two.start_time is not None and two.end_time is not None
    assert one.start_time <= ran["first"] <= one.end_time <= ran["second"] <= two.end_time
    node = _parent_of(one, spans)
    assert node is _parent_of(two, spans) and node.name == "node dispatch_tools"


async def test_no_message_content_without_the_env_variable(
    exporter: InMemorySpanExporter, server: LLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(CAPTURE_ENV, raising=False)
    server.script(
        Reply(tokens=("adding",), tool_calls=(("c9", "add", '{"a": 1, "b": 1}'),)),
        Reply(tokens=("two",)),
    )
    llm = from_spec("openai:m", base_url=server.url)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tel = Telemetry(provider)
    assert not tel.capture_content
    async with SessionManager(
        "memory:", llm=llm, tools=_tools(), turn_graph=TOOL_TURN, telemetry=tel
    ) as manager:
        assert (await (await manager.get_or_create("c")).send("secret text")).ok
    await llm.aclose()  # type: ignore[attr-defined]
    spans = exporter.get_finished_spans()
    assert _named(spans, "execute_tool") and len(_named(spans, "chat")) == 2
    for span in spans:
        assert not CONTENT_KEYS & set(span.attributes or {}), span.name
        assert "secret text" not in json.dumps(dict(span.attributes or {}))
    monkeypatch.setenv(CAPTURE_ENV, "true")
    assert Telemetry(provider).capture_content


async def test_a_retried_model_call_is_a_span_event_and_a_failed_chat_span(
    exporter: InMemorySpanExporter, server: LLMServer
) -> None:
    server.script(Fail(503, "overloaded"), Reply(tokens=("fine",)))
    llm = from_spec("openai:m", base_url=server.url)
    async with SessionManager("memory:", llm=llm, telemetry=_telemetry(exporter)) as manager:
        assert (await (await manager.get_or_create("r")).send("hi")).ok
    await llm.aclose()  # type: ignore[attr-defined]
    spans = exporter.get_finished_spans()
    (node,) = _named(spans, "node llm_call")
    assert [e.name for e in node.events] == ["retry"]
    retry = dict(node.events[0].attributes or {})
    assert retry["turngraph.attempt"] == 1 and "503" in str(retry["turngraph.retry.reason"])
    assert dict(node.attributes or {})["turngraph.node.attempts"] == 2
    assert node.status.status_code != StatusCode.ERROR
    failed, ok = _named(spans, "chat")
    assert failed.status.status_code == StatusCode.ERROR
    assert dict(failed.attributes or {})["error.type"] == "fail"
    assert ok.status.status_code != StatusCode.ERROR
    assert _parent_of(failed, spans) is node and _parent_of(ok, spans) is node


async def test_a_failed_turn_has_error_status_on_its_turn_node_and_chat_spans(
    exporter: InMemorySpanExporter, server: LLMServer
) -> None:
    server.script(Fail(401, "bad key"))
    llm = from_spec("openai:m", base_url=server.url)
    async with SessionManager("memory:", llm=llm, telemetry=_telemetry(exporter)) as manager:
        result = await (await manager.get_or_create("f")).send("hi")
        assert not result.ok
    await llm.aclose()  # type: ignore[attr-defined]
    spans = exporter.get_finished_spans()
    (turn,) = _named(spans, "invoke_workflow")
    assert turn.status.status_code == StatusCode.ERROR
    assert "401" in str(turn.status.description)
    attrs = dict(turn.attributes or {})
    assert attrs["turngraph.turn.status"] == "fail"
    assert attrs["error.type"] == "HandlerError"
    (node,) = _named(spans, "node llm_call")
    assert node.status.status_code == StatusCode.ERROR
    assert dict(node.attributes or {})["turngraph.node.status"] == "fail"
    (chat,) = _named(spans, "chat")
    assert chat.status.status_code == StatusCode.ERROR


async def test_a_cancelled_turn_ends_every_span_it_opened(exporter: InMemorySpanExporter) -> None:
    started = anyio.Event()

    def watch(event: Event) -> None:
        if isinstance(event, NodeStarted) and event.handler == "llm_call":
            started.set()

    tel = _telemetry(exporter)
    manager = SessionManager("memory:", llm=EchoModel(delay=3600), telemetry=tel)
    manager.engine.observers = (watch,)
    async with manager:
        session = await manager.get_or_create("x")
        async with anyio.create_task_group() as tg:
            tg.start_soon(session.send, "never answered")
            await started.wait()
            tg.cancel_scope.cancel()
        assert session.phase == "idle"
    spans = exporter.get_finished_spans()
    (turn,) = _named(spans, "invoke_workflow")
    assert turn.status.status_code == StatusCode.ERROR
    assert dict(turn.attributes or {})["turngraph.turn.status"] == "cancelled"
    (node,) = _named(spans, "node llm_call")
    (chat,) = _named(spans, "chat")
    for span in (node, chat):
        assert span.status.status_code == StatusCode.ERROR
        assert dict(span.attributes or {})["error.type"] == "cancelled"
        assert span.end_time is not None
    assert _parent_of(chat, spans) is node and _parent_of(node, spans) is turn


async def test_off_by_default_and_on_with_the_env_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ENABLE_ENV, raising=False)
    async with SessionManager("memory:", log_nodes=False) as manager:
        assert manager.telemetry is None
        session = await manager.get_or_create("quiet")
        assert manager.engine.observers == ()
        assert (await session.send("hi")).ok
    monkeypatch.setenv(ENABLE_ENV, "1")
    on = SessionManager("memory:", llm=EchoModel(name="echo-1"))
    assert on.telemetry is not None and on.telemetry.provider == "echo-1"
    assert SessionManager("memory:", telemetry=False).telemetry is None


class _Probe:
    """A streaming model that notes whether the engine offered it a text callback (it
    does only when someone observes the run)."""

    def __init__(self) -> None:
        self.observed: list[bool] = []

    async def complete(self, messages: Any, **kw: Any) -> LLMResponse:
        return LLMResponse("ok", usage=Usage(1, 1), model="probe")

    async def respond(
        self, request: ChatRequest, on_text: Callable[[str], None] | None = None
    ) -> LLMResponse:
        self.observed.append(on_text is not None)
        return LLMResponse("ok", usage=Usage(1, 1), model="probe")


async def test_an_unsampled_turn_installs_no_observer(exporter: InMemorySpanExporter) -> None:
    probe = _Probe()
    dropped = TracerProvider(sampler=ALWAYS_OFF)
    dropped.add_span_processor(SimpleSpanProcessor(exporter))
    sampled = _telemetry(exporter)
    for tel in (Telemetry(dropped), Telemetry(NoOpTracerProvider()), sampled):
        async with SessionManager("memory:", llm=probe, log_nodes=False, telemetry=tel) as m:
            assert (await (await m.get_or_create("u")).send("hi")).ok
    assert probe.observed == [False, False, True]
    assert {s.name for s in _named(exporter.get_finished_spans(), "invoke")} == {
        "invoke_workflow turn"
    }
    assert len(_named(exporter.get_finished_spans(), "invoke")) == 1


def test_a_missing_extra_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # as if not installed
    with pytest.raises(MissingExtraError) as info:
        SessionManager("memory:", telemetry=True)
    assert "pip install 'turngraph[otel]'" in str(info.value)


def test_the_cli_reports_a_missing_extra_in_one_line(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['opentelemetry'] = None\n"
        "from engine.cli.main import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    env = {**os.environ, ENABLE_ENV: "1", "PYTHONPATH": str(ROOT)}
    store = f"sqlite:///{tmp_path / 's.db'}"
    run = subprocess.run(
        [sys.executable, "-c", code, "-m", "hi", "--session", "a", "--store", store],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'turngraph[otel]'" in lines[0], run.stderr
    assert "Traceback" not in run.stderr


def test_the_cli_traces_session_turns_with_the_env_variable(tmp_path: Path) -> None:
    """``TURNGRAPH_OTEL=1``: the CLI's turns land in the provider the process set up."""
    code = (
        "import sys\n"
        "from opentelemetry import trace\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "from opentelemetry.sdk.trace.export import SimpleSpanProcessor\n"
        "from opentelemetry.sdk.trace.export.in_memory_span_exporter import "
        "InMemorySpanExporter\n"
        "exporter = InMemorySpanExporter()\n"
        "provider = TracerProvider()\n"
        "provider.add_span_processor(SimpleSpanProcessor(exporter))\n"
        "trace.set_tracer_provider(provider)\n"
        "from engine.cli.main import main\n"
        "code = main(sys.argv[1:])\n"
        "for s in exporter.get_finished_spans():\n"
        "    print('SPAN', s.name, s.attributes.get('gen_ai.conversation.id', ''), "
        "file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    store = f"sqlite:///{tmp_path / 's.db'}"
    env = {**os.environ, ENABLE_ENV: "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-c", code, "-m", "hi", "--session", "ann", "--store", store],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    spans = [line.split() for line in run.stderr.splitlines() if line.startswith("SPAN ")]
    assert ["SPAN", "invoke_workflow", "turn", "ann"] in spans
    assert ["SPAN", "node", "llm_call"] in spans


async def test_branch_visits_are_node_spans_with_their_branch(
    exporter: InMemorySpanExporter,
) -> None:
    """Each visit inside a parallel branch is a node span under the turn, overlapping its
    sibling's, with ``turngraph.branch`` naming its branch (nested: ``a/x``)."""
    from engine import HandlerRegistry, Node, load_graph

    async def search(node: Node, ctx: Any) -> dict[str, Any]:
        await anyio.sleep(0.02)
        return {"found": node.id}

    graph = load_graph("""digraph p {
        start [shape=Mdiamond]; fan [shape=component]; done [shape=Msquare]
        a [handler=search]; inner [shape=component]; x [handler=search]; y [handler=search]
        j2 [shape=tripleoctagon merge=list]; b [handler=search]
        join [shape=tripleoctagon merge=list]
        start -> fan; fan -> a -> inner; inner -> x -> j2; inner -> y -> j2; j2 -> join
        fan -> b -> join; join -> done
    }""")
    registry = HandlerRegistry({"search": search})
    tel = _telemetry(exporter)
    async with SessionManager(
        "memory:", registry=registry, turn_graph=graph, telemetry=tel
    ) as manager:
        assert (await (await manager.get_or_create("par")).send("go")).ok
    spans = exporter.get_finished_spans()
    (turn,) = _named(spans, "invoke_workflow")
    nodes = {s.name.removeprefix("node "): s for s in _named(spans, "node ")}
    branch = {n: dict(s.attributes or {}).get("turngraph.branch") for n, s in nodes.items()}
    assert branch == {
        "start": None,
        "fan": None,
        "a": "a",
        "inner": "a",
        "x": "a/x",
        "y": "a/y",
        "j2": "a",
        "b": "b",
        "join": None,
        "done": None,
    }
    assert all(_parent_of(s, spans) is turn for s in nodes.values())
    for one, other in (("a", "b"), ("x", "y")):  # sibling visits overlap in time
        s1, s2 = nodes[one], nodes[other]
        assert s1.start_time is not None and s1.end_time is not None
        assert s2.start_time is not None and s2.end_time is not None
        assert s1.start_time < s2.end_time and s2.start_time < s1.end_time


async def test_one_node_running_in_two_branches_at_once_is_two_spans(
    exporter: InMemorySpanExporter,
) -> None:
    """Visits are told apart by branch: both spans end (keyed by node id alone, the
    second visit's span would replace the first's, which would never end)."""
    from engine import HandlerRegistry, Node, load_graph

    both_in = anyio.Event()
    arrived: list[str] = []

    async def check(node: Node, ctx: Any) -> dict[str, Any]:
        arrived.append(str(ctx["side"]))
        if len(arrived) == 2:
            both_in.set()
        await both_in.wait()  # the two visits of `check` overlap
        return {"checked": ctx["side"]}

    graph = load_graph("""digraph p {
        start [shape=Mdiamond]; fan [shape=component]; done [shape=Msquare]
        a [handler=side]; b [handler=side]; check [handler=check]
        join [shape=tripleoctagon merge=list]
        start -> fan; fan -> a -> check; fan -> b -> check; check -> join; join -> done
    }""")
    registry = HandlerRegistry({"side": lambda node, ctx: {"side": node.id}, "check": check})
    async with SessionManager(
        "memory:", registry=registry, turn_graph=graph, telemetry=_telemetry(exporter)
    ) as manager:
        assert (await (await manager.get_or_create("two")).send("go")).ok
    checks = _named(exporter.get_finished_spans(), "node check")
    assert sorted(str(dict(s.attributes or {})["turngraph.branch"]) for s in checks) == ["a", "b"]
    assert all(dict(s.attributes or {})["turngraph.node.status"] == "success" for s in checks)
