"""The interactive chat of ``python -m engine.run``: a prompt in the main thread, the
session on an event loop in a worker thread.

The event loop runs the whole time (:func:`anyio.from_thread.start_blocking_portal`),
not only during a turn, so while the prompt waits the session manager keeps renewing
the session's lease and a chat left idle still owns its session.  The prompt blocks
the main thread, which is where signals arrive:

* Ctrl-C at the prompt clears the line (twice on an empty line: leave, exit 130);
  during a turn it cancels that turn (nothing is committed, the session is idle again).
* Ctrl-D, ``/quit``, SIGTERM (exit 143) and SIGHUP (exit 129) leave; every way out
  closes the session manager first, which releases the lease, so another process can
  take the session at once.

Each turn runs through :meth:`Session.stream <sessions.Session.stream>`, so a streaming
model's reply is printed as it arrives, and cancelling the turn unwinds the stream (the
turn is not committed).  Lines that start with ``/`` are commands
(:mod:`engine.cli.slash`).

A turn that stops at a human gate prints its question and choices, and the prompt
becomes ``answer>``: the next line is the answer (:meth:`Session.answer
<sessions.Session.answer>`); a choice the gate does not offer is refused and the
question asked again.  A session loaded with a question waiting asks it first.  A
gate's ``timeout`` fires while the prompt waits (the manager's gate timers): an answer
typed after it is refused in one line (``NotPaused``), never sent as a turn, nor taken
as the answer to the next gate's question (a default leading to another gate) before
that question was shown; the reply of the turn the timer ran is printed then (or the
next gate's question asked).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
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
    one_line,
)
from engine.cli.prompt import HISTORY_FILE, Interrupted, Prompt
from engine.errors import TurngraphError

if TYPE_CHECKING:
    from engine.cli.views import LivePrinter
    from sessions.gates import Question

__all__ = ["Leave", "run_chat"]

PROMPT = "you> "
REPLY = "bot> "
ANSWER = "answer> "
_TIMED_OUT_SCAN = 8
"""The latest messages searched for the reply of a turn a gate's timer ran (its reply
is its last message, and later turns cannot have run: the chat is their only sender)."""


class Leave(SystemExit):
    """SIGTERM or SIGHUP: leave the chat, releasing the session, with exit ``code``.

    A :class:`SystemExit` so that no ``except Exception`` on the way out swallows it,
    and the command line turns it into its exit code wherever it surfaces."""


def run_chat(args: argparse.Namespace, llm: Any) -> int:
    """The chat on session ``args.session`` in store ``args.store``; the exit code."""
    from engine.cli.main import live_printer, session_manager

    live = live_printer(llm, False, prefix=REPLY)
    manager = session_manager(args, llm, None)  # the chat feeds `live` from the stream
    with _signals() as left, Prompt(history_path()) as prompt, start_blocking_portal() as portal:
        try:
            with portal.wrap_async_context_manager(manager):
                chat = _Chat(portal, manager, prompt, live)
                try:
                    code = chat.run(args.session)
                except Leave as exc:  # caught here, so the manager closes normally
                    code = int(exc.code or 0)
                except KeyboardInterrupt:  # Ctrl-C again while a turn was stopping
                    code = EXIT_INTERRUPTED
        finally:
            _closing(portal, llm)
    # A signal that came while the chat was closing is honoured, not lost.
    return left[0] if left and code == 0 else code


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
        self._ask()
        while True:
            # What the prompt asked decides what the line is: a gate's timer may take
            # the question while the user types, and an answer must not become a turn
            # (nor the answer to the next gate's question, which the user never saw).
            shown = session.question
            try:
                line = self.prompt.read(PROMPT if shown is None else ANSWER)
            except Interrupted as exc:
                if exc.leave:
                    print(file=sys.stderr)
                    return EXIT_INTERRUPTED
                hint = "line cleared" if exc.typed else "Ctrl-C again, Ctrl-D or /quit to leave"
                print(f"\n({hint})", file=sys.stderr)
                continue
            if line is None:
                return 0
            try:
                if self._handle(line, shown):
                    return 0
            except KeyboardInterrupt:  # between the prompt and a turn: as at the prompt
                print("\n(interrupted)", file=sys.stderr)

    def _handle(self, line: str, shown: Question | None = None) -> bool:
        """Run the command or turn ``line`` asks for (given ``shown``: the answer to
        that question, which the prompt showed); whether the chat ends."""
        if not line.strip():
            return False
        item = slash.parse(line)
        if isinstance(item, slash.Command):
            if item.leaves:
                return True
            out = self._cancellable(slash.run, item, self.session)
            print("(cancelled)" if out is None else out)
            return False
        try:
            text = checked_message(item, "chat")
        except BadMessage as exc:
            self.prompt.forget_last()
            err(str(exc))
            return False
        self._turn(text, shown)
        return False

    def _ask(self) -> None:
        """Print the question a paused turn waits on, if any."""
        q = self.session.question
        if q is not None:
            print(f"{REPLY}{q.text} [{' / '.join(q.choices)}]")

    def _cancellable(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """``fn(*args)`` run on the loop; Ctrl-C cancels it and waits until it has
        unwound (a second Ctrl-C meanwhile leaves the chat); ``None`` if cancelled.
        SIGTERM and SIGHUP cancel it too, then leave."""
        call = _Cancellable(fn, args)
        future: Future[Any] = self.portal.start_task_soon(call.run)
        try:
            return future.result()
        except (KeyboardInterrupt, Leave) as exc:
            self.portal.call(call.cancel)
            if isinstance(exc, Leave):  # leaving: the turn must not hold up the exit
                with contextlib.suppress(Exception):
                    future.result()
                raise
            return future.result()  # None, or its result if it finished first

    def _turn(self, text: str, shown: Question | None = None) -> None:
        """Run one turn (or answer the question ``shown`` with ``text``) and print its
        reply; Ctrl-C cancels it, committing nothing."""
        from sessions.errors import NotPaused

        live = self.live
        if live is not None:
            live.reset()
        answer = shown is not None
        try:
            if shown is not None:
                result = self._cancellable(_answered, self.session, shown, text)
            else:
                result = self._cancellable(_streamed, self.session, text, live)
        except TurngraphError as exc:  # the turn was refused or failed as a whole
            if live is not None:
                live.end_line()
            if self.session.closed:  # fenced out or closed: this chat cannot go on
                raise
            late = answer and isinstance(exc, NotPaused)  # the gate's timer came first
            err(one_line(exc) + (": the gate's timeout passed first" if late else ""))
            if late and shown is not None:
                self._timed_out_reply(shown)
            self._ask()  # an unknown choice: the question still waits
            return
        self._show(result)

    def _timed_out_reply(self, shown: Question) -> None:
        """Print the reply of the turn the gate's timer ran on from ``shown`` (the chat
        never saw that turn: it ran while the ``answer>`` prompt waited), if it
        committed one (it may have paused at the next gate, or failed)."""
        from engine.cli.main import print_reply

        recent = self.portal.call(self.session.recent, _TIMED_OUT_SCAN)
        reply = _reply_of(recent, shown.turn)
        if reply is not None:
            print_reply(reply, None, REPLY)

    def _show(self, result: Any) -> None:
        """Print a turn's result: its reply, its question, or why it failed."""
        from engine.cli.main import print_reply, run_failure_line

        live = self.live
        if live is not None and (result is None or not result.ok):
            live.end_line()
        if result is None:
            err("(turn cancelled: nothing was committed)")
        elif result.ok:
            print_reply(result.reply, live, REPLY)
        elif result.status == "paused":
            self._ask()
        else:
            err(run_failure_line(self.session.turn_graph, result.error, result.status))


