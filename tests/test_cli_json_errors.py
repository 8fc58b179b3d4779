"""``--json`` when a command is refused before it has a turn to report: one JSON object on
stdout (a turn's keys, ``status`` ``"error"``), the same one line on stderr, a nonzero exit.

Every test runs the real program in a subprocess, as a script would.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.cli.common import JSON_KEYS
from tests.llm_servers import Hang, LLMServer

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 60.0  # seconds before a run gives up: a hang guard, not a speed check
SECRET = "s3cret-pw"


def _env(home: Path) -> dict[str, str]:
    """The environment of a run with its own data directory and no store set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TURNGRAPH_")}
    env.update(PYTHONPATH=str(ROOT), TURNGRAPH_HOME=str(home))
    return env


def program(
    home: Path, *args: str, stdin: bytes = b"", stdout: Any = subprocess.PIPE
) -> subprocess.CompletedProcess[bytes]:
    """``python -m engine.run ARGS`` with its own data directory and no store set."""
    return subprocess.run(
        [sys.executable, "-m", "engine.run", *args],
        cwd=ROOT,
        env=_env(home),
        input=stdin,
        stdout=stdout,
        stderr=subprocess.PIPE,
        timeout=LIMIT,
        check=False,
    )


def refused(proc: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    """The JSON object of a refused command, checked against its stderr line and exit."""
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    [out] = proc.stdout.decode().splitlines()  # one object, on one line
    doc: dict[str, Any] = json.loads(out)
    assert list(doc) == list(JSON_KEYS)
    assert doc["status"] == "error"
    assert doc["error"] == err.rstrip("\n")
    assert doc["reply"] is None and doc["nodes"] is None
    return doc


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A data directory of its own, with a store holding session ``s1`` (one turn)."""
    folder = tmp_path / "home"
    folder.mkdir()
    made = program(folder, "-m", "hi", "--session", "s1")
    assert made.returncode == 0, made.stderr
    return folder


@pytest.mark.parametrize(
    ("argv", "stdin", "kind", "fragment"),
    [
        (["-m", "hi", "--session", "bad id!"], b"", "InvalidSessionId", "session 'bad id!'"),
        (["-m", "a\x01b"], b"", "BadMessage", "-m: error: the message contains a control"),
        (["-m", "-"], b"\xff\xfe", "BadMessage", "standard input: error: the message is not"),
        (["missing.dot", "-m", "hi"], b"", "GraphFileError", "missing.dot: error: no such file"),
        (["--session", "s2"], b"", "UsageError", "--json needs -m TEXT"),
        (["-m", "hi", "--bogus"], b"", "UsageError", "unrecognized arguments: --bogus"),
    ],
    ids=["session-id", "control-char", "stdin-not-utf8", "missing-dot", "no-message", "usage"],
)
def test_a_refused_turn_prints_one_json_object(
    home: Path, argv: list[str], stdin: bytes, kind: str, fragment: str
) -> None:
    """Bad input to a turn: the error object on stdout, the line on stderr, exit 2."""
    doc = refused(program(home, *argv, "--json", stdin=stdin))
    assert doc["error_kind"] == kind
    assert fragment in doc["error"]


@pytest.mark.parametrize(
    ("text", "kind", "fragment"),
    [
        ("", "GraphFileError", "error: empty file"),
        ("digraph {\n  start -> \n}\n", "DotSyntaxError", ":2:"),
        ("digraph { start -> x -> done; x [handler=nope] }", "GraphValidationError", "'nope'"),
    ],
    ids=["empty", "syntax", "invalid"],
)
def test_a_broken_graph_is_a_json_error_naming_the_file(
    home: Path, tmp_path: Path, text: str, kind: str, fragment: str
) -> None:
    """An empty, malformed or invalid .dot, with or without a session: the error names
    the file (and line), as on stderr."""
    path = tmp_path / "broken.dot"
    path.write_text(text)
    for session in ([], ["--session", "s1"]):
        doc = refused(program(home, str(path), "-m", "hi", *session, "--json"))
        assert doc["error_kind"] == kind
        assert doc["error"].startswith(str(path)) and fragment in doc["error"]


def test_an_unreadable_graph_is_a_json_error(home: Path, tmp_path: Path) -> None:
    """A .dot that is a folder (it cannot be read by anyone, root included)."""
    folder = tmp_path / "folder.dot"
    folder.mkdir()
    doc = refused(program(home, str(folder), "-m", "hi", "--json"))
    assert str(folder) in doc["error"]


@pytest.mark.parametrize(
    "action",
    [["list"], ["show", "s1"], ["verify"], ["answer", "s1", "yes"], ["retry", "s1"]],
    ids=lambda a: a[0],
)
def test_every_sessions_action_with_json_reports_a_missing_store(
    home: Path, tmp_path: Path, action: list[str]
) -> None:
    """Each ``sessions`` action that takes ``--json`` prints the error object for a store
    that does not exist."""
    missing = tmp_path / "nowhere" / "x.db"
    doc = refused(program(home, "sessions", *action, "--json", "--store", f"sqlite:///{missing}"))
    assert doc["error_kind"] == "StoreError"
    assert f"no such store: {missing}" in doc["error"]


@pytest.mark.parametrize(
    "action", [["show", "nope"], ["answer", "nope", "yes"], ["verify", "nope"]]
)
def test_a_missing_session_is_a_json_error(home: Path, action: list[str]) -> None:
    """A session id the store does not hold: the object names the session."""
    doc = refused(program(home, "sessions", *action, "--json"))
    assert doc["error_kind"] == "SessionNotFound"
    assert "'nope'" in doc["error"]


def test_the_error_object_never_shows_a_password(home: Path) -> None:
    """A store URL's password is masked in the JSON object as it is on stderr."""
    url = f"postgresql://me:{SECRET}@127.0.0.1:1/test?connect_timeout=5"
    for argv in (["-m", "hi", "--session", "s1"], ["sessions", "list"]):
        proc = program(home, *argv, "--store", url, "--json")
        doc = refused(proc)
        assert SECRET not in proc.stdout.decode() + proc.stderr.decode()
        assert "me:***@" in doc["error"]


def test_without_json_stdout_stays_empty(home: Path) -> None:
    """The object is only for ``--json``: a refusal otherwise prints just its line."""
    proc = program(home, "-m", "hi", "--session", "bad id!")
    assert (proc.returncode, proc.stdout) == (2, b"")
    assert len(proc.stderr.decode().splitlines()) == 1


def test_a_closed_stdout_keeps_the_error_exit(home: Path) -> None:
    """A reader that has gone before the error object is written: the exit is still 2 (a
    closed pipe is quiet, but it does not turn a refusal into success)."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = program(home, "-m", "hi", "--session", "bad id!", "--json", stdout=write)
    finally:
        os.close(write)
    assert proc.returncode == 2
    assert len(proc.stderr.decode().splitlines()) == 1


def test_a_failed_turn_names_its_error_kind(home: Path, tmp_path: Path) -> None:
    """A turn that ran and failed at a node keeps its shape (status ``fail``, exit 1),
    and ``error_kind`` names the error's class as a refusal's does."""
    path = tmp_path / "failing.dot"
    path.write_text("digraph { start -> broken -> done; broken [handler=tool, tool=no_such_tool] }")
    proc = program(home, str(path), "-m", "hi", "--json")
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert (doc["status"], doc["error_kind"]) == ("fail", "HandlerError")
    assert list(doc) == list(JSON_KEYS)


def test_the_readme_shows_the_object_the_program_prints(home: Path) -> None:
    """README's example error object is what ``missing.dot -m hi --json`` prints."""
    readme = (ROOT / "README.md").read_text()
    [shown] = [b for b in re.findall(r"```json\n(.*?)```", readme, re.S) if '"error"' in b]
    assert refused(program(home, "missing.dot", "-m", "hi", "--json")) == json.loads(shown)


def _closed_stdout(home: Path, *argv: str) -> subprocess.CompletedProcess[bytes]:
    """The program with a standard output whose reader has already gone."""
    read, write = os.pipe()
    os.close(read)
    try:
        return program(home, *argv, stdout=write)
    finally:
        os.close(write)


def test_a_closed_stdout_keeps_a_failed_turns_exit(home: Path, tmp_path: Path) -> None:
    """A turn that failed at a node, its JSON object unread: still exit 1 (not 0), the
    failure line on stderr, no traceback; a failing ``validate`` likewise keeps 2."""
    path = tmp_path / "failing.dot"
    path.write_text("digraph { start -> broken -> done; broken [handler=tool, tool=no_such_tool] }")
    proc = _closed_stdout(home, str(path), "-m", "hi", "--json")
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.decode().count("\n") == 1 and "Traceback" not in proc.stderr.decode()
    invalid = tmp_path / "invalid.dot"
    invalid.write_text("digraph { start -> x -> done; x [handler=nope] }")
    proc = _closed_stdout(home, "validate", str(invalid))
    assert (proc.returncode, proc.stderr) == (2, b"")


@pytest.mark.parametrize(
    "argv",
    [
        ["--stroe", f"postgresql://me:{SECRET}@127.0.0.1:1/test"],
        ["--llm-base-urll", f"http://127.0.0.1:1/v1?api_key={SECRET}"],
        ["--dialect", f"x://me:{SECRET}@h"],
    ],
    ids=["unrecognized-store", "unrecognized-base-url-key", "invalid-choice"],
)
def test_an_argument_error_never_echoes_a_secret(
    home: Path, tmp_path: Path, argv: list[str]
) -> None:
    """argparse repeats what it could not use; a URL's password or key in it is masked
    on stderr and in the JSON object alike."""
    graph = tmp_path / "g.dot"
    graph.write_text("digraph { start -> done }")
    proc = program(home, str(graph), "-m", "hi", *argv, "--json")
    doc = refused(proc)
    assert SECRET not in proc.stdout.decode() + proc.stderr.decode()
    assert "***" in doc["error"] and doc["error_kind"] == "UsageError"


@pytest.mark.parametrize("word", ["--js", "--jso"])
def test_an_abbreviated_json_option_gets_the_error_object(home: Path, word: str) -> None:
    """argparse takes ``--js`` for ``--json``: a refusal then prints the object too."""
    doc = refused(program(home, "-m", "hi", "--session", "bad id!", word))
    assert doc["error_kind"] == "InvalidSessionId"


def test_json_after_double_dash_is_an_argument(home: Path) -> None:
    """``-- --json`` names a graph file called ``--json``: no JSON object."""
    proc = program(home, "-m", "hi", "--", "--json")
    assert (proc.returncode, proc.stdout) == (2, b"")
    assert "--json: error: no such file" in proc.stderr.decode()


@pytest.fixture
def slow_model() -> Iterator[LLMServer]:
    """A loopback OpenAI server whose first answer does not come before the test ends."""
    pytest.importorskip("openai")
    with LLMServer("openai") as server:
        yield server.script(Hang(LIMIT * 2))


@pytest.mark.parametrize("session", [[], ["--session", "s1"]], ids=["plain", "session"])
def test_ctrl_c_during_a_turn_prints_the_error_object(
    home: Path, slow_model: LLMServer, session: list[str]
) -> None:
    """SIGINT while the model thinks: exit 130, one line on stderr, and with ``--json``
    one object on stdout as for any other failure, ``error_kind`` naming the interrupt
    (it printed nothing at all)."""
    llm = ("--llm", "openai:m", "--llm-base-url", slow_model.url)
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.run", "-m", "hello", "--json", *llm, *session],
        cwd=ROOT,
        env=_env(home),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + LIMIT
        while not slow_model.requests:  # the turn is running: its model call has begun
            assert time.monotonic() < deadline and proc.poll() is None, "the model was never asked"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        out, errs = proc.communicate(timeout=LIMIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    interrupted(proc.returncode, out, errs, as_json=True)


def interrupted(code: int, out: bytes, errs: bytes, *, as_json: bool) -> None:
    """The report of a command ended by Ctrl-C: exit 130, the one stderr line, and with
    ``--json`` one error object naming the interrupt (else nothing on stdout)."""
    line = errs.decode()
    assert code == 130, line
    assert line == "error: interrupted\n"
    if not as_json:
        assert out == b""
        return
    [text] = out.decode().splitlines()
    doc = json.loads(text)
    assert list(doc) == list(JSON_KEYS)
    assert (doc["status"], doc["error_kind"]) == ("error", "KeyboardInterrupt")
    assert doc["error"] == line.rstrip("\n")
