"""``python -m engine.run``: one turn, chat, validate, render, and every kind of bad input.

Most tests call ``engine.run.main(argv)`` in-process; a few run the real program in a
subprocess to see exactly what a user sees (exit code, stdout, stderr).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

import handlers
from engine import load_graph
from engine import run as cli
from handlers import build_registry
from handlers.adapters import LLMResponse, ToolSpec

ROOT = Path(__file__).resolve().parent.parent
TURN = str(ROOT / "graphs" / "turn.dot")
TOOL_TURN = str(ROOT / "graphs" / "tool_turn.dot")
ISSUE_LINE = re.compile(r"^.+:\d+:\d+: (error|warning): .+$")

VALID = """digraph ok {
    start [shape=Mdiamond]
    done [shape=Msquare]
    format [handler=format, reply="fixed"]
    start -> format -> done
}
"""
FAILING = """digraph fails {
    start [shape=Mdiamond]
    done [shape=Msquare]
    broken [handler=tool, tool=no_such_tool]
    start -> broken -> done
}
"""
INVALID = """digraph bad {
    start [shape=Mdiamond]
    work [handler=no_such_handler]
    done [shape=Msquare]
    start -> work -> done
    work -> done [condition="outcome=="]
}
"""
WARNS = """digraph warns {
    start [shape=Mdiamond]
    done [shape=Msquare]
    gate [handler=conditional]
    start -> gate
    gate -> done [condition="outcome=success"]
}
"""


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A folder of good and bad graph files."""
    (tmp_path / "valid.dot").write_text(VALID)
    (tmp_path / "failing.dot").write_text(FAILING)
    (tmp_path / "invalid.dot").write_text(INVALID)
    (tmp_path / "warns.dot").write_text(WARNS)
    (tmp_path / "empty.dot").write_text("")
    (tmp_path / "blank.dot").write_text("  \n\n")
    (tmp_path / "binary.dot").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    (tmp_path / "latin1.dot").write_bytes(b'digraph g { a [label="caf\xe9"] }')
    (tmp_path / "undirected.dot").write_text("graph g { start -- done }")
    (tmp_path / "syntax.dot").write_text("digraph g {\n  start [shape=Mdiamond]\n  start -> \n}\n")
    (tmp_path / "folder.dot").mkdir()
    return tmp_path