def _reply_of(messages: tuple[Any, ...], turn: int) -> str | None:
    """The reply turn ``turn`` committed among ``messages`` (``None``: none there)."""
    replies = [m.content for m in messages if m.role == "assistant" and m.turn == turn]
    return replies[-1] if replies else None


async def _answered(session: Any, shown: Question, choice: str) -> Any:
    """``session.answer(choice)`` if the question waiting is still ``shown``, else
    :class:`~sessions.errors.NotPaused`: a gate's timer took it on to another gate,
    whose question the user has not seen.  Checked on the loop the timers run on, so
    none fires between the check and the answer's turn taking the session lock (unless
    the lock is busy: then the lock's order decides, as between two answers)."""
    from sessions.errors import NotPaused

    waiting = session.question
    if waiting is not None and waiting != shown:
        raise NotPaused(session.id, "the question shown is no longer waiting")
    return await session.answer(choice)


async def _streamed(session: Any, text: str, live: LivePrinter | None) -> Any:
    """One turn through ``session.stream``: its text printed by ``live`` as it arrives;
    the :class:`~sessions.TurnResult`.  Cancelled, the stream unwinds the turn."""
    from sessions import TurnResult

    async with session.stream(text) as events:
        async for event in events:
            if isinstance(event, TurnResult):
                return event
            if live is not None:
                live(event)
    raise AssertionError("a turn stream ends with its TurnResult")


class _Cancellable:
    """A call the main thread can cancel; both methods run on the loop."""

    def __init__(self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.scope: anyio.CancelScope | None = None
        self.cancelled = False

    async def run(self) -> Any:
        """The call's result; ``None`` when it was cancelled."""
        with anyio.CancelScope() as self.scope:
            if self.cancelled:  # Ctrl-C came before it started
                self.scope.cancel()
            return await self.fn(*self.args)
        return None

    def cancel(self) -> None:
        """Cancel the call, started or not."""
        self.cancelled = True
        if self.scope is not None:
            self.scope.cancel()


def history_path() -> Path:
    """The chat's history file (``$TURNGRAPH_HOME/chat_history``)."""
    from sessions.store.signing import data_dir

    return data_dir() / HISTORY_FILE
