"""The interactive chat of ``python -m engine.run``: a prompt in the main thread, the
session on an event loop in a worker thread.

The event loop runs the whole time (:func:`anyio.from_thread.start_blocking_portal`),
not only during a turn, so while the prompt waits the session manager keeps renewing
the session's lease and a chat left idle still owns its session.  The prompt blocks
the main thread, which is where signals arrive:

* Ctrl-C at the prompt clears the line (twice in a row: leave, exit 130); during a
  turn it cancels that turn (nothing is committed, the session is idle again).
* Ctrl-D, ``/quit``, SIGTERM (exit 143) and SIGHUP (exit 129) leave; every way out
  closes the session manager first, which releases the lease, so another process can
  take the session at once.

Lines that start with ``/`` are commands (:mod:`engine.cli.slash`).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal

from engine.cli import slash
from engine.cli.common import (
    EXIT_INTERRUPTED,
    BadMessage,
    checked_message,
    err,
)
from engine.cli.prompt import HISTORY_FILE, Interrupted, Prompt

if TYPE_CHECKING:
    from engine.cli.views import LivePrinter

__all__ = ["Leave", "run_chat"]

PROMPT = "you> "
REPLY = "bot> "


class Leave(BaseException):
    """SIGTERM or SIGHUP: leave the chat, releasing the session, with ``code``.

    A BaseException so that no ``except Exception`` on the way out swallows it."""

    def __init__(self, code: int) -> None:
        super().__init__(f"signal {code - 128}")
        self.code = code


def run_chat(args: argparse.Namespace, llm: Any) -> int:
    """The chat on session ``args.session`` in store ``args.store``; the exit code."""
    from engine.cli.main import live_printer, session_manager

    live = live_printer(llm, False, prefix=REPLY)
    manager = session_manager(args, llm, live)
    with _signals() as left, Prompt(history_path()) as prompt:
        try:
            with start_blocking_portal() as portal:
                try:
                    with portal.wrap_async_context_manager(manager):
                        chat = _Chat(portal, manager, prompt, live)
                        code = chat.run(args.session)
                finally:
                    _closing(portal, llm)
        except Leave as exc:
            return exc.code
        # A signal that came while the chat was closing is honoured, not lost.
        return left[0] if left else code


def _closing(portal: BlockingPortal, llm: Any) -> None:
    """Close a hosted model's connections on the loop that opened them."""
    from engine.cli.main import aclose_llm

    portal.call(aclose_llm, llm)


@contextmanager
def _signals() -> Iterator[list[int]]:
    """SIGTERM and SIGHUP raise :class:`Leave` in the main thread: once.  A second one
    while the chat is closing is only noted (in the yielded list), so that it cannot
    interrupt the release of the lease."""
    left: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        first = not left
        left.append(128 + signum)
        if first:
            raise Leave(128 + signum)

    wanted = (signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, handler) for sig in wanted}
    try:
        yield left
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class _Chat:
    """One chat's loop over the prompt; turns and commands run on ``portal``'s loop."""

    def __init__(
        self, portal: BlockingPortal, manager: Any, prompt: Prompt, live: LivePrinter | None
    ) -> None:
        self.portal = portal
        self.manager = manager
        self.prompt = prompt
        self.live = live
        self.session: Any = None

    def run(self, session_id: str) -> int:
        """Read lines until the user leaves; the exit code."""
        self.session = session = self.portal.call(self.manager.get_or_create, session_id)
        url = self.manager.store.url
        where = "in memory" if url.startswith("memory:") else url
        n = session.turn_count
        print(
            f"session {session.id} ({n} turn{'' if n == 1 else 's'}, {where}); "
            "/help for commands, /quit or Ctrl-D to leave"
        )
        while True:
            try:
                line = self.prompt.read(PROMPT)
            except Interrupted as exc:
                if exc.leave:
                    print(file=sys.stderr)
                    return EXIT_INTERRUPTED
                print("\n(line cleared; Ctrl-C again, Ctrl-D or /quit to leave)", file=sys.stderr)
                continue
            if line is None:
                return 0
            if not line.strip():
                continue
            item = slash.parse(line)
            if isinstance(item, slash.Command):
                if item.leaves:
                    return 0
                print(self.portal.call(slash.run, item, session))
                continue
            try:
                text = checked_message(item, "chat")
            except BadMessage as exc:
                self.prompt.forget_last()
                err(str(exc))
                continue
            self._turn(text)

    def _turn(self, text: str) -> None:
        """Run one turn; Ctrl-C cancels it (a second Ctrl-C while it stops: leave)."""
        from engine.cli.main import print_reply, run_failure_line

        live = self.live
        if live is not None:
            live.reset()
        turn = _Turn(self.session, text)
        future: Future[Any] = self.portal.start_task_soon(turn.run)
        try:
            result = future.result()
        except KeyboardInterrupt:
            self.portal.call(turn.cancel)
            future.result()  # the turn unwinds: the session is idle again
            if live is not None:
                live.end_line()
            err("(turn cancelled: nothing was committed)")
            return
        if result.ok:
            print_reply(result.reply, live, REPLY)
        else:
            if live is not None:
                live.end_line()
            err(run_failure_line(self.session.turn_graph, result.error, result.status))


class _Turn:
    """One turn that the main thread can cancel; both methods run on the loop."""

    def __init__(self, session: Any, text: str) -> None:
        self.session = session
        self.text = text
        self.scope: anyio.CancelScope | None = None
        self.cancelled = False

    async def run(self) -> Any:
        """The turn's result; ``None`` when it was cancelled."""
        with anyio.CancelScope() as self.scope:
            if self.cancelled:  # Ctrl-C came before the turn started
                self.scope.cancel()
            return await self.session.send(self.text)
        return None

    def cancel(self) -> None:
        """Cancel the turn, started or not."""
        self.cancelled = True
        if self.scope is not None:
            self.scope.cancel()


def history_path() -> Path:
    """The chat's history file (``$TURNGRAPH_HOME/chat_history``)."""
    from sessions.store.signing import data_dir

    return data_dir() / HISTORY_FILE
