"""OpenTelemetry spans for a manager's turns, after the GenAI semantic conventions.

::

    invoke_workflow turn                       one per turn: gen_ai.conversation.id, turn, status
    ├── node classify                          one per node visit: handler, attempts, status
    ├── node search      (turngraph.branch=a)  a visit inside parallel branch ``a``
    ├── node llm_call    (event: retry)        a failed attempt that is tried again
    │   └── chat MODEL                         one per model call: model, provider, tokens
    └── node dispatch_tools
        └── execute_tool NAME                  one per tool call: tool name, call id

Only ``opentelemetry-api`` is used (the ``otel`` extra): the application configures the
tracer provider and its exporters, turngraph never does.  A :class:`TurnSpans` is one
turn's observer: events arrive inline on the engine's task, so every span is started
with an explicit parent (the turn's span, or the node's) rather than the ambient
context, and :meth:`TurnSpans.end` closes whatever a failed or cancelled turn left
open.  Message content (the turn's input, replies, tool arguments and results) is
recorded only when ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` is true.

With telemetry off (the default) no observer exists and a turn pays one attribute test.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from engine.errors import MissingExtraError
from engine.events import (
    Event,
    NodeCompleted,
    NodeFailed,
    NodeRetrying,
    NodeStarted,
    TextDelta,
    ToolCallCompleted,
    ToolCallRequested,
)
from engine.parallel import current_branch

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer, TracerProvider

    from engine.graph import Graph

__all__ = ["CAPTURE_ENV", "ENABLE_ENV", "Telemetry", "TurnSpans", "telemetry_for"]

CAPTURE_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
"""Set to ``true`` to record message content on spans (off by default: it may be private)."""
ENABLE_ENV = "TURNGRAPH_OTEL"
"""Set to ``1``/``true`` to trace every manager built without ``telemetry=`` (the CLI too)."""

Visit = tuple[str, str | None]
"""A node visit's key: (node id, parallel branch or None)."""

CHAT_HANDLERS = frozenset({"llm_call", "reflect"})
"""Handlers whose attempts are model calls (a ``chat`` span each)."""

_TRUE = frozenset({"1", "true", "yes", "on"})


class TurnResult(Protocol):
    """What :meth:`TurnSpans.end` reads of a :class:`~sessions.turn_result.TurnResult`."""

    @property
    def ok(self) -> bool:
        """The turn succeeded."""
        ...

    @property
    def reply(self) -> str:
        """The reply committed."""
        ...

    @property
    def error(self) -> BaseException | None:
        """Why the turn failed."""
        ...


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def _user_message(text: str) -> str:
    return json.dumps([{"role": "user", "parts": [{"type": "text", "content": text}]}])


def _assistant_message(text: str) -> str:
    return json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": text}]}])


class Telemetry:
    """Makes the spans of a manager's turns (pass it as ``SessionManager(telemetry=...)``).

    ``tracer_provider`` defaults to the global one (set by the application).
    ``capture_content`` defaults to ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``
    (read once, here).  ``provider`` and ``model`` name the model adapter for
    ``gen_ai.provider.name`` and ``gen_ai.request.model`` (a node's ``model`` setting
    wins); the manager fills them from its adapter when left empty.  Raises
    :class:`~engine.errors.MissingExtraError` when ``opentelemetry-api`` is missing.
    """

    __slots__ = ("_api", "_tracer", "capture_content", "model", "provider")

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        *,
        capture_content: bool | None = None,
        provider: str = "",
        model: str = "",
    ) -> None:
        try:
            from opentelemetry import trace
        except ImportError as exc:
            raise MissingExtraError("opentelemetry", "otel") from exc
        self._api = trace
        self._tracer: Tracer = trace.get_tracer("turngraph", tracer_provider=tracer_provider)
        if capture_content is None:
            capture_content = _env_true(CAPTURE_ENV)
        self.capture_content = capture_content
        self.provider = provider
        self.model = model

    def describe(self, llm: object) -> None:
        """Name the model adapter ``llm`` (its ``provider``/``name`` and ``model``), unless set."""
        if llm is None:
            return
        if not self.provider:
            self.provider = str(
                getattr(llm, "provider", "") or getattr(llm, "name", "") or type(llm).__name__
            )
        if not self.model:
            self.model = str(getattr(llm, "model", "") or "")

    def turn(self, session_id: str, turn: int, graph: Graph, text: str) -> TurnSpans:
        """Start the span of turn ``turn`` of session ``session_id`` running ``graph``."""
        return TurnSpans(self, session_id, turn, graph, text)


