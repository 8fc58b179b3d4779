"""The chat as a user meets it at a terminal, and ``-m`` as a script meets it.

Interactive tests run the real program on a real pseudo-terminal (``os.openpty``, the
child's controlling terminal, so Ctrl-C is the terminal's SIGINT); the store is real
SQLite in a temporary ``$TURNGRAPH_HOME``; a slow model is the loopback OpenAI server
of :mod:`tests.llm_servers`.  Nothing here measures time: waits are for output, with a
generous limit that only stops a hung test.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import sqlite3
import stat
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.llm_servers import Hang, LLMServer, Reply

ROOT = Path(__file__).resolve().parent.parent
TURN = str(ROOT / "graphs" / "turn.dot")
LIMIT = 60.0  # seconds before a wait gives up: a hang guard, not a speed check

# Makes the pseudo-terminal the child's controlling terminal, then becomes the program.
_LAUNCH = (
    "import fcntl, os, sys, termios\n"
    "fcntl.ioctl(0, termios.TIOCSCTTY, 0)\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'engine.run', *sys.argv[1:]])\n"
)


def _env(home: Path, **extra: str) -> dict[str, str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "ANTHROPIC_", "TURNGRAPH_"))
    }
    return {
        **clean,
        "PYTHONPATH": str(ROOT),
        "TURNGRAPH_HOME": str(home),
        "TERM": "xterm",
        "INPUTRC": os.devnull,
        "COLUMNS": "200",
        **extra,
    }


class Terminal:
    """The program running on a pseudo-terminal: type into it, wait for its output."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _LAUNCH, *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=ROOT,
            env=env,
            start_new_session=True,
        )
        os.close(slave)
        self.fd = master
        self.out = b""
        self.pos = 0

    def _read(self, deadline: float) -> bool:
        """Read what is there; False at end of output."""
        ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the program closed the terminal
            return False
        self.out += data
        return bool(data)

    def expect(self, text: str) -> str:
        """Wait until ``text`` appears after what was already expected; the output
        up to and including it."""
        want = text.encode()
        deadline = time.monotonic() + LIMIT
        while (at := self.out.find(want, self.pos)) < 0:
            if time.monotonic() > deadline or not self._read(deadline):
                raise AssertionError(f"never saw {text!r} in:\n{self.screen()}")
        seen = self.out[self.pos : at + len(want)]
        self.pos = at + len(want)
        return seen.decode(errors="replace")

    def type(self, keys: str) -> None:
        """Type ``keys`` (``\\r`` is Enter, ``\\x03`` Ctrl-C, ``\\x04`` Ctrl-D)."""
        os.write(self.fd, keys.encode())

    def line(self, text: str) -> None:
        """Wait for the prompt, then type ``text`` and Enter."""
        self.expect("you> ")
        self.type(text + "\r")

    def wait(self) -> int:
        """The exit code, reading output until the program is gone."""
        deadline = time.monotonic() + LIMIT
        while self._read(deadline) and time.monotonic() < deadline:
            pass
        return self.proc.wait(timeout=LIMIT)

    def screen(self) -> str:
        """Everything the program wrote."""
        return self.out.decode(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.fd)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty data directory (store, key, history)."""
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def terminals() -> Iterator[list[Terminal]]:
    """Started terminals, killed at the end if still running."""
    started: list[Terminal] = []
    yield started
    for t in started:
        t.close()


def chat(terminals: list[Terminal], home: Path, *args: str, **env: str) -> Terminal:
    t = Terminal(*args, env=_env(home, **env))
    terminals.append(t)
    return t


def run(home: Path, *args: str, stdin: bytes = b"", **env: str) -> subprocess.CompletedProcess[str]:
    """The program with piped standard streams."""
    proc = subprocess.run(
        [sys.executable, "-m", "engine.run", *args],
        cwd=ROOT,
        env=_env(home, **env),
        input=stdin,
        capture_output=True,
        timeout=LIMIT,
        check=False,
    )
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode()
    )


def turn_count(home: Path, session: str) -> int:
    proc = run(home, "sessions", "show", session, "--json")
    assert proc.returncode == 0, proc.stderr
    return int(json.loads(proc.stdout)["turns"])


# --------------------------------------------------------------------------- editing


def test_arrow_keys_edit_the_line(terminals: list[Terminal], home: Path) -> None:
    """Left arrow moves the cursor: the line is edited, not refused as control characters."""
    t = chat(terminals, home, TURN)
    t.line("hello\x1b[D\x1b[DX")
    t.expect("bot> echo: helXlo")
    t.line("/quit")
    assert t.wait() == 0


def test_history_recalls_lines_and_outlives_the_chat(terminals: list[Terminal], home: Path) -> None:
    """Up arrow recalls the last lines; they are saved in a private file (the last
    1000 lines); the next chat finds them with Ctrl-R."""
    history = home / "chat_history"
    history.write_text("".join(f"old {i}\n" for i in range(1000)))
    t = chat(terminals, home, TURN)
    t.line("first line")
    t.expect("bot> echo: first line")
    t.line("second")
    t.expect("bot> echo: second")
    t.line("\x1b[A\x1b[A")  # up twice: "first line"
    t.expect("bot> echo: first line")
    t.line("/quit")
    assert t.wait() == 0
    assert stat.S_IMODE(history.stat().st_mode) == 0o600
    lines = history.read_text().splitlines()
    assert len(lines) == 1000 and lines[0] == "old 4"
    assert lines[-4:] == ["first line", "second", "first line", "/quit"]

    t = chat(terminals, home, TURN)
    t.expect("you> ")
    t.type("\x12firs")  # reverse search
    t.type("\r")
    t.expect("bot> echo: first line")
    t.line("\x04")
    assert t.wait() == 0
    assert history.read_text().splitlines()[-1] == "first line"


# --------------------------------------------------------------------------- Ctrl-C / Ctrl-D


def test_ctrl_c_at_the_prompt_clears_the_line(terminals: list[Terminal], home: Path) -> None:
    """Ctrl-C drops the half-typed line and prompts again (as often as wanted); on an
    empty line it says how to leave, and a second one there leaves (130)."""
    t = chat(terminals, home, TURN)
    for typed in ("half typed", "more"):
        t.expect("you> ")
        t.type(typed)
        t.expect(typed)
        t.type("\x03")
        t.expect("(line cleared)")
    t.line("next")
    t.expect("bot> echo: next")
    t.line("/history")
    shown = t.expect("[1] bot> echo: next")
    assert "half typed" not in shown and "more" not in shown and "[1] you> next" in shown
    t.expect("you> ")
    t.type("\x03")
    t.expect("(Ctrl-C again, Ctrl-D or /quit to leave)")
    t.expect("you> ")  # the prompt is back: the next Ctrl-C is read at it
    t.type("\x03")
    assert t.wait() == 130
    assert "Traceback" not in t.screen()


@pytest.fixture
def model() -> Iterator[LLMServer]:
    """A loopback OpenAI server that streams "quick answer"."""
    pytest.importorskip("openai")
    with LLMServer("openai", default=Reply(tokens=("quick", " answer"))) as server:
        yield server


@pytest.fixture
def slow_model(model: LLMServer) -> LLMServer:
    """The server, whose first answer never comes."""
    return model.script(Hang(LIMIT * 2))


def _wait_for_request(server: LLMServer, n: int) -> None:
    deadline = time.monotonic() + LIMIT
    while len(server.requests) < n:
        assert time.monotonic() < deadline, "the model was never asked"
        time.sleep(0.02)


def test_ctrl_c_during_a_turn_cancels_it(
    terminals: list[Terminal], home: Path, slow_model: LLMServer
) -> None:
    """Ctrl-C while the model thinks cancels that turn: nothing committed, the session
    idle, the next line works (and its reply streams)."""
    llm = ("--llm", "openai:m", "--llm-base-url", slow_model.url)
    t = chat(terminals, home, "--session", "s1", *llm)
    t.line("slow question")
    _wait_for_request(slow_model, 1)
    t.type("\x03")
    t.expect("turn cancelled: nothing was committed")
    t.line("again")
    t.expect("bot> quick answer")
    t.line("/quit")
    assert t.wait() == 0
    assert turn_count(home, "s1") == 1
    messages = [m["content"] for m in slow_model.requests[1].body["messages"]]
    assert "slow question" not in messages and messages[-1] == "again"


def test_sigterm_during_a_turn_cancels_it_and_leaves(
    terminals: list[Terminal], home: Path, slow_model: LLMServer
) -> None:
    """SIGTERM while the model thinks: the turn is cancelled (not waited for), nothing
    is committed, the lease is released, exit 143."""
    llm = ("--llm", "openai:m", "--llm-base-url", slow_model.url)
    t = chat(terminals, home, "--session", "s1", *llm, TURNGRAPH_LEASE_TTL="600")
    t.line("slow question")
    _wait_for_request(slow_model, 1)
    t.proc.send_signal(signal.SIGTERM)
    assert t.wait() == 128 + signal.SIGTERM
    assert "Traceback" not in t.screen()
    assert turn_count(home, "s1") == 0
    other = run(home, "-m", "next", "--session", "s1", TURNGRAPH_LEASE_TTL="600")
    assert other.returncode == 0, other.stderr


# --------------------------------------------------------------------------- leases


def _lease_expires(home: Path, session: str) -> float:
    db = sqlite3.connect(home / "turngraph.db")
    try:
        row = db.execute("SELECT lease_expires FROM sessions WHERE id=?", (session,)).fetchone()
    finally:
        db.close()
    return float(row[0])


def test_an_idle_chat_keeps_its_lease(terminals: list[Terminal], home: Path) -> None:
    """With a 2 s lease, a chat idle for several lease lengths still owns its session:
    another process is refused as busy, and the chat's next line works."""
    t = chat(terminals, home, "--session", "s1", TURNGRAPH_LEASE_TTL="2")
    t.line("hello")
    t.expect("bot> echo: hello")
    t.expect("you> ")
    time.sleep(7)  # idle at the prompt for more than three lease lengths
    now = time.time()
    expires = _lease_expires(home, "s1")
    assert now < expires <= now + 2.5  # renewed while idle, by the short TTL
    other = run(home, "-m", "intruder", "--session", "s1", TURNGRAPH_LEASE_TTL="2")
    assert other.returncode == 2
    assert "session 's1': leased by" in other.stderr and "Traceback" not in other.stderr
    t.type("still mine\r")
    t.expect("bot> echo: still mine")
    t.line("/quit")
    assert t.wait() == 0
    assert turn_count(home, "s1") == 2


