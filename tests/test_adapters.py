"""The offline adapters: EchoModel, ScriptedModel, KeywordMemory, ToolBox."""

from __future__ import annotations

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import AdapterError, TransientAdapterError
from handlers.adapters import (
    LLM,
    EchoModel,
    KeywordMemory,
    LLMResponse,
    Memory,
    MemoryItem,
    ScriptedModel,
    ToolBox,
    ToolCall,
    Tools,
    ToolSpec,
    calculate,
    clock,
    estimate_tokens,
    keywords,
)

# --------------------------------------------------------------------------- protocols


def test_defaults_satisfy_their_protocols() -> None:
    """Each offline default is an instance of its runtime-checkable protocol."""
    assert isinstance(EchoModel(), LLM)
    assert isinstance(ScriptedModel([]), LLM)
    assert isinstance(KeywordMemory(), Memory)
    assert isinstance(ToolBox(), Tools)


def test_estimate_tokens_is_four_chars_a_token() -> None:
    """The rough estimate rounds up and is zero only for empty text."""
    assert estimate_tokens("") == 0
    assert estimate_tokens("a") == 1
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde") == 2


# --------------------------------------------------------------------------- EchoModel


async def test_echo_repeats_the_last_user_message() -> None:
    """The reply echoes the last message, with a model name and usage."""
    r = await EchoModel().complete(
        [{"role": "user", "content": "first"}, {"role": "user", "content": "hello"}]
    )
    assert r.text == "echo: hello"
    assert r.tool_calls == ()
    assert r.model == "echo"
    assert r.usage.input_tokens == estimate_tokens("first") + estimate_tokens("hello")
    assert r.usage.output_tokens == estimate_tokens("echo: hello")


async def test_echo_asks_for_a_tool_when_offered() -> None:
    """``/tool NAME ARGS`` becomes a tool call, ARGS given to the first parameter."""
    specs = ToolBox().specs()
    r = await EchoModel().complete(
        [{"role": "user", "content": "/tool calculator 2 * 21"}], tools=specs
    )
    assert r.text == ""
    assert r.tool_calls == (ToolCall("calculator", {"expression": "2 * 21"}, "call_1"),)


async def test_echo_tool_marker_accepts_json_arguments() -> None:
    """A JSON object after the tool name is the arguments mapping."""
    r = await EchoModel().complete(
        [{"role": "user", "content": '/tool calculator {"expression": "1+1"}'}],
        tools=ToolBox().specs(),
    )
    assert r.tool_calls[0].arguments == {"expression": "1+1"}


async def test_echo_ignores_the_tool_marker_without_tools() -> None:
    """No tools offered: the marker is just text to echo."""
    r = await EchoModel().complete([{"role": "user", "content": "/tool clock"}])
    assert r.tool_calls == ()
    assert r.text == "echo: /tool clock"


async def test_echo_echoes_trailing_tool_results() -> None:
    """After tool results the reply echoes their contents, in order."""
    msgs = [
        {"role": "user", "content": "/tool calculator 1+1"},
        {"role": "assistant", "content": "[calling]"},
        {"role": "tool", "content": "2"},
        {"role": "tool", "content": "x"},
    ]
    r = await EchoModel().complete(msgs, tools=ToolBox().specs())
    assert r.text == "echo: 2; x"


async def test_echo_truncates_to_max_tokens() -> None:
    """``max_tokens`` bounds the reply (four characters a token)."""
    r = await EchoModel().complete([{"role": "user", "content": "x" * 100}], max_tokens=3)
    assert r.text == "echo: xxxxxx"


async def test_echo_delay_is_awaited() -> None:
    """A positive delay still answers (latency simulation for benchmarks)."""
    r = await EchoModel(delay=0.001).complete([{"role": "user", "content": "hi"}])
    assert r.text == "echo: hi"
    with pytest.raises(ValueError, match="delay"):
        EchoModel(delay=-1)


# --------------------------------------------------------------------------- ScriptedModel


async def test_scripted_model_plays_back_and_records() -> None:
    """Strings become replies, responses pass through, exceptions are raised, then exhausted."""
    canned = LLMResponse("canned", (ToolCall("clock"),), model="m")
    model = ScriptedModel(["one", canned, TransientAdapterError("llm", "rate limited")])
    assert (await model.complete([{"role": "user", "content": "a"}], system="s")).text == "one"
    assert await model.complete([]) is canned
    with pytest.raises(TransientAdapterError):
        await model.complete([])
    with pytest.raises(AdapterError, match="exhausted"):
        await model.complete([])
    assert model.calls[0] == ([{"role": "user", "content": "a"}], "s", ())
    assert model.remaining == 0


# --------------------------------------------------------------------------- KeywordMemory


