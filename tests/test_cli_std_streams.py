"""The command line's standard streams when they are not an ordinary reader: a full disk
(``> /dev/full``), a stream closed at start (``2>&-``), unbuffered streams
(``PYTHONUNBUFFERED``), and Ctrl-C pressed again after the interrupt was reported.

Every test runs the real program in a subprocess, on real descriptors and real SQLite files.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from engine.cli.common import JSON_KEYS
from sessions.store import open_store
from sessions.store.base import SessionMeta

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 60.0  # seconds before a run gives up: a hang guard, not a speed check
FULL = Path("/dev/full")


def _env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a run with its own data directory and no store set."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TURNGRAPH_") and k != "PYTHONUNBUFFERED"
    }
    env.update(PYTHONPATH=str(ROOT), TURNGRAPH_HOME=str(home), TURNGRAPH_SECRET="k", **extra)
    return env


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "engine.run", *args]


@pytest.mark.skipif(not FULL.exists(), reason="needs /dev/full")
@pytest.mark.parametrize("unbuffered", ["", "1"], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize(
    ("args", "stdin"),
    [
        (["-m", "hi"], b""),
        (["-m", "hi", "--json"], b""),
        (["--help"], b""),
        (["--session", "c"], b"hi\n/quit\n"),  # a chat: input() swallows its flush's error
    ],
    ids=["turn", "json", "help", "chat"],
)
def test_a_full_disk_fails_with_one_line(
    tmp_path: Path, args: list[str], stdin: bytes, unbuffered: str
) -> None:
    """Output the disk cannot take: exit 2 and one line naming standard output (it was
    exit 120 and Python's "Exception ignored" traceback at exit, or 0 for a chat)."""
    store = ["--store", f"sqlite:///{tmp_path / 's.db'}"] if "--session" in args else []
    with FULL.open("wb") as full:
        proc = subprocess.run(
            _command(*args, *store),
            cwd=ROOT,
            env=_env(tmp_path, PYTHONUNBUFFERED=unbuffered),
            input=stdin,
            stdout=full,
            stderr=subprocess.PIPE,
            timeout=LIMIT,
            check=False,
        )
    errs = proc.stderr.decode()
    assert proc.returncode == 2, errs
    assert errs == "error: [Errno 28] No space left on device: 'standard output'\n"


def test_an_error_with_stderr_closed_leaves_stdout_one_object(tmp_path: Path) -> None:
    """``--json 2>&-`` refused: stdout holds the error object alone (the stderr line
    went to stdout before it: ``print(file=None)``)."""
    proc = subprocess.run(
        [
            "bash",
            "-c",
            'exec "$@" 2>&-',
            "run",
            *_command("-m", "hi", "--session", "a b", "--json"),
        ],
        cwd=ROOT,
        env=_env(tmp_path),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        timeout=LIMIT,
        check=False,
    )
    assert proc.returncode == 2
    doc = json.loads(proc.stdout)
    assert (doc["status"], doc["error_kind"]) == ("error", "InvalidSessionId")


def _seeded(tmp_path: Path) -> Path:
    """A SQLite store at ``tmp_path`` with one session."""
    path = tmp_path / "s.db"

    async def seed() -> None:
        async with open_store(f"sqlite:///{path}") as store:
            await store.create(SessionMeta("a", agent_id="bot"))

    anyio.run(seed)
    return path


def _opened(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open."""
    fds = Path(f"/proc/{pid}/fd")
    try:
        links = [os.readlink(fd) for fd in fds.iterdir()]
    except OSError:  # gone, or a descriptor closed meanwhile
        return False
    return str(path) in links


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
@pytest.mark.parametrize("unbuffered", ["", "1"], ids=["buffered", "unbuffered"])
def test_ctrl_c_again_after_the_report_prints_no_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unbuffered: str
) -> None:
    """Ctrl-C pressed again and again while the store waits for a lock another process
    holds: the error object and ``error: interrupted`` once, then the process ends by
    the signal, not with Python's traceback from the exit's wait for the worker thread
    still in SQLite's busy wait.  Under ``PYTHONUNBUFFERED`` the line was written at
    once, not held in a buffer that the signal's end of the process discards."""
    monkeypatch.setenv("TURNGRAPH_HOME", str(tmp_path))
    monkeypatch.setenv("TURNGRAPH_SECRET", "k")
    path = _seeded(tmp_path)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    proc = subprocess.Popen(
        _command("sessions", "list", "--json", "--store", f"sqlite:///{path}"),
        cwd=ROOT,
        env=_env(tmp_path, PYTHONUNBUFFERED=unbuffered),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out: Any = b""
    try:
        deadline = time.monotonic() + LIMIT
        while not _opened(proc.pid, path):  # its event loop is waiting for the lock
            assert time.monotonic() < deadline and proc.poll() is None, "the store was never opened"
            time.sleep(0.02)
        while proc.poll() is None:
            assert time.monotonic() < deadline, "Ctrl-C never ended it"
            proc.send_signal(signal.SIGINT)
            time.sleep(0.2)
        out, errs = proc.communicate(timeout=LIMIT)
    finally:
        holder.rollback()
        holder.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert errs.decode() == "error: interrupted\n"
    assert proc.returncode in (130, -signal.SIGINT)
    [text] = out.decode().splitlines()
    doc = json.loads(text)
    assert list(doc) == list(JSON_KEYS) and doc["error_kind"] == "KeyboardInterrupt"