@pytest.mark.parametrize(
    ("how", "code"),
    [("ctrl-c", 130), ("sigterm", 128 + signal.SIGTERM), ("sighup", 128 + signal.SIGHUP)],
)
def test_leaving_releases_the_lease(
    terminals: list[Terminal], home: Path, how: str, code: int
) -> None:
    """Ctrl-C, SIGTERM and SIGHUP leave as end of input does: the lease is released,
    so another process takes the session at once (the lease would last 10 minutes)."""
    t = chat(terminals, home, "--session", "s1", TURNGRAPH_LEASE_TTL="600")
    t.line("hello")
    t.expect("bot> echo: hello")
    t.expect("you> ")
    if how == "ctrl-c":
        t.type("\x03")
        t.expect("Ctrl-C again")
        t.expect("you> ")
        t.type("\x03")
    else:
        t.proc.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGHUP)
    assert t.wait() == code
    assert "Traceback" not in t.screen()
    other = run(home, "-m", "next", "--session", "s1", TURNGRAPH_LEASE_TTL="600")
    assert other.returncode == 0, other.stderr
    assert turn_count(home, "s1") == 2


def test_a_bad_lease_ttl_is_refused(home: Path) -> None:
    proc = run(home, "-m", "hi", "--session", "s1", TURNGRAPH_LEASE_TTL="soon")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "python -m engine.run: error: TURNGRAPH_LEASE_TTL='soon' is not a number of "
        "seconds between 0.1 and 86400"
    ]