def test_keywords_drop_stop_words_and_case() -> None:
    """Content words only, lowercase, in order."""
    assert keywords("What is the Capital of France?") == ["capital", "france"]


async def test_memory_recalls_by_keyword_overlap() -> None:
    """More shared keywords ranks higher; unrelated items are not returned."""
    mem = KeywordMemory()
    await mem.remember(
        [
            MemoryItem("paris is the capital of france"),
            MemoryItem("berlin is in germany"),
            MemoryItem("france has good cheese"),
        ],
        session_id="s",
    )
    got = await mem.recall("capital of france", session_id="s")
    assert [i.text for i in got] == ["paris is the capital of france", "france has good cheese"]
    assert [i.score for i in got] == [2.0, 1.0]


async def test_memory_is_partitioned_by_session() -> None:
    """One session never sees another's items."""
    mem = KeywordMemory()
    await mem.remember([MemoryItem("secret alpha")], session_id="a")
    assert await mem.recall("alpha", session_id="b") == ()
    assert len(await mem.recall("alpha", session_id="a")) == 1


async def test_memory_ties_go_to_the_newest_and_limit_applies() -> None:
    """Equal scores: most recent first; at most ``limit`` items."""
    mem = KeywordMemory()
    await mem.remember([MemoryItem(f"topic {i}") for i in range(5)], session_id="s")
    got = await mem.recall("topic", session_id="s", limit=2)
    assert [i.text for i in got] == ["topic 4", "topic 3"]
    assert await mem.recall("topic", session_id="s", limit=0) == ()
    assert await mem.recall("the of", session_id="s") == ()


async def test_memory_is_bounded() -> None:
    """Old items fall off past max_items; old sessions past max_sessions."""
    mem = KeywordMemory(max_items=2, max_sessions=2)
    await mem.remember([MemoryItem(f"w{i}") for i in range(3)], session_id="s1")
    assert mem.count("s1") == 2
    assert await mem.recall("w0", session_id="s1") == ()
    await mem.remember([MemoryItem("x")], session_id="s2")
    await mem.remember([MemoryItem("y")], session_id="s3")
    assert mem.count("s1") == 0
    assert mem.count("s3") == 1
    with pytest.raises(ValueError, match="max_items"):
        KeywordMemory(max_items=0)


async def test_memory_eviction_keeps_the_index_consistent() -> None:
    """Evicted items are never recalled, and survivors still are, after many evictions."""
    mem = KeywordMemory(max_items=3)
    for n in range(50):
        await mem.remember([MemoryItem(f"tea number{n}")], session_id="s")
    assert mem.count("s") == 3
    found = await mem.recall("tea", session_id="s", limit=10)
    assert [i.text for i in found] == ["tea number49", "tea number48", "tea number47"]
    assert await mem.recall("number10", session_id="s") == ()
    assert [i.text for i in await mem.recall("number48", session_id="s")] == ["tea number48"]


async def test_memory_recall_scans_only_recent_mentions_of_each_keyword() -> None:
    """Recall cost is bounded: only the ``scan`` newest items per keyword are looked at."""
    mem = KeywordMemory(max_items=1000, scan=4)
    await mem.remember([MemoryItem("lisbon trip tram")], session_id="s")
    for _ in range(10):
        await mem.remember([MemoryItem("lisbon weather")], session_id="s")
    # "tram" was mentioned once: still found; the old "lisbon trip" is past the window
    # for "lisbon" but reachable through "trip".
    assert [i.text for i in await mem.recall("tram", session_id="s")] == ["lisbon trip tram"]
    scored = {i.text: i.score for i in await mem.recall("lisbon trip", session_id="s", limit=9)}
    assert scored["lisbon trip tram"] == 1.0  # only "trip" counted: documented approximation
    assert len(await mem.recall("lisbon", session_id="s", limit=100)) == 4


def _reference_recall(
    texts: list[str], query: str, scan: int, limit: int, keep: int
) -> list[tuple[str, float]]:
    """Recall by the documented rule, the slow way: of the newest ``keep`` items, per
    keyword its ``scan`` newest mentions count; best score first, then newest."""
    kept = range(max(0, len(texts) - keep), len(texts))
    scores: dict[int, int] = {}
    for word in set(keywords(query)):
        mentions = [i for i in kept if word in set(keywords(texts[i]))][-scan:]
        for i in mentions:
            scores[i] = scores.get(i, 0) + 1
    best = sorted(scores, key=lambda i: (scores[i], i), reverse=True)[:limit]
    return [(texts[i], float(scores[i])) for i in best]


_WORDS = ["porto", "tea", "tram", "rain", "lisbon", "sun", "wine", "fish", "bread", "fado"]


