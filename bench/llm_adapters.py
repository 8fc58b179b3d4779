"""Hosted-model adapters: what turngraph adds on top of the providers' own SDKs.

A loopback server (``tests/llm_servers.py``, in a process of its own) answers at once in each
provider's wire format.  Measured, for OpenAI Chat Completions and the Anthropic
Messages API (each only when its SDK is installed):

* **overhead**: ``adapter.respond()`` against the bare SDK call on the same kind of
  client, calls interleaved; the ratio of their p50 (issue 10: ≤ 1.1×);
* **time to first token added**: a 1,000-token stream is recorded once as the SDK
  parsed it, then replayed (no network, no SDK parsing, so machine noise does not
  swamp microseconds): from ``Engine.run`` of a one-node graph to the first
  ``TextDelta`` its observer gets, minus the time to the first replayed chunk
  (p50; ≤ 0.5 ms).  All of turngraph's work is in: the run, ``llm_call``, the
  request built for the SDK, the adapter's stream loop and the event;
* **per-token cost**: the same replayed runs, whole, minus iterating the replay bare,
  per token (p50; ≤ 5 µs); and the emitter's own cost per token (building a
  ``TextDelta``, calling one observer).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio

from bench.harness import BenchContext, BenchResult, Stats, at_most, time_sync
from bench.loopback_llm import spawn
from engine.events import Emitter, Event, TextDelta

NAME = "llm_adapters"
TITLE = "hosted-model adapters vs the bare SDKs (loopback server)"

_perf = time.perf_counter_ns
_TOKENS = 1000
_MESSAGES = [{"role": "user", "content": "hello"}]
_ONE_NODE = """digraph b { start [shape=Mdiamond] done [shape=Msquare]
  llm_call [handler=llm_call, history=0] start -> llm_call -> done }"""


def _bare_call(provider: str, client: Any) -> Callable[..., Awaitable[Any]]:
    if provider == "openai":
        create = client.chat.completions.create

        async def call(**kw: Any) -> Any:
            if kw.get("stream"):
                kw["stream_options"] = {"include_usage": True}
            return await create(model="m", messages=_MESSAGES, **kw)

        return call
    create = client.messages.create

    async def call_a(**kw: Any) -> Any:
        return await create(model="m", messages=_MESSAGES, max_tokens=64, **kw)

    return call_a


def _bare_client(provider: str, url: str) -> Any:
    import importlib

    sdk = importlib.import_module(provider)
    cls = sdk.AsyncOpenAI if provider == "openai" else sdk.AsyncAnthropic
    return cls(api_key="no-key", base_url=url, max_retries=0, timeout=30.0)


async def _overhead(provider: str, url: str, n: int) -> tuple[Stats, Stats]:
    """p50s of interleaved bare-SDK and adapter calls (one reply, not streamed)."""
    from handlers.adapters import ChatRequest, from_spec

    client = _bare_client(provider, url)
    bare = _bare_call(provider, client)
    adapter: Any = from_spec(f"{provider}:m", base_url=url)
    request = ChatRequest(_MESSAGES, max_tokens=64)
    sdk_ns: list[float] = []
    ours_ns: list[float] = []
    for i in range(n + 20):
        t0 = _perf()
        await bare()
        t1 = _perf()
        await adapter.respond(request)
        t2 = _perf()
        if i >= 20:  # warm-up: connections, caches
            sdk_ns.append(t1 - t0)
            ours_ns.append(t2 - t1)
    await client.close()
    await adapter.aclose()
    return Stats.of(sdk_ns), Stats.of(ours_ns)


async def _record(provider: str, url: str) -> list[Any]:
    """The SDK's parsed chunks (or events) of one stream, to replay without a network."""
    client = _bare_client(provider, url)
    chunks = [c async for c in await _bare_call(provider, client)(stream=True)]
    await client.close()
    return chunks


async def _replay(chunks: list[Any]) -> AsyncIterator[Any]:
    for chunk in chunks:
        yield chunk


