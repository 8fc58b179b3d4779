"""The streaming part of the session benchmark (issue 10): ``session.stream()`` against
``session.send()``, time to first token and cost per text delta.

All on a ``memory:`` store, the default ``turn.dot``, structlog off:

* **stream vs send**: the same turns with the offline ``EchoModel`` (which streams
  nothing), interleaved; p50 of each.  The difference is what the iterator costs: the
  turn's task, its events, the buffer;
* **first token added by engine + session**: a model that streams its first token the
  moment it is called; from the first ``__anext__`` to the consumer holding the first
  ``TextDelta``, minus the model's own time to that token (p50; ≤ 0.5 ms).  Everything
  turngraph does before the model is in: the FIFO lock, the turn values, the nodes
  before ``llm_call``, the turn's task;
* **per-delta cost**: a 1,000-token reply, the model yielding to the event loop between
  tokens as a network read would, so the consumer takes each piece as it comes: the
  stream's time per token beyond the same loop bare (p50; ≤ 5 µs).  Most of it is the
  consumer's own task switch, so one bare event-loop pass is shown beside it for scale.
  And the same with the whole reply at once (no yield: the buffer merges text, see
  :mod:`sessions.stream`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio.lowlevel

from bench.harness import BenchContext, BenchResult, Stats, at_most
from engine.events import TextDelta
from engine.messages import LLMResponse, ToolSpec, Usage

if TYPE_CHECKING:
    from handlers.adapters import ChatRequest
    from sessions import Session

__all__ = ["streaming"]

_perf = time.perf_counter_ns
_TOKENS = 1000


class _Streamer:
    """A model that streams ``tokens`` pieces at once, yielding between them (``pace``)
    or not; it stamps when it was called and when its first piece went out."""

    def __init__(self, tokens: int, *, pace: bool) -> None:
        self.pieces = [f"t{i % 10} " for i in range(tokens)]
        self.pace = pace
        self.called = self.first = 0

    async def complete(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        system: str | None = None,
        tools: Sequence[ToolSpec] | None = None,
        max_tokens: int | None = None,
    ) -> LLMResponse:
        return LLMResponse("".join(self.pieces), usage=Usage(1, len(self.pieces)), model="s")

    async def respond(
        self, request: ChatRequest, on_text: Callable[[str], None] | None = None
    ) -> LLMResponse:
        self.called = _perf()
        if on_text is not None:
            for i, piece in enumerate(self.pieces):
                on_text(piece)
                if i == 0:
                    self.first = _perf()
                if self.pace:
                    await anyio.lowlevel.checkpoint()
        return LLMResponse("".join(self.pieces), usage=Usage(1, len(self.pieces)), model="s")


async def _drain(session: Session, text: str) -> tuple[int, int]:
    """One streamed turn: (ns to the first TextDelta, ns to the result)."""
    t0 = _perf()
    first = 0
    last: Any = None
    async for item in session.stream(text):
        if not first and type(item) is TextDelta:
            first = _perf()
        last = item
    t1 = _perf()
    if not getattr(last, "ok", False):
        raise RuntimeError(f"streamed turn failed: {getattr(last, 'error', last)!r}")
    return first - t0 if first else 0, t1 - t0


async def _send_vs_stream(n: int) -> tuple[Stats, Stats]:
    from bench.session import manager

    async with manager() as m:
        session = await m.get_or_create("bench")
        sent: list[float] = []
        streamed: list[float] = []
        for i in range(n + 50):
            t0 = _perf()
            result = await session.send(f"hello {i}")
            t1 = _perf()
            _, whole = await _drain(session, f"again {i}")
            if not result.ok:
                raise RuntimeError(f"turn failed: {result.error!r}")
            if i >= 50:  # warm-up
                sent.append(t1 - t0)
                streamed.append(whole)
    return Stats.of(sent), Stats.of(streamed)


async def _first_token(n: int) -> Stats:
    from bench.session import manager

    model = _Streamer(3, pace=True)
    async with manager(llm=model) as m:
        session = await m.get_or_create("bench")
        added: list[float] = []
        for i in range(n + 50):
            first, _ = await _drain(session, f"hello {i}")
            if i >= 50:
                added.append(first - (model.first - model.called))
    return Stats.of(added)


async def _bare_loop(pieces: Sequence[str], pace: bool) -> int:
    sink: list[str] = []
    on_text = sink.append
    t0 = _perf()
    for piece in pieces:
        on_text(piece)
        if pace:
            await anyio.lowlevel.checkpoint()
    return _perf() - t0


async def _per_delta(n: int, pace: bool) -> tuple[Stats, Stats]:
    """Per token: (long stream - one-token stream) / extra tokens, minus the bare loop's;
    and the bare loop's own cost per token (with ``pace``, one pass of the event loop)."""
    from bench.session import manager

    long, short = _Streamer(_TOKENS, pace=pace), _Streamer(1, pace=pace)
    async with manager(llm=long) as m_long, manager(llm=short) as m_short:
        s_long = await m_long.get_or_create("long")
        s_short = await m_short.get_or_create("short")
        out: list[float] = []
        loop: list[float] = []
        for i in range(n + 5):
            _, whole_long = await _drain(s_long, f"hello {i}")
            _, whole_short = await _drain(s_short, f"hello {i}")
            bare = await _bare_loop(long.pieces, pace) - await _bare_loop(short.pieces, pace)
            if i >= 5:
                out.append((whole_long - whole_short - bare) / (_TOKENS - 1))
                loop.append(bare / (_TOKENS - 1))
    return Stats.of(out), Stats.of(loop)


async def streaming(ctx: BenchContext, res: BenchResult) -> None:
    """The streaming figures (see the module)."""
    sent, streamed = await _send_vs_stream(ctx.n(2_000, 50))
    res.add("send: turn p50 (echo model)", sent.p50 / 1e3, "µs")
    res.add("stream: turn p50 (echo model)", streamed.p50 / 1e3, "µs")
    res.add("stream - send, p50", (streamed.p50 - sent.p50) / 1e3, "µs")
    first = await _first_token(ctx.n(2_000, 50))
    res.add(
        "stream: first token added by engine + session p50", first.p50 / 1e6, "ms", at_most(0.5)
    )
    paced, one_pass = await _per_delta(ctx.n(100, 5), pace=True)
    res.add(
        "stream: cost per delta p50 (model yields per token)", paced.p50 / 1e3, "µs", at_most(5.0)
    )
    res.add("reference: one event-loop pass, bare, p50", one_pass.p50 / 1e3, "µs")
    burst, _ = await _per_delta(ctx.n(100, 5), pace=False)
    res.add("stream: cost per delta p50 (reply at once, merged)", burst.p50 / 1e3, "µs")
    res.notes.append(
        f"streaming: {_TOKENS}-token replies; memory: store; see bench/session_stream.py"
    )
