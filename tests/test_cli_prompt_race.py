"""A Ctrl-C that lands while the chat's main thread is between the Python code that
calls the prompt and readline's wait for a key (see :class:`engine.cli.prompt._Kicker`).

The window is made as long as the test wants, without timing: the terminal's output
is stopped (XOFF, as Ctrl-S does) and readline's prompt is made long
(``show-mode-in-prompt`` with a 100-character mode string), so readline, which writes
the prompt one character at a time and does not look at signals in between, is held
in those writes; every signal lets one write give up, no more.  A SIGINT sent then
must still reach the prompt once readline gets to its wait.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.test_cli_chat import LIMIT, TURN, Terminal, _env

MODE = "x" * 100  # readline writes it before "you> ", one write per character


def _syscall(pid: int) -> str:
    """What the main thread of ``pid`` is doing in the kernel (``/proc/PID/syscall``)."""
    return Path(f"/proc/{pid}/syscall").read_text()


def _wait_for(predicate: Callable[[], bool], what: str) -> None:
    """Wait until ``predicate()`` holds (a hang guard, not a speed check)."""
    deadline = time.monotonic() + LIMIT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"never saw {what}")
        time.sleep(0.01)


def test_ctrl_c_while_readline_is_held_before_its_key_wait_is_not_lost(tmp_path: Path) -> None:
    """The main thread is held in readline's prompt writes (past the last point where
    Python looks at signals) for as long as the output stays stopped; a SIGINT then is
    handled as soon as readline waits for a key: the second one leaves, exit 130, with
    the output still stopped (nothing else wakes the prompt)."""
    if not Path(f"/proc/{os.getpid()}/syscall").exists():
        pytest.skip("needs /proc/PID/syscall to see where the main thread waits")
    home = tmp_path / "home"
    home.mkdir()
    inputrc = tmp_path / "inputrc"
    inputrc.write_text(f"set show-mode-in-prompt on\nset emacs-mode-string {MODE}\n")
    read_err, write_err = os.pipe()
    t = Terminal(TURN, env=_env(home, INPUTRC=str(inputrc)), stderr=write_err)
    os.close(write_err)
    errors = b""
    try:
        try:
            _syscall(t.proc.pid)
        except OSError as exc:
            pytest.skip(f"cannot read the chat's /proc/PID/syscall: {exc}")
        t.expect(MODE + "you> ")
        t.type("\x13")  # XOFF: the terminal takes no more output
        t.proc.send_signal(signal.SIGINT)  # not ^C: typed, it would restart the output

        def hinted() -> bool:
            nonlocal errors
            if select.select([read_err], [], [], 0.05)[0]:
                errors += os.read(read_err, 4096)
            return b"Ctrl-C again" in errors

        _wait_for(hinted, "the hint on stderr")
        # The next prompt is being written: the main thread is in write(1, ...), inside
        # readline, where only a signal gets it on (x86-64: 1, arm64: 64).
        _wait_for(
            lambda: _syscall(t.proc.pid).split()[:2] in (["1", "0x1"], ["64", "0x1"]),
            "the main thread in readline's prompt writes",
        )
        t.proc.send_signal(signal.SIGINT)
        try:
            code = t.proc.wait(timeout=LIMIT)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                "the second Ctrl-C was lost: the chat is still at its prompt"
            ) from None
        while chunk := os.read(read_err, 4096):
            errors += chunk
        assert code == 130
        assert b"Traceback" not in errors and b"internal error" not in errors, errors
    finally:
        t.type("\x11")  # XON
        t.close()
        os.close(read_err)
