"""``python -m engine.run --llm openai:...`` end to end against a loopback server: a
single turn (live text, usage in the table and in ``--json``), a chat on stdin, the
tool loop, failures as one line, and a missing SDK as exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.llm_servers import Cut, Fail, LLMServer, Reply

ROOT = Path(__file__).resolve().parent.parent
TURN = str(ROOT / "graphs" / "turn.dot")
TOOL_TURN = str(ROOT / "graphs" / "tool_turn.dot")
SECRET = "sk-test-secret-0123456789"


@pytest.fixture
def server() -> Iterator[LLMServer]:
    pytest.importorskip("openai")
    with LLMServer("openai") as s:
        yield s


def program(*args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m engine.run ARGS`` as a user would, with ``env`` added."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "ANTHROPIC_", "TURNGRAPH_LLM"))
    }
    return subprocess.run(
        [sys.executable, "-m", "engine.run", *args],
        cwd=ROOT,
        env={**clean, "PYTHONPATH": str(ROOT), "COLUMNS": "200", **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def llm(server: LLMServer) -> tuple[str, ...]:
    return ("--llm", "openai:cli-model", "--llm-base-url", server.url)


def test_one_turn_streams_the_reply_and_shows_usage(server: LLMServer) -> None:
    server.script(Reply(tokens=("Bonjour", " à", " tous"), usage=(40, 3), model="served"))
    proc = program(TURN, "-m", "hello", *llm(server))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "Bonjour à tous"
    assert "Bonjour à tous" not in "\n".join(lines[1:])  # printed once, as it streamed
    row = next(line for line in lines if " llm_call " in line)
    assert [c.strip() for c in row.split("│")][-3:-1] == ["served", "40/3"]
    total = next(line for line in lines if " total " in line)
    assert [c.strip() for c in total.split("│")][-3:-1] == ["served", "40/3"]
    assert proc.stderr == ""
    body = server.requests[0].body
    assert body["stream"] is True and body["model"] == "cli-model"
    assert body["messages"][-1] == {"role": "user", "content": "hello"}


def test_json_output_is_unchanged_but_for_usage(server: LLMServer) -> None:
    server.script(Reply(tokens=("a", "b"), usage=(7, 2), model="served"))
    proc = program(TURN, "-m", "hello", "--json", *llm(server))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["reply"] == "ab"
    assert doc["usage"]["input_tokens"] == 7 and doc["usage"]["output_tokens"] == 2
    assert doc["usage"]["models"] == ["served"]
    node = next(n for n in doc["nodes"] if n["id"] == "llm_call")
    assert (node["model"], node["input_tokens"], node["output_tokens"]) == ("served", 7, 2)
    assert "stream" not in server.requests[0].body  # nothing to print live


def test_chat_on_stdin_streams_each_turn_with_history(server: LLMServer) -> None:
    """The spec and the server come from the environment; the second turn sees the first."""
    server.script(Reply(tokens=("first", " answer")), Reply(tokens=("second",)))
    proc = program(
        TURN,
        stdin="one\ntwo\n",
        TURNGRAPH_LLM="openai:env-model",
        OPENAI_BASE_URL=server.url,
    )
    assert proc.returncode == 0, proc.stderr
    assert "bot> first answer\n" in proc.stdout
    assert "bot> second\n" in proc.stdout
    assert server.requests[0].body["model"] == "env-model"
    second = [m["content"] for m in server.requests[1].body["messages"]]
    assert "one" in second and "first answer" in second and second[-1] == "two"


def test_the_tool_loop_from_the_command_line(server: LLMServer) -> None:
    calls = (("c1", "calculator", '{"expression": "2*21"}'),)
    server.script(Reply(tokens=(), tool_calls=calls), Reply(tokens=("It", " is 42.")))
    proc = program(TOOL_TURN, "-m", "what is 2*21?", *llm(server))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "It is 42."
    assert '[tool] calculator {"expression": "2*21"}' in proc.stderr
    assert "[tool] calculator result: 42" in proc.stderr
    tool_msg = server.requests[1].body["messages"][-1]
    assert tool_msg == {"role": "tool", "tool_call_id": "c1", "content": "42"}


def test_a_cut_stream_is_retried_and_says_so(server: LLMServer) -> None:
    server.script(Cut(Reply(tokens=("half", "way", "!")), after=2), Reply(tokens=("whole",)))
    proc = program(TURN, "-m", "hello", *llm(server))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[:2] == ["halfway", "whole"]
    assert "the reply so far is void" in proc.stderr and "StreamInterrupted" in proc.stderr


def test_an_auth_failure_is_one_line_without_the_key(server: LLMServer) -> None:
    server.script(Fail(401, f"Incorrect API key provided: {SECRET}"))
    proc = program(TURN, "-m", "hello", *llm(server), OPENAI_API_KEY=SECRET)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert len(lines) == 1
    assert "HTTP 401" in lines[0] and "check OPENAI_API_KEY" in lines[0]
    assert f"127.0.0.1:{server.port}" in lines[0] and "llm_call" in lines[0]
    assert SECRET not in proc.stdout + proc.stderr


def test_a_missing_sdk_is_one_line_and_exit_2() -> None:
    code = (
        "import sys; sys.modules['openai'] = None; "
        "from engine.cli.main import main; "
        f"sys.exit(main([{TURN!r}, '-m', 'hi', '--llm', 'openai:gpt-4.1-mini']))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "error: openai: the openai SDK is not installed: pip install 'turngraph[openai]'"
    ]


def test_a_bad_spec_is_exit_2() -> None:
    proc = program(TURN, "-m", "hi", "--llm", "gpt-4")
    assert proc.returncode == 2
    assert "unknown provider 'gpt-4'" in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_sessions_compact_summarises_with_the_chosen_model(
    server: LLMServer, tmp_path: Path
) -> None:
    """``sessions compact --llm`` asks the model for the summary (it had no --llm and
    always used the offline extract, whatever model the chat had used)."""
    store = f"sqlite:///{tmp_path / 's.db'}"
    server.default = Reply(tokens=("fine",))
    for i in range(6):
        proc = program(TURN, "-m", f"message number {i}", "--session", "c1", "--store", store)
        assert proc.returncode == 0, proc.stderr
    server.default = Reply(tokens=("A short summary.",))
    proc = program("sessions", "compact", "c1", "--store", store, *llm(server))
    assert proc.returncode == 0, proc.stderr
    assert "c1: compacted 4 messages" in proc.stdout
    prompt = server.requests[-1].body["messages"][-1]["content"]
    assert "message number 0" in prompt and server.requests[-1].body["model"] == "cli-model"
    proc = program("sessions", "show", "c1", "--store", store, "--json")
    assert "A short summary." in proc.stdout