@settings(max_examples=300, deadline=None)
@given(
    texts=st.lists(st.lists(st.sampled_from(_WORDS[:-1]), max_size=6), max_size=30),
    # Up to 9 distinct query words: both the level-set path and the counting one.
    query=st.lists(st.sampled_from(_WORDS[1:]), max_size=12),
    scan=st.integers(1, 8),
    limit=st.integers(1, 6),
    keep=st.integers(1, 40),
)
def test_memory_recall_ranks_like_the_reference(
    texts: list[list[str]], query: list[str], scan: int, limit: int, keep: int
) -> None:
    """Whatever shortcut recall takes, it ranks exactly as the documented rule says,
    evictions included."""
    mem = KeywordMemory(scan=scan, max_items=keep)
    docs = [f"{' '.join(words)} item{n}" for n, words in enumerate(texts)]

    async def go() -> list[tuple[str, float]]:
        for doc in docs:
            await mem.remember([MemoryItem(doc)], session_id="s")
        found = await mem.recall(" ".join(query), session_id="s", limit=limit)
        return [(i.text, i.score) for i in found]

    assert anyio.run(go) == _reference_recall(docs, " ".join(query), scan, limit, keep)


# --------------------------------------------------------------------------- ToolBox


def test_toolbox_specs_come_from_signatures() -> None:
    """Built-ins are listed with a JSON schema of their parameters."""
    specs = {s.name: s for s in ToolBox().specs()}
    assert set(specs) == {"calculator", "clock"}
    calc = specs["calculator"]
    assert calc.parameters["properties"] == {"expression": {"type": "string"}}
    assert calc.parameters["required"] == ["expression"]
    assert calc.parameter_names() == ("expression",)
    assert ToolBox(builtins=False).specs() == ()


async def test_calculator_computes_without_eval() -> None:
    """Arithmetic works; anything else is refused with a clear reason."""
    box = ToolBox()
    assert (await box.call("calculator", {"expression": "2 * (3 + 4) - 1"})).content == "13"
    assert (await box.call("calculator", {"expression": "1/4"})).content == "0.25"
    assert (await box.call("calculator", {"expression": "-6/3"})).content == "-2"
    assert calculate("1.5 + 1.5") == 3
    for bad, reason in [
        ("__import__('os')", "only numbers"),
        ("2 ** 99999", "only numbers"),
        ("1/0", "division by zero"),
        ("1 +", "cannot parse"),
        ("1" * 300, "longer than"),
        ("", "empty"),
    ]:
        with pytest.raises(AdapterError, match=reason):
            await box.call("calculator", {"expression": bad})


async def test_toolbox_rejects_unknown_tools_and_bad_arguments() -> None:
    """Unknown tool, unknown/missing/mistyped argument: each names the problem."""
    box = ToolBox()
    with pytest.raises(AdapterError, match=r"unknown tool 'nope'.*calculator, clock"):
        await box.call("nope", {})
    with pytest.raises(AdapterError, match="unknown argument 'x'"):
        await box.call("clock", {"x": 1})
    with pytest.raises(AdapterError, match="needs argument 'expression'"):
        await box.call("calculator", {})
    with pytest.raises(AdapterError, match="must be string, not int"):
        await box.call("calculator", {"expression": 3})


async def test_toolbox_runs_custom_sync_and_async_tools() -> None:
    """Registered callables run; non-string results are JSON-encoded."""
    box = ToolBox(builtins=False)

    @box.tool(description="Add two integers.")
    def add(a: int, b: int = 1) -> dict[str, int]:
        return {"sum": a + b}

    async def shout(text: str) -> str:
        """Upper-case the text."""
        return text.upper()

    spec = box.register(shout)
    assert spec == ToolSpec(
        "shout",
        "Upper-case the text.",
        {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    )
    assert (await box.call("add", {"a": 2})).content == '{"sum": 3}'
    assert (await box.call("shout", {"text": "hi"})).content == "HI"
    with pytest.raises(AdapterError, match="must be integer, not bool"):
        await box.call("add", {"a": True})
    with pytest.raises(ValueError, match="already registered"):
        box.register(shout)


async def test_toolbox_maps_tool_exceptions() -> None:
    """A tool's own exception is an AdapterError; connection trouble is transient."""
    box = ToolBox(builtins=False)

    @box.tool()
    def broken() -> str:
        raise RuntimeError("boom")

    @box.tool()
    def flaky() -> str:
        raise ConnectionError("reset")

    with pytest.raises(AdapterError, match="tool 'broken' failed: boom") as info:
        await box.call("broken", {})
    assert not isinstance(info.value, TransientAdapterError)
    with pytest.raises(TransientAdapterError):
        await box.call("flaky", {})


def test_clock_is_iso_utc() -> None:
    """The clock tool returns an ISO 8601 UTC timestamp."""
    assert clock().endswith("+00:00")
    assert clock()[4] == "-"