# --------------------------------------------------------------------------- slash commands


def test_slash_commands(home: Path) -> None:
    """/help, /history N, /show, /compact answer without a turn; an unknown /command is
    refused and not sent; //text sends /text."""
    lines = [
        "hello",
        "/help",
        "/history 1",
        "/show",
        "/compact",
        "/bogus stuff",
        "//slash text",
        "/history",
        "/history x",
        "/quit",
        "never read",
    ]
    proc = run(home, "--session", "s1", stdin="\n".join(lines).encode() + b"\n")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for command in ("/help", "/history [N]", "/show", "/compact", "/quit", "//text"):
        assert f"  {command} " in out
    assert "you> [1] bot> echo: hello\nyou> session s1" in out  # /history 1, then /show
    assert "session s1\n  turns      1\n  messages   2" in out
    assert "nothing compacted" in out
    assert "unknown command /bogus (nothing was sent" in out
    assert "bot> echo: /slash text" in out
    assert "[2] you> /slash text" in out and "bogus" not in out.split("/slash text")[1]
    assert "/history: N must be a positive whole number, not 'x'" in out
    assert "never read" not in out
    assert turn_count(home, "s1") == 2


def test_history_refuses_digits_int_cannot_read(home: Path) -> None:
    """'²' is a digit to str.isdigit() but not to int(): refused, not an internal error."""
    proc = run(
        home, "--session", "s1", stdin="/history \u00b2\n/history 99999999999999999999\n".encode()
    )
    assert proc.returncode == 0, proc.stderr
    assert "/history: N must be a positive whole number, not '\u00b2'" in proc.stdout
    assert "internal error" not in proc.stderr
    assert proc.stdout.count("no messages yet") == 1


