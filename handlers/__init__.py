"""Built-in handlers for turn and heartbeat graphs, and :func:`build_registry`.

::

    from handlers import build_registry
    registry = build_registry()                    # offline defaults: EchoModel,
    registry = build_registry(llm=my_model)        # KeywordMemory, ToolBox

Each handler is a small object built with the adapters it needs (no module globals),
called as ``handler(node, context)``; a node's settings come from its DOT attributes
(``prompt``, ``system``, ``max_tokens``, ``template``...).  What each reads and writes is
declared in :mod:`handlers.declarations` (``validate`` checks graphs against it, and
``docs/handlers.md`` is generated from it).

Context keys
------------
What a session puts in (read-only for handlers):

===========================  ===============================================================
``session.input``            the user's text for this turn (``str``)
``session.history``          read-only sequence of earlier messages: objects with ``.role``
                             and ``.content`` (``sessions.store.base.Message``) or dicts
``session.id``               the session id (memory is partitioned by it)
``session.agent_id``         the session's agent (``recall scope=agent`` searches its sessions)
``session.turn_count``       turns completed before this one
``session.goals``            the session's goals (sequence of ``str``)
``session.working_memory``   the session's working memory (mapping)
===========================  ===============================================================

What a session takes out after the run:

===========================  ===============================================================
``reply``                    the answer (``str``), set by ``format``
``memory.working``           optional dict of working-memory *updates* (merged by the session)
``turn.messages``            optional list of extra ``{role, content[, meta]}`` dicts (tool
                             calls and results) appended to the history before the reply
``memory.pending``           ``{text, kind, meta}`` dicts that ``update_memory`` left for
                             the store's recall memory, committed with the turn
===========================  ===============================================================

Keys the built-ins exchange among themselves: ``input.text``, ``input.empty``,
``input.blocked``, ``input.reason``, ``intent`` (classify); ``recall.items`` (recall);
``llm.text``, ``llm.tool_calls``, ``llm.model``, ``llm.usage``, ``llm.calls``,
``llm.wants_tools`` (llm_call); ``tools.results``, ``tools.rounds`` (dispatch_tools);
``memory.stored`` (update_memory); ``heartbeat.goals``, ``heartbeat.has_goals``,
``heartbeat.mode``, ``heartbeat.reflection`` (heartbeat).  Conditions read them as
``context.input.blocked=true``, ``context.heartbeat.mode=plan``.
"""

from __future__ import annotations

from engine.registry import STRUCTURAL, Handler, HandlerRegistry
from handlers.adapters import LLM, EchoModel, KeywordMemory, Memory, ToolBox, Tools
from handlers.attractor import Codergen, Shell
from handlers.basic import Passthrough
from handlers.classify import Classify
from handlers.declarations import BUILTIN_DECLARATIONS
from handlers.heartbeat import CheckGoals, ChooseMode, Reflect, UpdateWorkingMemory
from handlers.llm import DispatchTools, LLMCall, ToolNode
from handlers.memory import Recall, UpdateMemory
from handlers.reply import Format

__all__ = [
    "BUILTIN_NAMES",
    "CheckGoals",
    "ChooseMode",
    "Classify",
    "Codergen",
    "DispatchTools",
    "Format",
    "LLMCall",
    "Passthrough",
    "Recall",
    "Reflect",
    "Shell",
    "ToolNode",
    "UpdateMemory",
    "UpdateWorkingMemory",
    "build_registry",
]

BUILTIN_NAMES = frozenset(
    {
        "start",
        "exit",
        "done",
        "conditional",
        "parallel",
        "parallel.fan_in",
        "subgraph",
        "wait.human",
        "classify",
        "recall",
        "llm_call",
        "dispatch_tools",
        "tool",
        "format",
        "update_memory",
        "check_goals",
        "choose_mode",
        "reflect",
        "update_working_memory",
        "codergen",
        "shell",
    }
)
"""Every handler name :func:`build_registry` registers."""


def build_registry(
    *,
    llm: LLM | str | None = None,
    memory: Memory | None = None,
    tools: Tools | None = None,
    allow_shell: bool = False,
) -> HandlerRegistry:
    """A fresh registry of every built-in handler (:data:`BUILTIN_NAMES`).

    ``allow_shell`` lets ``shell`` nodes (Attractor's ``tool_command``) run their
    commands; without it they fail with :class:`~engine.errors.ShellDisabled`.

    ``llm`` is an adapter or a spec for :func:`~handlers.adapters.spec.from_spec`
    (``"openai:gpt-4.1-mini"``).  Adapters left ``None`` get offline defaults: :class:`EchoModel`,
    :class:`KeywordMemory` and :class:`ToolBox`.  The registry is the caller's to
    extend (``@registry.handler("mine")``) or to override (``replace=True``).
    """
    if isinstance(llm, str):
        from handlers.adapters.spec import from_spec

        llm = from_spec(llm)
    llm = llm if llm is not None else EchoModel()
    memory = memory if memory is not None else KeywordMemory()
    tools = tools if tools is not None else ToolBox()
    nothing = Passthrough()
    registry = HandlerRegistry()
    for name in ("start", "exit", "done", "conditional"):
        registry.register(name, nothing, declares=STRUCTURAL)
    built: dict[str, Handler] = {
        "classify": Classify(),
        "recall": Recall(memory),
        "llm_call": LLMCall(llm, tools),
        "dispatch_tools": DispatchTools(tools),
        "tool": ToolNode(tools),
        "format": Format(),
        "update_memory": UpdateMemory(memory),
        "check_goals": CheckGoals(),
        "choose_mode": ChooseMode(),
        "reflect": Reflect(llm),
        "update_working_memory": UpdateWorkingMemory(),
        "codergen": Codergen(llm),
        "shell": Shell(allowed=allow_shell),
    }
    for name, handler in built.items():
        registry.register(name, handler, declares=BUILTIN_DECLARATIONS[name])
    return registry