def _replaying(provider: str, chunks: list[Any]) -> Any:
    """The provider's adapter with the SDK call replaced by a replay of ``chunks``: all
    of turngraph's own work (request building, the stream loop, events) stays in."""
    from handlers.adapters.hosted import HostedModel
    from handlers.adapters.spec import from_spec

    base = type(from_spec(f"{provider}:m", base_url="http://127.0.0.1:9/v1"))
    assert issubclass(base, HostedModel)

    class Replayed(base):  # type: ignore[valid-type,misc]
        async def _create(self, kwargs: dict[str, Any], *, stream: bool) -> Any:
            # kwargs were built by respond(), as for a real call; only the SDK is left out.
            return _replay(chunks)

    return Replayed("m", base_url="http://127.0.0.1:9/v1")


async def _engine_stream(provider: str, chunks: list[Any], n: int) -> tuple[Stats, Stats, Stats]:
    """Replayed streams: bare iteration vs an observed engine run of a one-node graph.
    Returns (first chunk, bare), (first TextDelta, engine), (whole stream: engine - bare,
    per token)."""
    from engine import Engine, load_graph
    from handlers import build_registry

    registry = build_registry(llm=_replaying(provider, chunks))
    graph = load_graph(_ONE_NODE, registry=registry)
    stamp: list[int] = []

    def observer(event: Event) -> None:
        if type(event) is TextDelta and not stamp:
            stamp.append(_perf())

    engine = Engine(registry, observers=[observer])
    tokens = sum(1 for _ in chunks)
    bare_first: list[float] = []
    ours_first: list[float] = []
    per_token: list[float] = []
    for i in range(n + 20):
        t0 = _perf()
        first = 0
        async for _ in _replay(chunks):
            first = first or _perf()
        t1 = _perf()
        stamp.clear()
        result = await engine.run(graph, {"session.input": "hello"})
        t2 = _perf()
        if not result.ok:
            raise RuntimeError(f"replayed run failed: {result.error}")
        if i >= 20:
            bare_first.append(first - t0)
            ours_first.append(stamp[0] - t1)
            per_token.append(((t2 - t1) - (t1 - t0)) / tokens)
    return Stats.of(bare_first), Stats.of(ours_first), Stats.of(per_token)


def _emitter_cost(n: int) -> Stats:
    emitter = Emitter((lambda e: None,), "run")
    emitter.node_id = "llm_call"
    text = emitter.text
    batch = 1000

    def thousand() -> None:
        for _ in range(batch):
            text("tok")

    return Stats.of([s / batch for s in time_sync(thousand, n, warmup=5)])


def _measure(provider: str, ctx: BenchContext, res: BenchResult) -> None:
    n = ctx.n(300, 15)
    with spawn("tests.llm_servers", provider, "3") as url:
        sdk, ours = anyio.run(_overhead, provider, url, n)
        res.add(f"{provider}: bare SDK call p50", sdk.p50 / 1e3, "µs")
        res.add(f"{provider}: adapter call p50", ours.p50 / 1e3, "µs")
        res.add(f"{provider}: adapter / SDK, p50", ours.p50 / sdk.p50, "×", at_most(1.1))
    with spawn("tests.llm_servers", provider, str(_TOKENS)) as url:
        chunks = anyio.run(_record, provider, url)
    bare, ours, per_token = anyio.run(_engine_stream, provider, chunks, ctx.n(100, 5))
    added = (ours.p50 - bare.p50) / 1e6
    res.add(f"{provider}: first token added by the engine", added, "ms", at_most(0.5))
    res.add(f"{provider}: per-token cost added", per_token.p50 / 1e3, "µs", at_most(5.0))


def run(ctx: BenchContext) -> BenchResult:
    """Measure each provider whose SDK is installed (see the module)."""
    import importlib.util

    res = BenchResult(NAME, TITLE)
    providers = [p for p in ("openai", "anthropic") if importlib.util.find_spec(p)]
    if not providers:
        res.unavailable = "neither SDK installed: pip install 'turngraph[openai,anthropic]'"
        return res
    for provider in providers:
        _measure(provider, ctx, res)
    emit = _emitter_cost(ctx.n(200, 10))
    res.add("emitter: TextDelta to one observer p50", emit.p50 / 1e3, "µs")
    res.params = {"providers": providers, "calls": ctx.n(300, 15), "stream_tokens": _TOKENS}
    res.notes.append("server: tests/llm_servers.py in its own process on 127.0.0.1")
    return res
