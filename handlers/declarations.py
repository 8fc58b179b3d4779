"""What each built-in handler reads and writes, declared once for :func:`build_registry`.

These declarations are the single source for ``validate``'s typo checks
(:mod:`engine.lint`) and for the generated reference page ``docs/handlers.md``.  A
test reads the handler modules and fails when a handler reads an attribute that is not
declared here, or declares one with a different default.
"""

from __future__ import annotations

from engine.registry import Attr, Declaration
from handlers.classify import DEFAULT_DENY
from handlers.heartbeat import MODES
from handlers.llm import DEFAULT_SYSTEM
from handlers.reply import ALIASES, DEFAULT_FALLBACK

__all__ = ["BUILTIN_DECLARATIONS"]

_MAX_TOKENS = Attr("max_tokens", "int", 0, "passed to the model; 0: the model's default")
_HISTORY = Attr("history", "int", 20, "how many recent messages of the history the model sees")

CLASSIFY = Declaration(
    summary="Looks at the turn's input before anything expensive happens: strips it, "
    "blocks empty, over-long, control-character or denied input, and names its intent "
    "(also the preferred label).",
    attrs=(
        Attr("max_chars", "int", 4000, "longer input is blocked; 0: no limit"),
        Attr(
            "deny",
            "text",
            "|".join(DEFAULT_DENY),
            'phrases separated by "|", matched case-insensitively; "" disables the list',
        ),
    ),
    reads=("session.input",),
    writes=("input.text", "input.empty", "input.blocked", "input.reason", "intent"),
    labels=("tool", "command", "question", "chat"),
)

RECALL = Declaration(
    summary="Finds the memory items relevant to the input, best first (none for an empty input).",
    attrs=(
        Attr("limit", "int", 5, "at most this many items; 0: recall nothing"),
        Attr(
            "scope",
            "text",
            "session",
            "session: this session's memory; agent: every session of its agent "
            "(needs the store's memory, SessionManager's default)",
        ),
    ),
    reads=("input.text", "session.input", "session.id", "session.agent_id"),
    writes=("recall.items",),
)

LLM_CALL = Declaration(
    summary="Asks the model for the reply: recent history, then the input (through "
    "``prompt`` when set), then this turn's tool messages; recalled items join the "
    "system prompt.  Tools are offered only with ``tools=true`` and while "
    "``tools.rounds`` is below ``max_tool_rounds``.",
    attrs=(
        Attr("system", "text", DEFAULT_SYSTEM, "the system prompt"),
        _HISTORY,
        _MAX_TOKENS,
        Attr("model", "text", None, "the model for this node; wins over the session's"),
        Attr("temperature", "float", None, "sampling temperature, 0 to 2; the model's default"),
        Attr(
            "prompt",
            "template",
            None,
            "the user message; {input} is the input, {KEY} any context key",
        ),
        Attr("tools", "bool", False, "offer the tools to the model"),
        Attr("max_tool_rounds", "int", 3, "stop offering tools after this many rounds"),
    ),
    reads=(
        "session.history",
        "input.text",
        "session.input",
        "recall.items",
        "tools.rounds",
        "turn.messages",
        "llm.usage",
        "llm.calls",
    ),
    writes=(
        "llm.text",
        "llm.tool_calls",
        "llm.model",
        "llm.usage",
        "llm.calls",
        "llm.wants_tools",
    ),
    labels=("tools", "reply"),
    aliases={"input": "input.text"},
)

DISPATCH_TOOLS = Declaration(
    summary="Runs the tool calls the model asked for, in order, and hands the request "
    "and the results back to the next ``llm_call`` through ``turn.messages``; a bad "
    "call becomes an error result for the model to read.",
    attrs=(Attr("max_calls", "int", 8, "at most this many calls a round"),),
    reads=("llm.tool_calls", "turn.messages", "tools.results", "tools.rounds"),
    writes=("tools.results", "tools.rounds", "turn.messages", "llm.wants_tools"),
)

TOOL = Declaration(
    summary="Calls one tool itself (``shape=parallelogram``); a tool error fails the node.",
    attrs=(Attr("tool", "text", None, "the tool's name (required)"),),
    attr_prefixes=("arg.",),
    reads=("tools.results",),
    writes=("tool.result", "tools.results"),
)

