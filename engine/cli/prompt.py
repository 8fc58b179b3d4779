"""The chat's prompt: line editing and history as shells have them.

On a terminal the stdlib :mod:`readline` edits the line (arrow keys, Ctrl-A/E, Ctrl-R
reverse search) and keeps a history that outlives the chat: read from
``$TURNGRAPH_HOME/chat_history`` when the chat starts, the lines of this run appended
when it ends (so two chats at once do not erase each other's lines), the file kept
private (mode 0600: it holds what was typed) and at most ``HISTORY_LENGTH`` lines.
Off a terminal (a pipe, a file) :mod:`readline` is not even imported, so it writes no
escape sequences into output that a script reads.

Ctrl-C at the prompt clears the line; on an empty line it says how to leave, and a
second one there leaves, as Node's REPL does.  Ctrl-D leaves.

Python's readline waits for a key in ``select()`` and looks for signals only when that
wait is interrupted, so a Ctrl-C that lands after the prompt is drawn but before the
wait starts would be noticed only at the next key (so would SIGTERM and SIGHUP).
:class:`_Kicker` closes that gap: told of each signal through
:func:`signal.set_wakeup_fd`, it interrupts the main thread with SIGUSR1 (whose handler
only counts it) until the main thread has run its signal handlers twice, so the pending
signal has been handled however long the main thread took to reach its wait (a loaded
machine, a terminal whose output is stopped); it gives up after ``_Kicker.PATIENCE``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

__all__ = ["HISTORY_FILE", "HISTORY_LENGTH", "Interrupted", "Prompt"]

HISTORY_FILE = "chat_history"
HISTORY_LENGTH = 1000


class Interrupted(Exception):
    """Ctrl-C at the prompt: ``typed`` text was dropped, or the line was empty (then
    ``leave`` says whether it was the second time in a row)."""

    def __init__(self, typed: bool, leave: bool) -> None:
        super().__init__("interrupted")
        self.typed = typed
        self.leave = leave


class Prompt:
    """Reads the chat's lines; a context manager that loads and saves the history.

    ``history`` is the history file (``None``: no history kept); ``interactive``
    (default: standard input and output are terminals) turns line editing on.
    """

    def __init__(self, history: Path | None, *, interactive: bool | None = None) -> None:
        if interactive is None:
            interactive = sys.stdin.isatty() and sys.stdout.isatty()
        self.interactive = interactive
        self.history = history
        self._readline: ModuleType | None = None
        self._kicker: _Kicker | None = None
        self._loaded = 0
        self._interrupts = 0

    def __enter__(self) -> Prompt:
        if self.interactive:
            self._readline = _import_readline()
        if self._readline is not None:
            self._kicker = _Kicker().start()
        rl = self._readline
        if rl is not None and self.history is not None:
            rl.set_history_length(HISTORY_LENGTH)
            with contextlib.suppress(OSError):  # none yet, or unreadable: start afresh
                rl.read_history_file(self.history)
            self._loaded = rl.get_current_history_length()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._kicker is not None:
            self._kicker.stop()
            self._kicker = None
        self.save()

    def save(self) -> None:
        """Append this run's lines to the history file (private, created if missing).
        Never raises: a history that cannot be written must not lose the chat's exit."""
        rl, path = self._readline, self.history
        if rl is None or path is None:
            return
        new = rl.get_current_history_length() - self._loaded
        if new <= 0:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Created private before readline writes to it; an older file is made private.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.fchmod(fd, 0o600)
            finally:
                os.close(fd)
            # Appends, then trims the file to set_history_length's HISTORY_LENGTH lines.
            rl.append_history_file(new, path)
            self._loaded += new
        except OSError as exc:
            print(f"warning: chat history not saved: {exc}", file=sys.stderr)

    def read(self, prompt: str) -> str | None:
        """The next line; ``None`` at end of input.  Ctrl-C raises :class:`Interrupted`."""
        try:
            line = _input(prompt)
        except EOFError:
            print(file=sys.stderr)
            return None
        except KeyboardInterrupt:
            # readline still holds the dropped line: text typed is only cleared.
            typed = bool(self._readline and self._readline.get_line_buffer())
            self._interrupts = 0 if typed else self._interrupts + 1
            raise Interrupted(typed, leave=self._interrupts > 1) from None
        self._interrupts = 0
        return line

    def forget_last(self) -> None:
        """Drop the latest history entry (a line that was refused, say)."""
        rl = self._readline
        if rl is not None:
            n = rl.get_current_history_length()
            if n > self._loaded:
                rl.remove_history_item(n - 1)


def _input(prompt: str) -> str:
    """``input(prompt)``, raising what interrupted it.

    When a kick is what woke readline, the signal's handler raises first and the kick
    is still pending; ``input()`` then runs the kick's handler with that exception set,
    which CPython reports as a :class:`SystemError` caused by it: the cause is raised."""
    try:
        return input(prompt)
    except SystemError as exc:
        cause = exc.__cause__
        if isinstance(cause, KeyboardInterrupt | SystemExit):  # Ctrl-C; Leave (SIGTERM, SIGHUP)
            raise cause from None
        raise


def _import_readline() -> ModuleType | None:
    """:mod:`readline` when the platform has it (importing it is what makes ``input()``
    edit lines); ``None`` elsewhere, where the prompt still works without editing."""
    try:
        import readline
    except ImportError:
        return None
    return readline


class _Kicker:
    """Interrupts the main thread's wait for a key after each signal (see the module
    docstring), from a daemon thread; only while the prompt is in use."""

    PAUSE = 0.01  # seconds between kicks
    PATIENCE = 10.0  # seconds of kicking at most (a main thread stuck where no kick helps)

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        self._main = threading.main_thread().ident or 0
        self._old_fd = -1
        self._old_usr1: Any = None
        self._handled = 0  # kicks whose handler the main thread has run
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="chat-sigint", daemon=True)

    def start(self) -> _Kicker:
        """Take the wakeup fd and SIGUSR1 (main thread only); start watching."""
        os.set_blocking(self._write, False)
        self._old_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._old_usr1 = signal.signal(signal.SIGUSR1, self._kicked)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Give the wakeup fd back, end the watcher, then give SIGUSR1 back (a kick
        after that would kill the process)."""
        signal.set_wakeup_fd(self._old_fd)
        self._stopped.set()
        os.close(self._write)  # the watcher reads end of file
        self._thread.join()
        os.close(self._read)
        signal.signal(signal.SIGUSR1, self._old_usr1)

    def _kicked(self, signum: int, frame: FrameType | None) -> None:
        """SIGUSR1 only interrupts a wait; counting it tells the watcher it got through."""
        self._handled += 1

    def _watch(self) -> None:
        while data := os.read(self._read, 64):
            if data.strip(bytes([signal.SIGUSR1])):  # SIGINT, SIGTERM, SIGHUP: not a kick
                self._kick()

    def _kick(self) -> None:
        """Kick until two kicks have been handled one after the other.

        Python runs every pending handler in one pass, lowest signal number first.  A
        pass that handled a kick sent now may have begun before the signal came in
        (and readline may wait again after it); the pass handling a later kick began
        after that one ended, so it ran the signal's handler.  A count of kicks would
        not do: they are all spent if the main thread takes longer to reach its wait."""
        deadline = time.monotonic() + self.PATIENCE
        handled = 0
        while handled < 2 and time.monotonic() < deadline:
            before = self._handled
            signal.pthread_kill(self._main, signal.SIGUSR1)
            if self._stopped.wait(self.PAUSE):
                return
            handled += self._handled != before