def telemetry_for(value: bool | Telemetry | None, llm: object) -> Telemetry | None:
    """The manager's telemetry: ``None`` follows ``TURNGRAPH_OTEL`` (off when unset),
    ``True`` builds one with the global tracer provider, ``False`` is off."""
    if value is None:
        value = _env_true(ENABLE_ENV)
    if value is False:
        return None
    tel = Telemetry() if value is True else value
    tel.describe(llm)
    return tel


class TurnSpans:
    """One turn's spans: an observer of the turn's events, ended by :meth:`end`.

    Install it as an observer only when ``recording``: it is false without an SDK or when
    the sampler dropped the turn, and then the turn's children would be dropped too (as
    the default parent-based sampler does), so nobody needs its events and an unsampled
    turn costs the engine nothing beyond the no-op turn span.
    """

    __slots__ = (
        "_api",
        "_args",
        "_chat",
        "_ctx",
        "_graph",
        "_mark",
        "_nodes",
        "_reply",
        "_tel",
        "_text",
        "recording",
        "span",
    )

    def __init__(self, tel: Telemetry, session_id: str, turn: int, graph: Graph, text: str) -> None:
        api = self._api = tel._api
        self._tel = tel
        self._graph = graph
        self._text = text
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "invoke_workflow",
            "gen_ai.conversation.id": session_id,
            "turngraph.turn": turn,
            "turngraph.graph": graph.name,
        }
        if tel.capture_content:
            attrs["gen_ai.input.messages"] = _user_message(text)
        self.span: Span = tel._tracer.start_span(f"invoke_workflow {graph.name}", attributes=attrs)
        self.recording = self.span.is_recording()
        self._ctx = api.set_span_in_context(self.span)
        # Keyed by visit, (node id, parallel branch): one node may run in two branches.
        self._nodes: dict[Visit, Span] = {}  # visit -> its open span
        self._chat: dict[Visit, Span] = {}  # visit -> its open model call
        self._reply: dict[Visit, list[str]] = {}  # visit -> streamed text (content capture)
        self._args: dict[str, str] = {}  # call id -> arguments JSON (content capture)
        self._mark: dict[Visit, int] = {}  # visit -> when its next tool call began (ns)

    # ------------------------------------------------------------------ events

    def __call__(self, event: Event) -> None:
        if isinstance(event, NodeStarted):
            self._node_started(event)
        elif isinstance(event, TextDelta):
            pieces = self._reply.get(_visit(event.node_id)) if self._reply else None
            if pieces is not None:
                pieces.append(event.text)
        elif isinstance(event, NodeCompleted):
            key = _visit(event.node_id)
            self._node_ended(key, event.status, event.attempts, event.duration)
            chat = self._chat.pop(key, None)
            if chat is not None:
                self._chat_ended(key, chat, event)
            self._end_node(key, None)
        elif isinstance(event, NodeFailed):
            key = _visit(event.node_id)
            self._node_ended(key, "fail", event.attempts, event.duration)
            chat = self._chat.pop(key, None)
            if chat is not None:
                self._fail(chat, event.reason)
            self._end_node(key, event.reason)
        elif isinstance(event, NodeRetrying):
            self._retrying(event)
        elif isinstance(event, ToolCallRequested):
            if self._tel.capture_content:
                self._args[event.call_id] = json.dumps(dict(event.arguments), default=str)
        elif isinstance(event, ToolCallCompleted):
            self._tool(event)

    def _node_started(self, event: NodeStarted) -> None:
        attrs = {"turngraph.node.id": event.node_id, "turngraph.node.handler": event.handler}
        if event.branch is not None:  # a parallel branch's visit: siblings overlap in time
            attrs["turngraph.branch"] = event.branch
        span = self._child(f"node {event.node_id}", self._ctx, attrs)
        key = _visit(event.node_id)
        self._nodes[key] = span
        self._mark[key] = time.time_ns()
        if event.handler in CHAT_HANDLERS:
            self._start_chat(key, span)

    def _child(self, name: str, parent: Any, attrs: Mapping[str, Any], **kw: Any) -> Span:
        return self._tel._tracer.start_span(name, context=parent, attributes=attrs, **kw)

    def _start_chat(self, key: Visit, node_span: Span) -> None:
        tel = self._tel
        node = self._graph.nodes.get(key[0])
        model = str(node.attrs.get("model", "") or "") if node is not None else ""
        model = model or tel.model
        attrs: dict[str, Any] = {"gen_ai.operation.name": "chat"}
        if tel.provider:
            attrs["gen_ai.provider.name"] = tel.provider
        if model:
            attrs["gen_ai.request.model"] = model
        if tel.capture_content:
            attrs["gen_ai.input.messages"] = _user_message(self._text)
            self._reply[key] = []
        kind = self._api.SpanKind.CLIENT
        ctx = self._api.set_span_in_context(node_span)
        name = f"chat {model}" if model else "chat"
        self._chat[key] = self._child(name, ctx, attrs, kind=kind)

    def _chat_ended(self, key: Visit, chat: Span, event: NodeCompleted) -> None:
        usage = event.usage
        if usage is not None:
            if usage.model:
                chat.set_attribute("gen_ai.response.model", usage.model)
            chat.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
            chat.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
        pieces = self._reply.pop(key, None)
        if pieces:
            chat.set_attribute("gen_ai.output.messages", _assistant_message("".join(pieces)))
        chat.end()

    def _retrying(self, event: NodeRetrying) -> None:
        key = _visit(event.node_id)
        span = self._nodes.get(key)
        if span is None:
            return
        span.add_event(
            "retry",
            {
                "turngraph.attempt": event.attempt,
                "turngraph.retry.delay": event.delay,
                "turngraph.retry.reason": event.reason,
            },
        )
        self._mark[key] = time.time_ns()  # the next attempt's tool calls
        chat = self._chat.pop(key, None)
        if chat is not None:  # that model call failed; the next attempt is a new one
            self._reply.pop(key, None)
            self._fail(chat, event.reason)
            self._start_chat(key, span)

    def _tool(self, event: ToolCallCompleted) -> None:
        key = _visit(event.node_id)
        parent = self._nodes.get(key)
        ctx = self._api.set_span_in_context(parent) if parent is not None else self._ctx
        now = time.time_ns()
        start = self._mark.get(key, now)
        self._mark[key] = now
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": event.name,
            "gen_ai.tool.call.id": event.call_id,
            "gen_ai.tool.type": "function",
        }
        if self._tel.capture_content:
            args = self._args.pop(event.call_id, None)
            if args is not None:
                attrs["gen_ai.tool.call.arguments"] = args
            attrs["gen_ai.tool.call.result"] = event.content
        span = self._child(f"execute_tool {event.name}", ctx, attrs, start_time=start)
        if event.is_error:
            self._fail(span, "tool error", end=False)
        span.end(end_time=now)

    def _node_ended(self, key: Visit, status: str, attempts: int, duration: float) -> None:
        span = self._nodes.get(key)
        if span is not None:
            span.set_attributes(
                {
                    "turngraph.node.status": status,
                    "turngraph.node.attempts": attempts,
                    "turngraph.node.duration": duration,
                }
            )

    def _end_node(self, key: Visit, error: str | None) -> None:
        span = self._nodes.pop(key, None)
        self._mark.pop(key, None)
        if span is None:
            return
        if error is not None:
            self._fail(span, error)
        else:
            span.end()

    def _fail(self, span: Span, description: str, *, end: bool = True) -> None:
        """Mark ``span`` failed (``description`` says why; ``error.type`` stays a short
        category, as the conventions ask) and end it unless ``end`` is false."""
        span.set_status(self._api.Status(self._api.StatusCode.ERROR, description))
        span.set_attribute("error.type", "cancelled" if description == "cancelled" else "fail")
        if end:
            span.end()

    # ------------------------------------------------------------------ the end

    def end(self, result: TurnResult | None, exc: BaseException | None = None) -> None:
        """End the turn's span (and any span a failed or cancelled turn left open).

        ``result`` is the committed turn; ``exc`` what ended it otherwise (a
        cancellation, a store failure), recorded on the span as an error.
        """
        if exc is not None:
            why = "cancelled" if _is_cancel(exc) else type(exc).__name__
        elif result is not None and not result.ok:
            why = "fail"
        else:
            why = ""
        for key in list(self._chat):
            self._fail(self._chat.pop(key), why or "unfinished")
        for key in list(self._nodes):
            self._end_node(key, why or "unfinished")
        span = self.span
        span.set_attribute("turngraph.turn.status", why or "success")
        if result is not None and result.ok and self._tel.capture_content:
            span.set_attribute("gen_ai.output.messages", _assistant_message(result.reply))
        if exc is not None and why != "cancelled":
            span.record_exception(exc)
        if why:
            detail = str(result.error) if result is not None and result.error else why
            span.set_status(self._api.Status(self._api.StatusCode.ERROR, detail))
            span.set_attribute("error.type", why if why != "fail" else _error_type(result))
        span.end()


def _visit(node_id: str) -> Visit:
    """The visit an event belongs to.  Observers are called inline, in the task that
    emitted the event, so the branch running there is the event's branch."""
    return node_id, current_branch()


def _error_type(result: TurnResult | None) -> str:
    err = result.error if result is not None else None
    return type(err).__name__ if err is not None else "fail"


def _is_cancel(exc: BaseException) -> bool:
    import anyio

    return isinstance(exc, anyio.get_cancelled_exc_class())