FORMAT = Declaration(
    summary="Sets the final ``reply``: a fixed ``reply``, else the ``template``, else "
    "the model's text; normalised, cut to ``max_chars``, ``fallback`` when empty.",
    attrs=(
        Attr("reply", "template", None, "a fixed answer (placeholders are filled)"),
        Attr("template", "template", None, "the answer, with placeholders filled"),
        Attr("max_chars", "int", 0, "cut longer replies (with an ellipsis); 0: no limit"),
        Attr("fallback", "text", DEFAULT_FALLBACK, "the reply when the text is empty"),
    ),
    reads=("llm.text",),
    writes=("reply",),
    aliases=ALIASES,
)

UPDATE_MEMORY = Declaration(
    summary="Remembers the exchange (not blocked or empty input) and sets working "
    "memory's last intent and topic.  With the store's memory the exchange goes into "
    "``memory.pending`` and is written in the turn's own commit (a failed turn "
    "remembers nothing).",
    attrs=(Attr("topic_words", "int", 3, "keywords of the input kept as the topic"),),
    reads=(
        "input.text",
        "session.input",
        "input.blocked",
        "reply",
        "intent",
        "session.id",
        "session.turn_count",
        "memory.pending",
    ),
    writes=("memory.working", "memory.stored", "memory.pending"),
)

CHECK_GOALS = Declaration(
    summary="Collects the session's non-blank goals.",
    reads=("session.goals",),
    writes=("heartbeat.goals", "heartbeat.has_goals"),
)

CHOOSE_MODE = Declaration(
    summary="Chooses the heartbeat's mode (also its preferred label): idle without "
    "history or goals, plan with goals, review every ``review_every`` turns, else reflect.",
    attrs=(
        Attr("mode", "text", "", f"force a mode: {', '.join(MODES)}"),
        Attr("review_every", "int", 10, "review every this many turns; 0: never"),
    ),
    reads=("session.history", "session.goals", "session.turn_count", "heartbeat.has_goals"),
    writes=("heartbeat.mode",),
    labels=MODES,
)

REFLECT = Declaration(
    summary="Asks the model to reflect on the recent conversation and the goals, as "
    "``heartbeat.mode`` says.",
    attrs=(
        Attr("prompt", "text", None, "the instruction (default: one per mode)"),
        _HISTORY,
        Attr("system", "text", "You are the agent's reflective inner voice.", "system prompt"),
        _MAX_TOKENS,
    ),
    reads=("heartbeat.mode", "session.goals", "session.history", "llm.usage"),
    writes=("heartbeat.reflection", "llm.usage"),
)

UPDATE_WORKING_MEMORY = Declaration(
    summary="Records the heartbeat's mode, turn and reflection in working memory.",
    attrs=(Attr("max_chars", "int", 2000, "the reflection kept is cut to this length"),),
    reads=("heartbeat.mode", "heartbeat.reflection", "session.turn_count"),
    writes=("memory.working",),
)

CODERGEN = Declaration(
    summary="Attractor's LLM task (``box`` in the attractor dialect): sends ``prompt`` "
    "(else the label; ``$goal`` expanded at load) to the model, asking for ``llm_model`` "
    "(from the node or the graph's ``model_stylesheet``).  A JSON status ending the "
    "reply (``outcome``, ``preferred_label``, ``context_updates``...) makes its outcome.",
    attrs=(
        Attr("prompt", "text", "", "the instruction (default: the node's label)"),
        Attr("llm_model", "text", "", "the model asked for; the adapter's default when empty"),
    ),
    reads=("llm.usage", "llm.calls"),
    writes=(
        "last_stage",
        "last_response",
        "llm.text",
        "llm.model",
        "llm.usage",
        "llm.calls",
        "reply",
        "preferred_label",
        "*",
    ),
)

SHELL = Declaration(
    summary="Runs ``tool_command`` with ``/bin/sh`` (``parallelogram`` in the attractor "
    "dialect), only when shell commands are enabled (``--allow-shell``); a nonzero exit "
    "or the ``timeout`` fails the node.",
    attrs=(Attr("tool_command", "text", "", "the shell command (required)"),),
    writes=("tool.output", "tool.last_line", "tool.stderr", "tool.exit_code"),
)

BUILTIN_DECLARATIONS = {
    "classify": CLASSIFY,
    "recall": RECALL,
    "llm_call": LLM_CALL,
    "dispatch_tools": DISPATCH_TOOLS,
    "tool": TOOL,
    "format": FORMAT,
    "update_memory": UPDATE_MEMORY,
    "check_goals": CHECK_GOALS,
    "choose_mode": CHOOSE_MODE,
    "reflect": REFLECT,
    "update_working_memory": UPDATE_WORKING_MEMORY,
    "codergen": CODERGEN,
    "shell": SHELL,
}
"""Handler name → its declaration (the structural no-ops are declared by the registry)."""
