"""The chat's slash commands: ``/help``, ``/history [N]``, ``/show``, ``/compact``, ``/quit``.

A line that starts with ``/`` is a command, never a message: an unknown one is refused
with a message and nothing reaches the model.  ``//text`` sends ``/text`` (for a graph
that reads commands of its own, such as ``/tool`` in ``tool_turn.dot``).

Commands run on the chat's event loop and return the text to print, so the chat prints
everything from one thread.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["COMMANDS", "HISTORY_DEFAULT", "Command", "parse", "run"]

HISTORY_DEFAULT = 10


@dataclass(frozen=True, slots=True)
class Command:
    """A slash command as typed: its ``name`` (without the slash) and argument text."""

    name: str
    arg: str = ""

    @property
    def leaves(self) -> bool:
        """Whether it ends the chat."""
        return self.name in ("quit", "exit")


def parse(line: str) -> Command | str:
    """A :class:`Command` for ``/name [arg]``; else the text to send (``//x`` sends ``/x``)."""
    text = line.strip()
    if text.startswith("//"):
        return line.lstrip()[1:]
    if not text.startswith("/"):
        return line
    name, _, arg = text[1:].partition(" ")
    return Command(name.lower(), arg.strip())


async def run(command: Command, session: Any) -> str:
    """What ``command`` prints, run on ``session`` (a :class:`~sessions.Session`)."""
    action = COMMANDS.get(command.name)
    if action is None:
        return (
            f"unknown command /{command.name} (nothing was sent; /help lists the commands, "
            "and //text sends a message that starts with /)"
        )
    return await action[1](session, command.arg)


async def _help(session: Any, arg: str) -> str:
    width = max(map(len, _USAGE.values()))
    lines = [f"  {_USAGE[name]:<{width}}  {summary}" for name, (summary, _) in COMMANDS.items()]
    lines.append(f"  {'//text':<{width}}  send a message that starts with /")
    lines.append(f"  {'Ctrl-C':<{width}}  clear the line, or cancel the running turn")
    lines.append(f"  {'Ctrl-D':<{width}}  leave")
    return "\n".join(lines)


async def _history(session: Any, arg: str) -> str:
    # isdigit() alone also holds for '²' and other digits int() refuses.
    if arg and not (arg.isascii() and arg.isdigit() and int(arg) > 0):
        return f"/history: N must be a positive whole number, not {arg!r}"
    messages = session.recent(int(arg) if arg else HISTORY_DEFAULT)
    if not messages:
        return "no messages yet"
    return "\n".join(f"[{m.turn}] {_ROLE.get(m.role, m.role + '>')} {m.content}" for m in messages)


async def _show(session: Any, arg: str) -> str:
    n = session.turn_count
    lines = [
        f"session {session.id}",
        f"  turns      {n}",
        f"  messages   {session.message_count}",
        f"  mode       {session.cognitive_mode}",
        f"  goals      {', '.join(session.goals) or '-'}",
    ]
    memory = session.working_memory
    keys = ", ".join(sorted(map(str, memory))) if memory else "-"
    lines.append(f"  memory     {keys}")
    return "\n".join(lines)


async def _compact(session: Any, arg: str) -> str:
    result = await session.compact()
    if not result.messages_compacted:
        return f"nothing compacted ({result.reason or 'nothing old enough to compact'})"
    return (
        f"compacted {result.messages_compacted} messages into a summary "
        f"(about {result.tokens_before} -> {result.tokens_after} tokens)"
    )


async def _quit(session: Any, arg: str) -> str:
    return ""


_ROLE = {"user": "you>", "assistant": "bot>"}

Action = Callable[[Any, str], Awaitable[str]]

COMMANDS: Mapping[str, tuple[str, Action]] = {
    "help": ("list the commands", _help),
    "history": (f"the last N messages (default {HISTORY_DEFAULT})", _history),
    "show": ("the session: turns, messages, goals, memory", _show),
    "compact": ("summarise older messages now", _compact),
    "quit": ("leave (also /exit)", _quit),
}
"""Each command: its one-line summary and what it does."""

_USAGE = {name: f"/{name}" for name in COMMANDS} | {"history": "/history [N]"}
