"""Many sessions streaming at once from one loopback model: every turn completes whole.

The load server (:mod:`bench.loopback_llm`) holds every reply 50 ms before its first token,
so the streams really overlap (its peak of streams in flight is checked); each session's
turn must commit the model's whole reply, with every token seen as a ``TextDelta``.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import anyio
import pytest

from bench.concurrent_streams import _sessions
from bench.loopback_llm import Load, serving
from sessions import Limits, SessionManager

pytest.importorskip("openai")

N = 40
TOKENS = 12
EXPECTED = "".join(f" t{i % 10}" for i in range(TOKENS)).strip()  # format trims


def _peak(url: str) -> int:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/stats", timeout=10) as r:
        return int(json.load(r)["peak_in_flight"])


@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_concurrent_streaming_sessions_all_commit_whole_replies(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """40 sessions stream at once: no failed turn, every reply whole, the load concurrent."""
    monkeypatch.setenv("TURNGRAPH_HOME", str(tmp_path))
    url_store = "memory:" if store == "memory" else f"sqlite:///{tmp_path}/s.db"
    deltas = [0]
    with serving(Load("openai", ttft=0.05, tokens=TOKENS, gap=0.002)) as url:
        wave = anyio.run(_sessions, url, N, url_store, deltas)
        peak = _peak(url)
    assert wave.failed == 0, wave.first_error
    assert deltas[0] == N * TOKENS
    assert peak > N // 2, f"only {peak} streams overlapped"
    if store == "sqlite":

        async def replies() -> list[str]:
            async with SessionManager(url_store, limits=Limits(max_active_sessions=N)) as manager:
                out = []
                for i in range(N):
                    session = await manager.get(f"s{i}")
                    msgs = await session.all()
                    out.append(msgs[-1].content)
                return out

        assert anyio.run(replies) == [EXPECTED] * N
