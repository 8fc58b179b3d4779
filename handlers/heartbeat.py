"""Heartbeat handlers: ``check_goals``, ``choose_mode``, ``reflect``,
``update_working_memory``.  The heartbeat graph runs between turns, never during one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.graph import Node
from engine.outcome import Outcome
from handlers._common import attr_int, attr_str, recent_messages
from handlers.adapters.llm import LLM
from handlers.llm import add_usage

__all__ = ["MODES", "CheckGoals", "ChooseMode", "Reflect", "UpdateWorkingMemory"]

MODES = ("idle", "reflect", "plan", "review")
"""The heartbeat's modes, as set in ``heartbeat.mode``."""

_INSTRUCTIONS = {
    "reflect": "Reflect on the recent conversation in two or three sentences.",
    "plan": "Given the goals, plan the next steps in two or three sentences.",
    "review": "Review the recent conversation: what went well, what to improve.",
}


def _goals(context: Mapping[str, Any]) -> tuple[str, ...]:
    raw = context.get("session.goals") or ()
    if isinstance(raw, str):
        raw = (raw,)
    return tuple(str(g).strip() for g in raw if str(g).strip())


class CheckGoals:
    """Reads ``session.goals``; sets ``heartbeat.goals`` (non-blank, as a tuple) and
    ``heartbeat.has_goals``."""

    __slots__ = ()

    def __call__(self, node: Node, context: Mapping[str, Any]) -> Outcome:
        goals = _goals(context)
        return Outcome("success", {"heartbeat.goals": goals, "heartbeat.has_goals": bool(goals)})


class ChooseMode:
    """Sets ``heartbeat.mode`` (one of :data:`MODES`), also its preferred label.

    ``idle`` with no history and no goals; ``plan`` with goals; ``review`` every
    ``review_every`` turns (default 10); else ``reflect``.  A ``mode`` setting forces one.
    """

    __slots__ = ()

    def __call__(self, node: Node, context: Mapping[str, Any]) -> Outcome:
        forced = attr_str(node, "mode", "")
        if forced and forced not in MODES:
            return Outcome("fail", reason=f"mode must be one of {', '.join(MODES)}, not {forced!r}")
        mode = forced or self._choose(node, context)
        return Outcome("success", {"heartbeat.mode": mode}, preferred_label=mode)

    @staticmethod
    def _choose(node: Node, context: Mapping[str, Any]) -> str:
        history = context.get("session.history") or ()
        has_goals = context.get("heartbeat.has_goals")
        if has_goals is None:
            has_goals = bool(_goals(context))
        if not history and not has_goals:
            return "idle"
        if has_goals:
            return "plan"
        turns = int(context.get("session.turn_count") or 0)
        every = attr_int(node, "review_every", 10)
        if every and turns and turns % every == 0:
            return "review"
        return "reflect"


class Reflect:
    """Asks the model to reflect on the last ``history`` messages (default 20) and the
    goals, per ``heartbeat.mode``; sets ``heartbeat.reflection`` and ``llm.usage``.

    The transcript goes in one user message, which suits any chat model.  ``system``
    and ``max_tokens`` settings are passed on.
    """

    __slots__ = ("llm",)

    def __init__(self, llm: LLM) -> None:
        self.llm = llm

    async def __call__(self, node: Node, context: Mapping[str, Any]) -> Outcome:
        mode = str(context.get("heartbeat.mode") or "reflect")
        instruction = attr_str(node, "prompt", _INSTRUCTIONS.get(mode, _INSTRUCTIONS["reflect"]))
        lines = [instruction]
        goals = _goals(context)
        if goals:
            lines.append("Goals:\n" + "\n".join(f"- {g}" for g in goals))
        recent = recent_messages(context, attr_int(node, "history", 20))
        if recent:
            lines.append(
                "Conversation:\n" + "\n".join(f"{m['role']}: {m['content']}" for m in recent)
            )
        response = await self.llm.complete(
            [{"role": "user", "content": "\n\n".join(lines)}],
            system=attr_str(node, "system", "You are the agent's reflective inner voice."),
            max_tokens=attr_int(node, "max_tokens", 0) or None,
        )
        updates = {
            "heartbeat.reflection": response.text.strip(),
            "llm.usage": add_usage(context, response),
        }
        return Outcome("success", updates)


class UpdateWorkingMemory:
    """Sets ``memory.working`` to ``{"cognitive_mode": mode, "reflected_at_turn": n}``
    plus ``last_reflection`` (cut to ``max_chars``, default 2000) when there is one."""

    __slots__ = ()

    def __call__(self, node: Node, context: Mapping[str, Any]) -> Outcome:
        working: dict[str, Any] = {
            "cognitive_mode": str(context.get("heartbeat.mode") or "idle"),
            "reflected_at_turn": int(context.get("session.turn_count") or 0),
        }
        reflection = str(context.get("heartbeat.reflection") or "")
        if reflection:
            working["last_reflection"] = reflection[: attr_int(node, "max_chars", 2000)]
        return Outcome("success", {"memory.working": working})