def program(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run ``python -m engine.run ARGS`` as a user would."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "engine.run", *args],
        cwd=ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# --------------------------------------------------------------------------- one turn


def test_one_turn_prints_reply_and_node_table(capsys: pytest.CaptureFixture[str]) -> None:
    """The reply comes first, then a table naming every node visited."""
    assert cli.main([TURN, "-m", "hello"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "echo: hello"
    for name in ("classify", "recall", "llm_call", "format", "update_memory", "done"):
        assert name in out
    assert "attempts" in out


def test_a_wide_node_table_names_the_keys_each_visit_changed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a wide terminal a ``changed`` column lists each visit's written keys; on an
    80-column one it gives way, so node, status and timing columns keep their room."""
    monkeypatch.setenv("COLUMNS", "160")
    assert cli.main([TURN, "-m", "hello"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "changed" in lines[2] + lines[3]
    row = next(line for line in lines if " format " in line)
    assert [c.strip() for c in row.split("│")][-4] == "reply"
    monkeypatch.setenv("COLUMNS", "80")
    assert cli.main([TURN, "-m", "hello"]) == 0
    out = capsys.readouterr().out
    assert "attempts" in out and "changed" not in out


def test_one_turn_json(capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints one object: status, reply, and each node's id/handler/status/attempts/ms."""
    assert cli.main([TOOL_TURN, "-m", "/tool calculator 2+3", "--json"]) == 0
    out = capsys.readouterr().out
    doc = json.loads(out)
    assert out.count("\n") == 1
    assert doc["status"] == "success"
    assert doc["reply"] == "echo: 5"
    assert [n["id"] for n in doc["nodes"]].count("llm_call") == 2
    for n in doc["nodes"]:
        assert set(n) >= {"id", "handler", "status", "attempts", "duration_ms"}
        assert n["status"] == "success"
        assert n["attempts"] == 1
    assert doc["usage"]["input_tokens"] > 0


def test_a_turn_with_parallel_branches_shows_each_visits_branch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The node table gains a ``branch`` column; --json rows carry ``branch``."""
    graph = tmp_path / "fanned.dot"
    graph.write_text("""digraph fanned {
        start [shape=Mdiamond]; fan [shape=component]; done [shape=Msquare]
        join [shape=tripleoctagon merge=last_writer]
        start -> fan; fan -> classify -> join; fan -> recall -> join
        join -> llm_call -> format -> done
    }""")
    assert cli.main([str(graph), "-m", "hello"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "echo: hello"
    header = next(line for line in out.splitlines() if "handler" in line)
    assert re.search(r"node\s+.\s+branch\s+.\s+handler", header)
    assert re.search(r"classify\s+.\s+classify\s+.\s+classify", out)
    assert cli.main([str(graph), "-m", "hello", "--json"]) == 0
    nodes = json.loads(capsys.readouterr().out)["nodes"]
    assert [(n["id"], n.get("branch")) for n in nodes][1:4] == [
        ("fan", None),
        ("classify", "classify"),
        ("recall", "recall"),
    ]


def test_failing_run_exits_1_with_one_line(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A run that fails at a node: JSON says fail, stderr names the node's line, exit 1."""
    path = str(files / "failing.dot")
    assert cli.main([path, "-m", "hi", "--json"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["status"] == "fail"
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"{path}:4:5: error: node 'broken'")
    assert "unknown tool 'no_such_tool'" in lines[0]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("missing.dot", "missing.dot: error: "),
        ("folder.dot", "folder.dot: error: "),
        ("empty.dot", "empty.dot: error: "),
        ("blank.dot", "blank.dot: error: "),
        ("binary.dot", "binary.dot: error: "),
        ("latin1.dot", "latin1.dot"),
        ("undirected.dot", "undirected.dot:1:1: error: an undirected 'graph'"),
        ("syntax.dot", "syntax.dot:3:"),
        ("invalid.dot", "invalid.dot:3:"),
    ],
)
def test_bad_graph_input_is_one_line_exit_2(
    files: Path, capsys: pytest.CaptureFixture[str], name: str, expected: str
) -> None:
    """Every kind of bad graph file: exit 2, nothing on stdout, one stderr line naming it."""
    path = str(files / name)
    assert cli.main([path, "-m", "hi"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(str(files / expected))
    assert "error" in lines[0]
    assert "Traceback" not in captured.err


def test_bad_input_as_a_user_sees_it(files: Path) -> None:
    """The real program: exit 2, one line, no traceback, for syntax and file errors."""
    for name in ("syntax.dot", "binary.dot", "missing.dot"):
        proc = program(str(files / name), "-m", "hi")
        assert proc.returncode == 2
        assert proc.stdout == ""
        assert len(proc.stderr.splitlines()) == 1
        assert "Traceback" not in proc.stderr


def test_dot_text_argument_is_still_a_path(capsys: pytest.CaptureFixture[str]) -> None:
    """An argument containing '{' is not silently parsed as DOT text."""
    assert cli.main(["digraph { a -> b }", "-m", "hi"]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["-m", "hi"], ["validate"], ["render"]])
def test_a_graph_file_with_a_brace_in_its_name_is_read_as_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    """``turn{1}.dot`` exists: run, validate and render read it, not its name as DOT text."""
    path = tmp_path / "turn{1}.dot"
    shutil.copy(TURN, path)
    argv = [str(path), *command] if command[0] == "-m" else [*command, str(path)]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert {"-m": "echo: hi", "validate": "ok (", "render": 'digraph "turn"'}[command[0]] in out


@pytest.mark.parametrize(
    "argv",
    [[], [TURN, "--json"], [TURN, "-m"], [TURN, "--bogus"], ["render"], ["validate"]],
)
def test_usage_errors_are_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """Bad arguments: exit 2 and a single line pointing at --help."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert "error:" in err
    assert "--help" in err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    """--help is not an error."""
    assert cli.main(["--help"]) == 0
    assert "usage:" in capsys.readouterr().out


def test_internal_errors_are_one_line_exit_70(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bug of ours still prints one line, no traceback."""

    def broken_registry() -> None:
        raise RuntimeError("kaboom")

    monkeypatch.setattr("handlers.build_registry", broken_registry)
    assert cli.main([TURN, "-m", "hi"]) == 70
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "error: internal error: RuntimeError: kaboom (rerun with -v for details)"
    ]


# --------------------------------------------------------------------------- chat


def test_chat_runs_a_turn_per_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each line is a turn (`//` sends a line that starts with `/`); blank lines are
    skipped; /quit leaves with exit 0."""
    lines = iter(["hello", "  ", "//tool calculator 1+1", "/quit", "never read"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert cli.main([TOOL_TURN]) == 0
    out = capsys.readouterr().out
    assert "bot> echo: hello" in out
    assert "bot> echo: 2" in out
    assert next(lines) == "never read"


class CountingModel:
    """An LLM adapter that answers with how many messages it was sent."""

    async def complete(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        system: str | None = None,
        tools: Sequence[ToolSpec] | None = None,
        max_tokens: int | None = None,
    ) -> LLMResponse:
        return LLMResponse(text=f"saw {len(messages)} messages")


def test_chat_keeps_history_between_turns(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each chat turn sees the earlier exchanges (an in-memory session's history)."""
    real = handlers.build_registry
    monkeypatch.setattr(
        "handlers.build_registry", lambda **kw: real(**{**kw, "llm": CountingModel()})
    )
    lines = iter(["one", "two", "three"])

    def fake_input(prompt: str = "") -> str:
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", fake_input)
    assert cli.main([TURN]) == 0
    out = capsys.readouterr().out
    assert "bot> saw 1 messages" in out
    assert "bot> saw 3 messages" in out
    assert "bot> saw 5 messages" in out


def test_chat_interrupt_exits_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C twice in a row at the prompt leaves quietly with 130."""

    def interrupt(prompt: str = "") -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr("builtins.input", interrupt)
    assert cli.main([TURN]) == 130
    assert "Traceback" not in capsys.readouterr().err


def test_chat_as_a_user_sees_it() -> None:
    """The real program reads stdin until EOF, one reply per line."""
    proc = program(TURN, stdin="hi there\nsecond\n")
    assert proc.returncode == 0
    assert "bot> echo: hi there" in proc.stdout
    assert "bot> echo: second" in proc.stdout


def test_verbose_logs_nodes_on_stderr() -> None:
    """-v: structlog node events on stderr; stdout keeps the clean JSON."""
    proc = program(TURN, "-m", "hi", "--json", "-v")
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["reply"] == "echo: hi"
    assert "llm_call" in proc.stderr
    assert "node" in proc.stderr


# --------------------------------------------------------------------------- validate


def test_validate_valid_graphs(capsys: pytest.CaptureFixture[str]) -> None:
    """Valid graphs: one ok line each, exit 0."""
    assert cli.main(["validate", TURN, TOOL_TURN]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{TURN}: ok (8 nodes, 8 edges)", f"{TOOL_TURN}: ok (9 nodes, 10 edges)"]


def test_validate_prints_every_problem(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every issue of every file as path:line:col: severity: message; exit 2."""
    argv = ["validate", str(files / "invalid.dot"), str(files / "syntax.dot"), TURN]
    assert cli.main(argv) == 2
    out = capsys.readouterr().out.splitlines()
    problems = [line for line in out if not line.endswith(")")]
    assert all(ISSUE_LINE.match(line) for line in problems), problems
    assert any("unknown handler 'no_such_handler'" in line for line in problems)
    assert any("outcome==" in line for line in problems)
    assert any(line.startswith(f"{files / 'syntax.dot'}:3:") for line in problems)
    assert out[-1] == f"{TURN}: ok (8 nodes, 8 edges)"


def test_validate_warnings_do_not_fail(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Warnings are printed in the same format, and the exit code stays 0."""
    path = str(files / "warns.dot")
    assert cli.main(["validate", path]) == 0
    out = capsys.readouterr().out.splitlines()
    assert ISSUE_LINE.match(out[0])
    assert ": warning: " in out[0]
    assert out[-1].startswith(f"{path}: ok")


def test_validate_file_errors(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Missing and binary files are errors too, one line each."""
    assert cli.main(["validate", str(files / "missing.dot"), str(files / "binary.dot")]) == 2
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2
    assert all(": error: " in line for line in out)


# --------------------------------------------------------------------------- render


def test_render_dot_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The normalised DOT shows handlers and conditions and loads back to the same routes."""
    out = tmp_path / "turn.out.dot"
    assert cli.main(["render", TURN, "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    text = out.read_text()
    assert "[llm_call]" in text
    assert "if context.input.blocked=true || context.input.empty=true" in text
    registry = build_registry()
    original, again = load_graph(TURN, registry=registry), load_graph(str(out), registry=registry)
    assert again.nodes.keys() == original.nodes.keys()
    assert [n.handler for n in again.nodes.values()] == [n.handler for n in original.nodes.values()]
    assert again.nodes["llm_call"].retry == original.nodes["llm_call"].retry
    assert again.nodes["llm_call"].timeout == original.nodes["llm_call"].timeout

    def routes(g: object) -> list[tuple[str, str, str | None, str]]:
        return [
            (
                e.src,
                e.dst,
                e.condition.source if e.condition else None,
                e.label if not e.condition else "",
            )
            for e in g.edges  # type: ignore[attr-defined]
        ]

    assert routes(again) == routes(original)
    assert not list(tmp_path.glob(".render-*"))


def test_render_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    """Without -o the DOT goes to stdout."""
    assert cli.main(["render", TOOL_TURN]) == 0
    out = capsys.readouterr().out
    assert out.startswith("// normalised by turngraph")
    assert '"llm_call" -> "dispatch_tools"' in out


def test_render_image_without_graphviz(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """.svg without Graphviz's dot: one clear line, exit 2, no file left behind."""
    monkeypatch.setattr("shutil.which", lambda name: None)
    out = tmp_path / "turn.svg"
    assert cli.main(["render", TURN, "-o", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert "Graphviz" in err[0]
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_render_svg_with_graphviz(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With Graphviz installed, .svg output is an SVG drawing of the graph."""
    out = tmp_path / "turn.svg"
    assert cli.main(["render", TURN, "-o", str(out)]) == 0
    svg = out.read_text()
    assert "<svg" in svg
    assert "llm_call" in svg
    capsys.readouterr()


def test_render_unknown_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown extension is a usage error."""
    assert cli.main(["render", TURN, "-o", str(tmp_path / "x.jpeg")]) == 2
    assert "unknown output format" in capsys.readouterr().err


# --------------------------------------------------------------------------- sessions


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A SQLite store URL in tmp_path; the data dir and key live there too."""
    monkeypatch.setenv("TURNGRAPH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TURNGRAPH_SECRET", "cli-test-secret")
    monkeypatch.delenv("TURNGRAPH_STORE", raising=False)
    return f"sqlite:///{tmp_path / 'sessions.db'}"


def turn_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    """Run one session turn with --json and return the parsed output."""
    assert cli.main([TURN, *argv, "--json"]) == 0
    doc: dict[str, Any] = json.loads(capsys.readouterr().out)
    return doc


def one_error(capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str) -> None:
    """``argv`` fails with exit 2 and a single stderr line containing ``fragment``."""
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert fragment in lines[0]
    assert "Traceback" not in captured.err


def test_session_turns_continue_a_stored_conversation(
    store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--session: turns are numbered across runs; --json carries session_id and turn."""
    first = turn_json(capsys, "-m", "hello", "--session", "s1", "--store", store)
    second = turn_json(capsys, "-m", "again", "--session", "s1", "--store", store)
    assert (first["session_id"], first["turn"], first["reply"]) == ("s1", 1, "echo: hello")
    assert (second["turn"], second["status"]) == (2, "success")
    assert [n["id"] for n in second["nodes"]][-1] == "done"
    assert cli.main(["sessions", "--store", store, "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(s["id"], s["turns"], s["messages"]) for s in listed] == [("s1", 2, 4)]
    # Without --json the table title says which session and turn this was.
    assert cli.main([TURN, "-m", "third", "--session", "s1", "--store", store]) == 0
    assert "session s1 · turn 3 ·" in capsys.readouterr().out


def test_sessions_show_verifies_and_lists(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    """show: metadata, messages and turns, after verifying the HMAC chain."""
    turn_json(capsys, "-m", "tea please", "--session", "s2", "--store", store)
    assert cli.main(["sessions", "show", "s2", "--store", store, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["verified_records"] > 0
    assert [m["content"] for m in doc["messages_shown"]] == ["tea please", "echo: tea please"]
    assert doc["turns_shown"][0]["status"] == "success"
    assert cli.main(["sessions", "show", "s2", "--store", store]) == 0
    out = capsys.readouterr().out
    assert "records verified" in out
    assert "echo: tea please" in out


def test_sessions_export_delete_import(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A session survives export → delete → import; repeats are clear errors."""
    turn_json(capsys, "-m", "keep me", "--session", "s3", "--store", store)
    export = tmp_path / "s3.json"
    assert cli.main(["sessions", "export", "s3", "-o", str(export), "--store", store]) == 0
    assert json.loads(export.read_text())
    assert cli.main(["sessions", "delete", "s3", "--store", store]) == 0
    capsys.readouterr()
    one_error(capsys, ["sessions", "delete", "s3", "--store", store], "no such session")
    one_error(capsys, ["sessions", "show", "s3", "--store", store], "s3")
    assert cli.main(["sessions", "import", str(export), "--store", store]) == 0
    assert "imported session s3 (1 turns, 2 messages)" in capsys.readouterr().out
    one_error(capsys, ["sessions", "import", str(export), "--store", store], "already exists")
    # The hint names the CLI's flag, not only the Python keyword.
    one_error(capsys, ["sessions", "import", str(export), "--store", store], "--replace")
    assert cli.main(["sessions", "import", str(export), "--replace", "--store", store]) == 0
    capsys.readouterr()


def test_sessions_reject_bad_input(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad ids, missing sessions, junk exports and junk stores: one line, exit 2."""
    one_error(capsys, ["sessions", "show", "../etc", "--store", store], "../etc")
    one_error(capsys, [TURN, "-m", "x", "--session", "a/b", "--store", store], "a/b")
    one_error(capsys, ["sessions", "compact", "ghost", "--store", store], "no such store")
    turn_json(capsys, "-m", "hi", "--session", "s0", "--store", store)
    one_error(capsys, ["sessions", "compact", "ghost", "--store", store], "ghost")
    truncated = tmp_path / "cut.json"
    truncated.write_text('{"format": "turngraph')
    one_error(capsys, ["sessions", "import", str(truncated), "--store", store], "not valid JSON")
    forged = tmp_path / "forged.json"
    forged.write_text('{"format": "turngraph-session", "signature": "00"}')
    assert cli.main(["sessions", "import", str(forged), "--store", store]) == 2
    capsys.readouterr()
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"\x00garbage" * 100)
    one_error(capsys, ["sessions", "list", "--store", f"sqlite:///{junk}"], "junk.db")
    one_error(capsys, ["sessions", "list", "--store", "nosuch://x"], "unknown store URL")
    one_error(capsys, [TURN, "--store", store], "--store needs --session")


def test_tampered_session_is_refused(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    """An edited record fails verification for show and for a new turn alike."""
    import sqlite3

    turn_json(capsys, "-m", "my secret is 42", "--session", "s4", "--store", store)
    db = sqlite3.connect(store.removeprefix("sqlite:///"))
    with db:
        db.execute("UPDATE records SET body = replace(body, '42', '41') WHERE session_id = 's4'")
    db.close()
    one_error(capsys, ["sessions", "show", "s4", "--store", store], "s4")
    one_error(capsys, [TURN, "-m", "hi", "--session", "s4", "--store", store], "s4")


def test_read_only_actions_never_create_a_store(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A mistyped SQLite path is "no such store" for list/show/export/delete/compact,
    creating neither folders nor a database; a turn (a write) refuses the missing folder
    and creates the database once the folder exists."""
    missing = tmp_path / "nonexist" / "dir" / "x.db"
    url = f"sqlite:///{missing}"
    for argv in (
        ["list"],
        ["list", "--json"],
        ["show", "s1"],
        ["export", "s1", "-o", "-"],
        ["delete", "s1"],
        ["compact", "s1"],
    ):
        one_error(capsys, ["sessions", *argv, "--store", url], f"no such store: {missing}")
    assert not (tmp_path / "nonexist").exists()
    one_error(capsys, [TURN, "-m", "hi", "--session", "s1", "--store", url], "does not exist")
    assert not (tmp_path / "nonexist").exists()
    missing.parent.mkdir(parents=True)
    turn_json(capsys, "-m", "hi", "--session", "s1", "--store", url)
    assert missing.is_file()
    assert cli.main(["sessions", "list", "--json", "--store", url]) == 0
    assert [s["id"] for s in json.loads(capsys.readouterr().out)] == ["s1"]


def test_sessions_list_survives_a_tampered_session(
    store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """list still lists every session, flagging the tampered one (and warning on
    stderr); show of that one is refused in one line."""
    import sqlite3

    for sid in ("s1", "s2", "s3"):
        turn_json(capsys, "-m", "hi", "--session", sid, "--store", store)
    db = sqlite3.connect(store.removeprefix("sqlite:///"))
    with db:
        db.execute("UPDATE sessions SET turn_count = 7 WHERE id = 's2'")
    db.close()
    assert cli.main(["sessions", "list", "--json", "--store", store]) == 0
    captured = capsys.readouterr()
    listed = json.loads(captured.out)
    assert [(s["id"], s["tampered"]) for s in listed] == [
        ("s1", False),
        ("s2", True),
        ("s3", False),
    ]
    assert listed[0]["turns"] == 1 and "turns" not in listed[1]
    [warning] = captured.err.splitlines()
    assert "s2" in warning and "tampered" in warning
    assert cli.main(["sessions", "list", "--store", store]) == 0
    captured = capsys.readouterr()
    assert "s2 (TAMPERED)" in captured.out and "s3" in captured.out
    one_error(capsys, ["sessions", "show", "s2", "--store", store], "MAC mismatch")


def test_sessions_list_pages_by_after_and_filters_by_agent(
    store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``list --limit N`` says on stderr the ``--after`` that continues; following it
    walks every session once; ``--agent``/``--type`` list only theirs; a bad type is one
    line, exit 2."""
    import anyio

    from sessions.store import open_store
    from sessions.store.base import SessionMeta

    async def seed() -> None:
        async with open_store(store) as s:
            for i in range(7):
                await s.create(SessionMeta(f"s{i}", agent_id="rare" if i in (1, 5) else "bot"))

    anyio.run(seed)
    seen: list[str] = []
    base = ["sessions", "list", "--json", "--limit", "3", "--store", store]
    argv = base
    while True:
        assert cli.main(argv) == 0
        captured = capsys.readouterr()
        seen += [s["id"] for s in json.loads(captured.out)]
        more = re.search(r"--after=(\S+)", captured.err)
        if more is None:
            assert captured.err == ""
            break
        argv = [*base, "--after", more.group(1)]
    assert seen == [f"s{i}" for i in range(7)]
    assert cli.main(["sessions", "list", "--json", "--agent", "rare", "--store", store]) == 0
    assert [s["id"] for s in json.loads(capsys.readouterr().out)] == ["s1", "s5"]
    assert cli.main(["sessions", "list", "--json", "--type", "background", "--store", store]) == 0
    assert json.loads(capsys.readouterr().out) == []
    one_error(capsys, ["sessions", "list", "--type", "nope", "--store", store], "--type")


def test_sessions_list_survives_rows_of_the_wrong_type_or_encoding(
    store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rows edited so that they cannot even be decoded (a MAC stored as text, a text
    column holding invalid UTF-8) are listed as tampered among the others; exit 0."""
    import sqlite3

    for sid in ("s1", "s2", "s3", "s4"):
        turn_json(capsys, "-m", "hi", "--session", sid, "--store", store)
    db = sqlite3.connect(store.removeprefix("sqlite:///"))
    with db:
        db.execute("UPDATE sessions SET state_mac = hex(state_mac) WHERE id = 's2'")
        db.execute("UPDATE sessions SET goals = CAST(goals AS BLOB) || X'FF' WHERE id = 's3'")
    db.close()
    assert cli.main(["sessions", "list", "--json", "--store", store]) == 0
    captured = capsys.readouterr()
    listed = [(s["id"], s["tampered"]) for s in json.loads(captured.out)]
    assert listed == [("s1", False), ("s2", True), ("s3", True), ("s4", False)]
    [warning] = captured.err.splitlines()
    assert "s2, s3" in warning
    one_error(capsys, ["sessions", "show", "s3", "--store", store], "UTF-8")
    one_error(capsys, ["sessions", "show", "s2", "--store", store], "state_mac is str")


def test_unreachable_postgres_is_one_line(
    store: str, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """A refused PostgreSQL connection is one line with the real reason (and no
    password), for a read and for a turn alike; nothing else is logged."""
    url = "postgresql://postgres:hunter2@127.0.0.1:1/test"
    for argv in (
        ["sessions", "list", "--store", url],
        [TURN, "-m", "hi", "--session", "s1", "--store", url],
    ):
        assert cli.main(argv) == 2
        captured = capsys.readouterr()
        [line] = captured.err.splitlines()
        assert "refused" in line.lower() and "127.0.0.1:1" in line
        assert "hunter2" not in line and "Traceback" not in captured.err
    assert [r for r in caplog.records if r.name.startswith("psycopg")] == []


def test_sessions_compact_short_session(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Compacting a session with little history is a no-op, said plainly."""
    turn_json(capsys, "-m", "short", "--session", "s5", "--store", store)
    assert cli.main(["sessions", "compact", "s5", "--store", store]) == 0
    assert "session s5: nothing compacted (" in capsys.readouterr().out


def test_default_store_is_in_the_data_dir(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --store or $TURNGRAPH_STORE the SQLite file lives under $TURNGRAPH_HOME."""
    turn_json(capsys, "-m", "hi", "--session", "s6")
    assert (tmp_path / "home" / "turngraph.db").is_file()
    assert cli.main(["sessions", "list", "--json"]) == 0
    assert [s["id"] for s in json.loads(capsys.readouterr().out)] == ["s6"]


def test_export_to_stdout_and_missing_folder(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``-o -`` prints the signed document; a missing output folder is one clear line."""
    turn_json(capsys, "-m", "hi", "--session", "s7", "--store", store)
    assert cli.main(["sessions", "export", "s7", "-o", "-", "--store", store]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["meta"]["id"] == "s7"
    missing = str(tmp_path / "nowhere" / "s7.json")
    one_error(capsys, ["sessions", "export", "s7", "-o", missing, "--store", store], "nowhere")
    one_error(capsys, ["render", TURN, "-o", str(tmp_path / "nowhere" / "t.dot")], "nowhere")


def test_sessions_compact_summarises_old_turns(
    store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Past the recent turns kept verbatim, compaction summarises the older messages."""
    for i in range(6):
        turn_json(capsys, "-m", f"message number {i}", "--session", "s8", "--store", store)
    assert cli.main(["sessions", "compact", "s8", "--store", store]) == 0
    assert "s8: compacted 4 messages" in capsys.readouterr().out
    assert cli.main(["sessions", "show", "s8", "--store", store, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["turns"] == 6


def test_rendered_file_gets_the_usual_permissions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The atomic temp file is private, but the result has the mode the umask gives."""
    out = tmp_path / "turn.dot"
    old = os.umask(0o022)
    try:
        assert cli.main(["render", TURN, "-o", str(out)]) == 0
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o644


def test_sessions_list_on_a_fresh_install_is_empty_not_an_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No store named and the default one not created yet: 'no sessions yet', exit 0."""
    assert cli.main(["sessions", "list"]) == 0
    assert capsys.readouterr().out.strip() == "no sessions yet"
    assert cli.main(["sessions", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    home = os.environ["TURNGRAPH_HOME"]
    assert not os.path.exists(os.path.join(home, "turngraph.db"))
