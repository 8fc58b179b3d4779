"""A session driving a hosted model at a loopback server: the phase follows the tool
loop, usage reaches the stored turn trace, and after every failure the session is idle
and usable.  (``session.stream()`` and usage per session come with the session work.)"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.events import Event, TextDelta
from handlers.adapters import ToolBox, from_spec
from sessions import SessionManager
from tests.llm_servers import Cut, Fail, LLMServer, Reply

ROOT = Path(__file__).resolve().parent.parent
TOOL_TURN = str(ROOT / "graphs" / "tool_turn.dot")


@pytest.fixture(params=("openai", "anthropic"))
def server(request: pytest.FixtureRequest) -> Iterator[LLMServer]:
    pytest.importorskip(request.param)
    with LLMServer(request.param) as s:
        yield s


async def test_phase_follows_the_tool_loop_and_ends_idle(server: LLMServer) -> None:
    """awaiting_llm while the model streams, awaiting_tools while a tool runs, then idle."""
    seen: dict[str, str] = {}
    holder: list[object] = []
    tools = ToolBox()

    @tools.tool(description="Report the phase.")
    def probe() -> str:
        seen["tool"] = str(getattr(holder[0], "phase", ""))
        return "probed"

    server.script(
        Reply(tokens=("let me look",), tool_calls=(("c1", "probe", "{}"),)),
        Reply(tokens=("all", " done")),
    )
    llm = from_spec(f"{server.provider}:m", base_url=server.url)
    manager = SessionManager("memory:", llm=llm, tools=tools, turn_graph=TOOL_TURN)

    def observer(event: Event) -> None:
        if isinstance(event, TextDelta):
            seen.setdefault("stream", str(getattr(holder[0], "phase", "")))

    manager.engine.observers = (*manager.engine.observers, observer)
    async with manager:
        session = await manager.get_or_create("s1")
        holder.append(session)
        result = await session.send("what phase?")
        assert result.ok, result.error
        assert result.reply == "all done"
        assert seen == {"stream": "awaiting_llm", "tool": "awaiting_tools"}
        assert session.phase == "idle"
        visits = [r for r in result.trace if r.usage is not None]
        assert [r.node_id for r in visits] == ["llm_call", "llm_call"]
        stored = (await session.traces())[-1]
        rows = [dict(step) for step in stored.trace if "input_tokens" in step]
        assert [r["model"] for r in rows] == ["test-model", "test-model"]
    await llm.aclose()  # type: ignore[attr-defined]


async def test_the_session_is_idle_and_usable_after_each_failure(server: LLMServer) -> None:
    server.script(
        Fail(401, "bad key"),
        Fail(400, "bad request"),
        Cut(after=1),
        Cut(after=1),
        Cut(after=1),
        Reply(tokens=("fine",)),
    )
    llm = from_spec(f"{server.provider}:m", base_url=server.url)
    async with SessionManager("memory:", llm=llm) as manager:
        session = await manager.get_or_create("s2")
        for _ in range(3):  # 401; 400; a stream cut three times (max_retries=2)
            result = await session.send("hi")
            assert not result.ok
            assert session.phase == "idle"
        result = await session.send("again")
        assert result.ok and result.reply == "fine"
        history = [m.content for m in (await session.messages()).items]
        assert history == ["again", "fine"]  # failed turns left no partial reply
    await llm.aclose()  # type: ignore[attr-defined]


def test_sessions_show_lists_tokens_per_turn(server: LLMServer, tmp_path: Path) -> None:
    """A stored session's turns show their tokens in ``sessions show``."""
    server.script(Reply(tokens=("ok",), usage=(30, 2)))
    store = f"sqlite:///{tmp_path / 's.db'}"
    llm = ["--llm", f"{server.provider}:m", "--llm-base-url", server.url]
    turn = _cli(
        str(ROOT / "graphs" / "turn.dot"), "-m", "hi", "--session", "a", "--store", store, *llm
    )
    assert turn.returncode == 0, turn.stderr
    show = _cli("sessions", "--store", store, "show", "a")
    assert show.returncode == 0, show.stderr
    assert "tokens" in show.stdout and "30/2" in show.stdout


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "engine.run", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
