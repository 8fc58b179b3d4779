"""Human gates and retries on the command line: a turn paused by one process is
answered by another (``sessions answer``), ``sessions show`` says what waits, the chat
asks and reads the answer, ``sessions retry`` re-runs a failed turn; every refusal is
one line and exit 2."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from engine import run as cli
from tests.llm_servers import Fail, LLMServer, Reply

ROOT = Path(__file__).resolve().parent.parent

GATE = """digraph gate {
  start [shape=Mdiamond]; done [shape=Msquare]
  approve [shape=hexagon, question="Send the reply?"]
  send [handler=format, template="sent: {session.input}"]
  cancel [handler=format, template="cancelled"]
  start -> approve
  approve -> send [label=send]
  approve -> cancel [label=cancel]
  send -> done; cancel -> done
}
"""

TIMED = GATE.replace('"Send the reply?"', '"Send the reply?", timeout="200ms", default=cancel')
CHAINED = TIMED.replace(
    "approve -> cancel [label=cancel]",
    'approve -> confirm [label=cancel]; confirm [shape=hexagon, question="Really drop it?"]\n'
    "  confirm -> send [label=send]; confirm -> cancel [label=cancel]",
)
"""A timed gate whose default leads to a second gate, offering the same choices."""

FLAKY = """digraph flaky {
  start [shape=Mdiamond]; done [shape=Msquare]
  classify [handler=classify]
  llm_call [handler=llm_call]
  format [handler=format]
  start -> classify -> llm_call -> format -> done
}
"""


def program(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m engine.run ARGS`` in a process of its own, as a user runs it."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "TURNGRAPH_"))}
    return subprocess.run(
        [sys.executable, "-m", "engine.run", *args],
        cwd=ROOT,
        env={**clean, "PYTHONPATH": str(ROOT), "TURNGRAPH_HOME": str(home), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def gate(tmp_path: Path) -> Path:
    path = tmp_path / "gate.dot"
    path.write_text(GATE)
    return path


def test_a_pause_is_answered_by_another_process(tmp_path: Path, gate: Path) -> None:
    """Process 1 pauses (exit 0, the question printed); process 2 shows it and answers;
    unknown choices and missing questions are one line, exit 2."""
    store = ("--store", f"sqlite:///{tmp_path / 's.db'}")
    first = program(tmp_path, str(gate), "-m", "hello", "--session", "s1", *store)
    assert first.returncode == 0, first.stderr
    assert "waiting at node 'approve': Send the reply? [send / cancel]" in first.stdout
    assert "sessions answer s1 CHOICE" in first.stdout
    shown = program(tmp_path, "sessions", *store, "show", "s1", "--json")
    assert json.loads(shown.stdout)["question"] == {
        "turn": 1,
        "node": "approve",
        "question": "Send the reply?",
        "choices": ["send", "cancel"],
        "default": None,
        "deadline": None,
    }
    busy = program(tmp_path, str(gate), "-m", "more", "--session", "s1", *store)
    assert busy.returncode == 2 and busy.stderr.count("\n") == 1
    assert "a question is waiting at node 'approve'" in busy.stderr
    bad = program(tmp_path, "sessions", *store, "answer", "s1", "maybe", "--graph", str(gate))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == (
        "error: session 's1': node 'approve' has no choice 'maybe'; choose one of: send, cancel"
    )
    good = program(
        tmp_path, "sessions", *store, "answer", "s1", "send", "--graph", str(gate), "--json"
    )
    assert good.returncode == 0, good.stderr
    doc = json.loads(good.stdout)
    assert (doc["status"], doc["reply"], doc["turn"]) == ("success", "sent: hello", 1)
    again = program(tmp_path, "sessions", *store, "answer", "s1", "send", "--graph", str(gate))
    assert again.returncode == 2
    assert again.stderr.strip() == "error: session 's1': no question is waiting"


def test_answer_node_refuses_another_gates_question(tmp_path: Path) -> None:
    """``sessions answer --node``: refused in one line (exit 2, nothing run) when a gate
    other than the one named waits; answered when it is that gate."""
    chained = tmp_path / "chained.dot"
    chained.write_text(
        GATE.replace(
            "approve -> cancel [label=cancel]",
            'approve -> confirm [label=cancel]; confirm [shape=hexagon, question="Really?"]\n'
            "  confirm -> send [label=send]; confirm -> cancel [label=cancel]",
        )
    )
    store = ("--store", f"sqlite:///{tmp_path / 's.db'}")
    graph = ("--graph", str(chained))
    assert program(tmp_path, str(chained), "-m", "hi", "--session", "n1", *store).returncode == 0
    on = program(tmp_path, "sessions", *store, "answer", "n1", "cancel", *graph)
    assert on.returncode == 0 and "waiting at node 'confirm'" in on.stdout, on.stderr
    stale = program(
        tmp_path, "sessions", *store, "answer", "n1", "send", "--node", "approve", *graph
    )
    assert stale.returncode == 2 and "Traceback" not in stale.stderr
    assert stale.stderr.count("\n") == 1
    assert "the question waiting is at node 'confirm', not 'approve'" in stale.stderr
    good = program(
        tmp_path, "sessions", *store, "answer", "n1", "send", "--node", "confirm", *graph, "--json"
    )
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["reply"] == "sent: hi"


def test_the_chat_asks_and_reads_the_answer(
    tmp_path: Path, gate: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The question and its choices are printed; a wrong choice is refused and asked
    again; the right one finishes the turn."""
    lines = iter(["hello", "maybe", "send", "/quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    store = f"sqlite:///{tmp_path / 'chat.db'}"
    assert cli.main([str(gate), "--session", "c1", "--store", store]) == 0
    out, errors = capsys.readouterr()
    assert out.count("bot> Send the reply? [send / cancel]") == 2  # asked, then again
    assert "bot> sent: hello" in out
    assert "has no choice 'maybe'; choose one of: send, cancel" in errors


def _chat_answering_late(
    monkeypatch: pytest.MonkeyPatch, gate: Path, sid: str, db: Path, fired: Callable[[], bool]
) -> None:
    """A chat on ``gate`` that says "hello", types the answer "send" once ``fired()``
    (the gate's timer acted while the ``answer>`` prompt waited), then quits."""

    def late_answer() -> str:
        give_up = time.monotonic() + 60  # a hang guard, not a speed check
        while not fired():
            assert time.monotonic() < give_up, "the gate's timeout never fired"
            time.sleep(0.02)
        return "send"

    lines: Iterator[Callable[[], str]] = iter([lambda: "hello", late_answer, lambda: "/quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines)())
    assert cli.main([str(gate), "--session", sid, "--store", f"sqlite:///{db}"]) == 0


def test_a_timeout_while_the_chat_waits_takes_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The gate's timer fires while the ``answer>`` prompt waits: the turn goes on with
    the default and is stored; the answer typed after it is refused in one line, not
    sent as a new turn."""
    gate = tmp_path / "timed.dot"
    gate.write_text(TIMED)
    db = tmp_path / "chat.db"

    def stored_turns() -> int:
        with contextlib.closing(sqlite3.connect(db)) as con:
            row = con.execute("SELECT turn_count FROM sessions WHERE id = 'c2'").fetchone()
        return int(row[0]) if row else 0

    # The answer is typed once the timer's turn committed while the prompt waited.
    _chat_answering_late(monkeypatch, gate, "c2", db, lambda: stored_turns() > 0)
    out, errors = capsys.readouterr()
    assert "bot> Send the reply? [send / cancel]" in out
    assert "no question is waiting: the gate's timeout passed first" in errors
    assert "bot> cancelled" in out  # the reply of the turn the timer ran
    assert stored_turns() == 1 and "sent: send" not in out
    with contextlib.closing(sqlite3.connect(db)) as con:
        assert con.execute("SELECT message_count FROM sessions").fetchone()[0] == 2


def test_an_answer_typed_for_a_question_a_timeout_took_never_answers_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The gate's timer takes its default to a second gate while ``answer>`` waits:
    the line typed for the first question is refused, not taken as the answer to a
    question the user was never shown; the second question is asked."""
    gate = tmp_path / "chained.dot"
    gate.write_text(CHAINED)
    db = tmp_path / "chat.db"

    def waiting_at(node: str) -> bool:
        with contextlib.closing(sqlite3.connect(db)) as con:
            row = con.execute("SELECT body FROM checkpoints WHERE session_id = 'c3'").fetchone()
        return row is not None and json.loads(row[0])["checkpoint"]["next_node"] == node

    # The answer is typed once the timer's turn paused at the second gate.
    _chat_answering_late(monkeypatch, gate, "c3", db, lambda: waiting_at("confirm"))
    out, errors = capsys.readouterr()
    assert "bot> Send the reply? [send / cancel]" in out
    assert "the gate's timeout passed first" in errors
    assert "sent: hello" not in out and "bot> Really drop it? [send / cancel]" in out
    assert waiting_at("confirm")  # still waiting for an answer to the question shown


@pytest.fixture
def server() -> Iterator[LLMServer]:
    pytest.importorskip("openai")
    with LLMServer("openai") as s:
        yield s


def test_retry_re_runs_a_failed_turn_and_refuses_a_changed_graph(
    tmp_path: Path, server: LLMServer
) -> None:
    """With --checkpoint, a turn whose model call failed is retried from llm_call by
    another process; editing the graph first makes the retry a one-line refusal."""
    dot = tmp_path / "flaky.dot"
    dot.write_text(FLAKY)
    store = ("--store", f"sqlite:///{tmp_path / 'r.db'}")
    llm = ("--llm", "openai:m", "--llm-base-url", server.url)
    server.script(Fail(401, "bad key"), Reply(tokens=("fine",)), Fail(401, "bad key"))
    failed = program(
        tmp_path, str(dot), "-m", "hi", "--session", "r1", "--checkpoint", *store, *llm
    )
    assert failed.returncode == 1
    shown = program(tmp_path, "sessions", *store, "show", "r1", "--json")
    assert json.loads(shown.stdout)["retry"]["node"] == "llm_call"
    retried = program(
        tmp_path, "sessions", *store, "retry", "r1", "--graph", str(dot), "--json", *llm
    )
    assert retried.returncode == 0, retried.stderr
    doc = json.loads(retried.stdout)
    assert (doc["status"], doc["reply"], doc["turn"]) == ("success", "fine", 2)
    assert [n["id"] for n in doc["nodes"]] == ["llm_call", "format", "done"]

    again = program(tmp_path, str(dot), "-m", "x", "--session", "r1", "--checkpoint", *store, *llm)
    assert again.returncode == 1
    dot.write_text(FLAKY.replace("[handler=format]", "[handler=format, note=edited]"))
    refused = program(tmp_path, "sessions", *store, "retry", "r1", "--graph", str(dot), *llm)
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        "error: session 'r1': the turn graph changed since turn 3 failed (its fingerprint differs)"
    )