def test_a_chat_line_with_control_characters_is_refused_and_not_sent(home: Path) -> None:
    proc = run(home, "--session", "s1", stdin=b"bad\x01line\nfine\n")
    assert proc.returncode == 0
    assert "chat: error: the message contains a control character ('\\x01' at character 3)" in (
        proc.stderr
    )
    assert "bot> echo: fine" in proc.stdout
    assert turn_count(home, "s1") == 1


# --------------------------------------------------------------------------- -m


LONG = """digraph long {
    start [shape=Mdiamond]
    done [shape=Msquare]
    classify [max_chars=0]
    start -> classify -> llm_call -> format -> done
}
"""


def test_message_from_standard_input(home: Path, tmp_path: Path) -> None:
    """`-m -` reads the message from stdin: a megabyte, past what argv can carry."""
    graph = tmp_path / "long.dot"
    graph.write_text(LONG)
    text = "word " * 200_000 + "end"
    proc = run(home, str(graph), "-m", "-", "--json", stdin=text.encode() + b"\n")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["status"] == "success"
    assert doc["reply"] == f"echo: {text}"


@pytest.mark.parametrize(
    ("args", "stdin", "error"),
    [
        (["-m", "a\x1b[Db"], b"", "-m: error: the message contains a control character"),
        (["-m", "-"], b"\xffbad", "standard input: error: the message is not valid UTF-8"),
        (["-m", "-"], b"nul\x00", "standard input: error: the message contains a control"),
    ],
)
def test_bad_messages_are_refused(home: Path, args: list[str], stdin: bytes, error: str) -> None:
    """Control characters and bytes that are not UTF-8: one line, exit 2, no turn."""
    proc = run(home, *args, "--session", "s1", stdin=stdin)
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith(error)
    assert run(home, "sessions", "show", "s1").returncode == 2  # never created


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["-m", "-"], "standard input: error: -m - reads standard input, which is closed\n"),
        (
            ["--session", "s1"],
            "python -m engine.run: error: a chat reads standard input, which is closed\n",
        ),
    ],
)
def test_closed_standard_input_is_bad_input(home: Path, args: list[str], error: str) -> None:
    """Started with standard input closed (``<&-``, where sys.stdin is None): one line,
    exit 2, not an internal error."""
    proc = subprocess.run(
        [sys.executable, "-m", "engine.run", *args],
        cwd=ROOT,
        env=_env(home),
        stdin=None,
        capture_output=True,
        timeout=LIMIT,
        check=False,
        preexec_fn=lambda: os.close(0),
    )
    assert (proc.returncode, proc.stderr.decode()) == (2, error)


def test_a_message_not_utf8_in_argv_is_refused(home: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "engine.run", "-m", b"caf\xe9"],
        cwd=ROOT,
        env=_env(home),
        capture_output=True,
        timeout=LIMIT,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.decode() == "-m: error: the message is not valid UTF-8 (at character 3)\n"


def test_a_closed_pipe_is_quiet(home: Path, model: LLMServer) -> None:
    """`... | head -1`: the reader is gone before the (streamed) reply is written: exit 0,
    nothing on stderr."""
    llm_url = ("--llm-base-url", model.url)
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "engine.run", "-m", "hi", *("--llm", "openai:m"), *llm_url],
            cwd=ROOT,
            env=_env(home),
            stdout=write,
            stderr=subprocess.PIPE,
            timeout=LIMIT,
            check=False,
        )
    finally:
        os.close(write)
    assert (proc.returncode, proc.stderr) == (0, b"")


def test_json_has_the_same_keys_with_or_without_a_session(home: Path) -> None:
    """One shape for scripts; absent values are null."""
    keys = [
        *("status", "reply", "graph", "run_id", "session_id", "turn", "trace_id", "usage"),
        *("nodes", "error", "error_kind", "question"),
    ]
    plain = json.loads(run(home, "-m", "hi", "--json").stdout)
    stored = json.loads(run(home, "-m", "hi", "--json", "--session", "s1").stdout)
    assert list(plain) == keys and list(stored) == keys
    assert plain["session_id"] is None and plain["turn"] is None and plain["error"] is None
    assert (stored["session_id"], stored["turn"], stored["trace_id"]) == ("s1", 1, "s1:1")
    assert plain["reply"] == stored["reply"] == "echo: hi"
