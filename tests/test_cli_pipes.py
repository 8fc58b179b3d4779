"""A reader that leaves in the middle of a command's output (``... | head -1``): the
command ends quietly with its own exit code, whichever command it is.  One that stops
reading while Ctrl-C is pressed gets no second JSON document.

Every test runs the real program in a subprocess whose standard output is a real pipe:
the reader takes the first line and closes its end while the command still has far
more to write than the pipe holds, so the command meets the closed pipe mid-output.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from sessions.store import open_store
from sessions.store.base import SessionMeta

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 120.0  # seconds before a run gives up: a hang guard, not a speed check
SESSIONS = 4000
"""Enough sessions that a listing or a verification is several times a pipe's 64 KiB."""


def _started(home: Path, *args: str) -> subprocess.Popen[bytes]:
    """``python -m engine.run ARGS`` started, its output and errors unbuffered pipes."""
    env = {k: v for k, v in os.environ.items() if k != "TURNGRAPH_STORE"}
    env.update(PYTHONPATH=str(ROOT), TURNGRAPH_HOME=str(home))
    return subprocess.Popen(
        [sys.executable, "-m", "engine.run", *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
    )


def _reader_leaves(home: Path, *args: str) -> tuple[int, str]:
    """Run ``python -m engine.run ARGS``, read its first line of output, close the pipe;
    its exit code and standard error."""
    proc = _started(home, *args)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        proc.stdout.close()  # the reader leaves
        errs = proc.stderr.read().decode()
        code = proc.wait(timeout=LIMIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert first, errs  # the output had begun
    assert "Traceback" not in errs, errs
    assert len(errs.splitlines()) <= 1, errs
    return code, errs


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A SQLite store of :data:`SESSIONS` sessions whose last one (``s9999``) has an
    edited row: its URL and file."""
    monkeypatch.setenv("TURNGRAPH_SECRET", "pipe-test-secret")
    monkeypatch.setenv("TURNGRAPH_HOME", str(tmp_path))  # its rollback witness too
    path = tmp_path / "many.db"
    url = f"sqlite:///{path}"

    async def seed() -> None:
        async with open_store(url) as s:
            for i in range(SESSIONS - 1):
                await s.create(SessionMeta(f"s{i:04d}", agent_id="bot"))
            await s.create(SessionMeta("s9999", agent_id="bot"))

    anyio.run(seed)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE sessions SET turn_count=7 WHERE id='s9999'")
    conn.close()
    return url, path


def test_verify_keeps_its_failure_when_the_reader_leaves(
    tmp_path: Path, store: tuple[str, Path]
) -> None:
    """``sessions verify | head -1`` over a store with a tampered session: still exit 2
    (the cut output made it 0), nothing on stderr but at most a line, no traceback."""
    url, _ = store
    for fmt in ([], ["--json"]):
        code, errs = _reader_leaves(tmp_path, "sessions", "verify", "--store", url, *fmt)
        assert code == 2, errs


def test_list_still_warns_of_tampering_when_the_reader_leaves(
    tmp_path: Path, store: tuple[str, Path]
) -> None:
    """``sessions list | head -1``: exit 0 (it listed the store), and the warning naming
    the tampered session, written after the table, still reaches stderr."""
    url, _ = store
    limit = str(SESSIONS + 1)
    code, errs = _reader_leaves(tmp_path, "sessions", "list", "--limit", limit, "--store", url)
    assert code == 0, errs
    assert errs.startswith("warning: 1 tampered session(s)") and "s9999" in errs


def test_ctrl_c_while_the_json_document_is_written_adds_no_second_object(
    tmp_path: Path, store: tuple[str, Path]
) -> None:
    """SIGINT while ``sessions list --json`` is blocked writing its document into a pipe
    the reader has stopped reading: ``error: interrupted``, exit 130, and no error
    object after the document (it was appended, so what stdout held was no JSON at all,
    even when the whole listing had been written)."""
    url, _ = store
    limit = str(SESSIONS + 1)
    proc = _started(tmp_path, "sessions", "list", "--json", "--limit", limit, "--store", url)
    try:
        assert proc.stdout is not None
        first = proc.stdout.read(1)  # the document has begun; the rest fills the pipe
        proc.send_signal(signal.SIGINT)
        out, errs = proc.communicate(timeout=LIMIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = errs.decode().splitlines()  # the tampered session's warning may come first
    assert (first, proc.returncode, lines[-1]) == (b"[", 130, "error: interrupted"), lines
    assert "Traceback" not in errs.decode()
    assert b"KeyboardInterrupt" not in out
