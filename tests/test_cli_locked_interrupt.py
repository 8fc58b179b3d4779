"""Ctrl-C while a command waits for a SQLite store another process has locked.

The program ends at once with its usual interrupted report (one stderr line, exit 130,
with ``--json`` one error object), not when SQLite's busy timeout runs out, and the
store is untouched.  A helper process holds ``BEGIN EXCLUSIVE`` on the real file until
the test lets go; the program must have ended while it still holds it, and before its
own busy timeout could have ended.
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sessions.store import SQLiteStore
from tests.test_cli_json_errors import _env, home, interrupted, program

__all__ = ["home"]  # the fixture: a data directory whose store holds session ``s1``

ROOT = Path(__file__).resolve().parent.parent
HOLD = 60.0  # seconds any one wait may take: a hang guard, not a speed check
BUSY = float(inspect.signature(SQLiteStore).parameters["busy_timeout"].default)

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/fd").is_dir(), reason="needs /proc to see the program wait"
)

_HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()  # until the test lets go (or its pipe closes)
conn.execute("ROLLBACK")
"""


@pytest.fixture
def locked(home: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Another process holding the store's write lock (``BEGIN EXCLUSIVE``)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(home / "turngraph.db")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def _waiting_on(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has the store's shared-memory file open (SQLite opens
    it with the database, before it can wait for the lock)."""
    shm = f"{path}-shm"
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return False
    for name in names:
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}") == shm:
                return True
        except OSError:
            continue
    return False


@pytest.mark.parametrize(
    "argv",
    [["sessions", "list"], ["sessions", "list", "--json"], ["sessions", "delete", "s1"]],
    ids=["list", "list-json", "delete"],
)
def test_ctrl_c_while_the_store_is_locked_ends_the_command_at_once(
    home: Path, locked: subprocess.Popen[bytes], argv: list[str]
) -> None:
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.run", *argv],
        cwd=ROOT, env=_env(home), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = started + HOLD
        while not _waiting_on(proc.pid, home / "turngraph.db"):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the program never opened the store"
            time.sleep(0.02)
        time.sleep(0.3)  # well inside its wait for the lock
        proc.send_signal(signal.SIGINT)
        out, errs = proc.communicate(timeout=HOLD)
        # Not a speed check: a program that waits out SQLite's busy timeout after
        # Ctrl-C ends more than BUSY seconds after it started, whatever the machine.
        assert time.monotonic() - started < BUSY, "Ctrl-C waited for the busy timeout"
        assert locked.poll() is None, "the lock was freed before the program ended"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    interrupted(proc.returncode, out, errs, as_json="--json" in argv)
    assert locked.stdin is not None
    locked.stdin.write(b"\n")
    locked.stdin.close()
    assert locked.wait(HOLD) == 0
    verified = program(home, "sessions", "verify")
    assert verified.returncode == 0, verified.stderr
    assert b"s1" in verified.stdout
    listed = program(home, "sessions", "list", "--json")
    assert [s["id"] for s in json.loads(listed.stdout)] == ["s1"]  # the delete never ran
