"""The chat's prompt: line editing and history as shells have them.

On a terminal the stdlib :mod:`readline` edits the line (arrow keys, Ctrl-A/E, Ctrl-R
reverse search) and keeps a history that outlives the chat: read from
``$TURNGRAPH_HOME/chat_history`` when the chat starts, the lines of this run appended
when it ends (so two chats at once do not erase each other's lines), the file kept
private (mode 0600: it holds what was typed) and at most ``HISTORY_LENGTH`` lines.
Off a terminal (a pipe, a file) :mod:`readline` is not even imported, so it writes no
escape sequences into output that a script reads.

Ctrl-C at the prompt clears the line; a second Ctrl-C in a row (with nothing entered
in between) leaves, as Node's REPL does.  Ctrl-D leaves.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["HISTORY_FILE", "HISTORY_LENGTH", "Interrupted", "Prompt"]

HISTORY_FILE = "chat_history"
HISTORY_LENGTH = 1000


class Interrupted(Exception):
    """Ctrl-C at the prompt: the line was dropped (``leave``: the second one in a row)."""

    def __init__(self, leave: bool) -> None:
        super().__init__("interrupted")
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
        self._loaded = 0
        self._interrupts = 0

    def __enter__(self) -> Prompt:
        if self.interactive:
            self._readline = _import_readline()
        rl = self._readline
        if rl is not None and self.history is not None:
            rl.set_history_length(HISTORY_LENGTH)
            with contextlib.suppress(OSError):  # none yet, or unreadable: start afresh
                rl.read_history_file(self.history)
            self._loaded = rl.get_current_history_length()
        return self

    def __exit__(self, *exc: object) -> None:
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
            if self._loaded + new < HISTORY_LENGTH:
                rl.append_history_file(new, path)
            else:  # rewritten whole, which keeps the file to HISTORY_LENGTH lines
                rl.write_history_file(path)
            self._loaded += new
        except OSError as exc:
            print(f"warning: chat history not saved: {exc}", file=sys.stderr)

    def read(self, prompt: str) -> str | None:
        """The next line; ``None`` at end of input.  Ctrl-C raises :class:`Interrupted`."""
        try:
            line = input(prompt)
        except EOFError:
            print(file=sys.stderr)
            return None
        except KeyboardInterrupt:
            self._interrupts += 1
            raise Interrupted(leave=self._interrupts > 1) from None
        self._interrupts = 0
        return line

    def forget_last(self) -> None:
        """Drop the latest history entry (a line that was refused, say)."""
        rl = self._readline
        if rl is not None:
            n = rl.get_current_history_length()
            if n > self._loaded:
                rl.remove_history_item(n - 1)


def _import_readline() -> ModuleType | None:
    """:mod:`readline` when the platform has it (importing it is what makes ``input()``
    edit lines); ``None`` elsewhere, where the prompt still works without editing."""
    try:
        import readline
    except ImportError:
        return None
    return readline
