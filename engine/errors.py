"""Every error turngraph raises, in one shallow tree named by who is at fault.

::

    TurngraphError
    ├── GraphError                 the user's DOT
    │   ├── GraphFileError         missing, a directory, empty, binary, unreadable
    │   ├── DotSyntaxError         path, line, col, source line
    │   └── GraphValidationError   every Issue at once
    ├── RunError                   a run could not finish
    │   ├── HandlerError           a node failed: node id, attempt, cause
    │   │   └── HandlerTimeout     a node exceeded its ``timeout``
    │   ├── NoRouteError           no edge could be taken out of a node
    │   ├── MaxStepsExceeded       a cycle ran past ``max_steps``
    │   ├── JoinError              a parallel fan-in could not join: node, policy, branches
    │   │   ├── JoinTimeout        the fan-in's ``timeout`` passed first
    │   │   └── MergeConflict      two branches wrote one key with no ``merge`` declared
    │   ├── GoalGateUnmet          an exit was reached with a ``goal_gate`` not succeeded
    │   ├── GatePaused             a human gate waits for an answer (a pause, not a failure)
    │   └── TurnTimeout            a whole run exceeded its deadline (``turn_timeout``)
    ├── AdapterError               an LLM, memory or tools backend failed
    │   ├── TransientAdapterError  ...and trying again may help (retryable)
    │   ├── LLMSpecError           ``--llm`` / ``from_spec`` names no known model provider
    │   ├── ShellDisabled          a node's ``tool_command`` while shell commands are off
    │   ├── MissingExtraError      the provider's SDK is not installed (names the pip command)
    │   └── ProviderError          a model provider answered badly: provider, host, status
    │       ├── ProviderAuthError      401/403: not retried, check the key
    │       ├── ProviderRequestError   400 and other 4xx: not retried, the server's message
    │       ├── ProviderResponseError  malformed JSON or SSE
    │       └── TransientProviderError (also a TransientAdapterError: retried)
    │           ├── ProviderConnectionError  refused, reset, DNS
    │           ├── ProviderTimeout          no answer in time
    │           ├── RateLimited              429, with the server's ``retry_after``
    │           ├── ProviderServerError      5xx
    │           └── StreamInterrupted        the stream ended before the reply did
    ├── SessionError               (sessions.errors) one session: id, not found, busy
    └── StoreError                 (sessions.errors) the durable store

Exceptions carry fields; their message is built from the fields, so callers never
parse prose.  The engine core knows nothing of sessions, so session and store errors
live with them, in :mod:`sessions.errors`; every one of them is still a
:class:`TurngraphError`, the single root importable from :mod:`engine`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "AdapterError",
    "DotSyntaxError",
    "GatePaused",
    "GoalGateUnmet",
    "GraphError",
    "GraphFileError",
    "GraphValidationError",
    "HandlerError",
    "HandlerTimeout",
    "Issue",
    "JoinError",
    "JoinTimeout",
    "LLMSpecError",
    "MaxStepsExceeded",
    "MergeConflict",
    "MissingExtraError",
    "NoRouteError",
    "ProviderAuthError",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderRequestError",
    "ProviderResponseError",
    "ProviderServerError",
    "ProviderTimeout",
    "RateLimited",
    "RunError",
    "ShellDisabled",
    "StreamInterrupted",
    "TransientAdapterError",
    "TransientProviderError",
    "TurnTimeout",
    "TurngraphError",
]


class TurngraphError(Exception):
    """Base of every error turngraph raises on purpose."""


# --------------------------------------------------------------------------- graphs


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem found in a graph, located in its source.

    ``line`` and ``col`` are 1-based; 0 means "not known" (for instance a rule that
    concerns the whole graph).  ``str(issue)`` is the compiler-style one-liner the CLI
    prints: ``path:line:col: error: message``.
    """

    severity: Literal["error", "warning"]
    message: str
    path: str = "<string>"
    line: int = 0
    col: int = 0
    node: str | None = None
    edge: tuple[str, str] | None = None

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.severity}: {self.message}"


class GraphError(TurngraphError):
    """The user's graph cannot be used.  ``path`` names the file (or ``<string>``)."""

    def __init__(self, message: str, *, path: str = "<string>") -> None:
        super().__init__(message)
        self.path = path


class GraphFileError(GraphError):
    """The graph file is missing, a directory, empty, binary or unreadable."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: error: {reason}", path=path)
        self.reason = reason


class DotSyntaxError(GraphError):
    """The DOT text does not parse.  Carries where, and the offending source line."""

    def __init__(self, path: str, line: int, col: int, reason: str, source_line: str = "") -> None:
        super().__init__(f"{path}:{line}:{col}: error: {reason}", path=path)
        self.line = line
        self.col = col
        self.reason = reason
        self.source_line = source_line


class GraphValidationError(GraphError):
    """The graph parsed but breaks one or more rules; ``issues`` holds all of them."""

    def __init__(self, path: str, issues: tuple[Issue, ...]) -> None:
        errors = [i for i in issues if i.severity == "error"]
        head = f"{path}: {len(errors)} error{'s' if len(errors) != 1 else ''}"
        super().__init__(head + "".join(f"\n  {i}" for i in issues), path=path)
        self.issues = issues

    @property
    def errors(self) -> tuple[Issue, ...]:
        """Only the issues of severity ``error``."""
        return tuple(i for i in self.issues if i.severity == "error")


# --------------------------------------------------------------------------- runs


class RunError(TurngraphError):
    """A run of a graph could not finish."""


class HandlerError(RunError):
    """A node's handler failed (raised, or returned a failing outcome with no route).

    ``cause`` is the original exception when there was one (also ``__cause__``).
    """

    def __init__(
        self,
        node_id: str,
        handler: str,
        attempt: int,
        reason: str,
        cause: BaseException | None = None,
    ) -> None:
        super().__init__(
            f"node {node_id!r} (handler {handler!r}) failed on attempt {attempt}: {reason}"
        )
        self.node_id = node_id
        self.handler = handler
        self.attempt = attempt
        self.reason = reason
        self.cause = cause


class HandlerTimeout(HandlerError):
    """A node did not finish within its ``timeout``."""

    def __init__(self, node_id: str, handler: str, attempt: int, timeout: float) -> None:
        super().__init__(node_id, handler, attempt, f"timed out after {timeout:g}s")
        self.timeout = timeout


class NoRouteError(RunError):
    """No outgoing edge of a node could be taken."""

    def __init__(self, node_id: str, status: str) -> None:
        super().__init__(f"no edge out of node {node_id!r} matches outcome {status!r}")
        self.node_id = node_id
        self.status = status


class MaxStepsExceeded(RunError):
    """A run visited more nodes than its ``max_steps`` allows (a runaway cycle)."""

    def __init__(self, max_steps: int, node_id: str) -> None:
        super().__init__(f"run exceeded max_steps={max_steps} at node {node_id!r}")
        self.max_steps = max_steps
        self.node_id = node_id


class JoinError(RunError):
    """A fan-in could not join its branches under its ``join`` policy."""

    def __init__(self, node_id: str, policy: str, reason: str, branches: tuple[str, ...]) -> None:
        super().__init__(f"parallel join at node {node_id!r} (join={policy}) failed: {reason}")
        self.node_id = node_id
        self.policy = policy
        self.reason = reason
        self.branches = branches
        """The branches at fault (failed, unfinished or conflicting), in branch order."""


class JoinTimeout(JoinError):
    """The fan-in's ``timeout`` passed before its policy was met."""

    def __init__(
        self, node_id: str, policy: str, timeout: float, branches: tuple[str, ...]
    ) -> None:
        names = ", ".join(repr(b) for b in branches)
        super().__init__(
            node_id, policy, f"timed out after {timeout:g}s waiting for {names}", branches
        )
        self.timeout = timeout


class MergeConflict(JoinError):
    """Two branches wrote the same context key and the fan-in declares no ``merge``."""

    def __init__(self, node_id: str, policy: str, key: str, branches: tuple[str, str]) -> None:
        reason = (
            f"branches {branches[0]!r} and {branches[1]!r} both wrote {key!r}; "
            "declare merge=last_writer or merge=list on the fan-in"
        )
        super().__init__(node_id, policy, reason, branches)
        self.key = key


class GoalGateUnmet(RunError):
    """The run reached an exit while a ``goal_gate`` node had not succeeded."""

    def __init__(self, node_id: str, exit_id: str, tries: int) -> None:
        super().__init__(
            f"goal gate {node_id!r} not met at exit {exit_id!r} (after {tries} retries)"
        )
        self.node_id = node_id
        self.exit_id = exit_id
        self.tries = tries


class GatePaused(RunError):
    """A human gate (``wait.human``) has no answer yet: the walk stops there, durably.

    Not a failure: :meth:`Engine.run` returns ``RunResult(status="paused")`` carrying
    it, and a session stores the pause for ``answer()``.  ``timeout`` is the gate's own
    (seconds, ``None``: waits for ever); ``default`` the choice taken when it passes.
    """

    def __init__(
        self,
        node_id: str,
        question: str,
        choices: tuple[str, ...],
        default: str | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(f"node {node_id!r} waits for a human answer: {question}")
        self.node_id = node_id
        self.question = question
        self.choices = choices
        self.default = default
        self.timeout = timeout


class TurnTimeout(RunError):
    """A whole run did not reach an exit within its deadline.

    ``timeout`` is the deadline in seconds, ``node_id`` the node that was running when
    it passed (``None`` if none had started).
    """

    def __init__(self, timeout: float, node_id: str | None) -> None:
        where = f" in node {node_id!r}" if node_id is not None else ""
        super().__init__(f"turn timed out after {timeout:g}s{where}")
        self.timeout = timeout
        self.node_id = node_id


# --------------------------------------------------------------------------- adapters


class AdapterError(TurngraphError):
    """An adapter (LLM, memory, tools) failed.  ``adapter`` names which one."""

    def __init__(self, adapter: str, reason: str) -> None:
        super().__init__(f"{adapter}: {reason}")
        self.adapter = adapter
        self.reason = reason


class TransientAdapterError(AdapterError):
    """An adapter failure that may succeed if tried again (timeouts, 5xx, resets).

    The runner retries a node whose handler raises this, within the node's policy.
    ``retry_after`` is how many seconds the backend asked to be left alone (a 429's
    ``Retry-After``), or ``None``: the runner waits at least that long before the next
    attempt, or fails the node at once when it exceeds the node's ``retry.max_delay``.
    """

    retry_after: float | None = None


class ShellDisabled(AdapterError):
    """A node asked to run a shell command (``tool_command``) and shell commands are off.

    ``node_id`` names the node; the message says how to turn them on.
    """

    def __init__(self, node_id: str) -> None:
        super().__init__(
            "shell",
            f"node {node_id!r}: tool_command is refused: shell commands are off; enable "
            "them with --allow-shell (or TURNGRAPH_ALLOW_SHELL=1), or "
            "build_registry(allow_shell=True)",
        )
        self.node_id = node_id


class LLMSpecError(AdapterError):
    """A model spec (``--llm``, ``TURNGRAPH_LLM``, ``from_spec``) names no known provider."""

    def __init__(self, spec: str, reason: str) -> None:
        super().__init__("llm", f"bad model spec {spec!r}: {reason}")
        self.spec = spec


class MissingExtraError(AdapterError):
    """The SDK a chosen provider needs is not installed; the message names the pip command."""

    def __init__(self, provider: str, extra: str) -> None:
        super().__init__(
            provider,
            f"the {provider} SDK is not installed: pip install 'turngraph[{extra}]'",
        )
        self.provider = provider
        self.extra = extra


class ProviderError(AdapterError):
    """A model provider's endpoint failed: which provider, which host, which HTTP status.

    ``host`` is the endpoint's ``host:port`` (never a URL with credentials, never a key);
    ``status`` is the HTTP status, ``None`` when no response arrived.
    """

    def __init__(self, provider: str, host: str, status: int | None, reason: str) -> None:
        shown = f"HTTP {status}: " if status is not None else ""
        super().__init__(provider, f"{host}: {shown}{reason}")
        self.provider = provider
        self.host = host
        self.status = status


class ProviderAuthError(ProviderError):
    """401 or 403: the key is missing, wrong or lacks access.  Never retried."""


class ProviderRequestError(ProviderError):
    """400 and other 4xx: the request was refused; ``reason`` is the server's message."""


class ProviderResponseError(ProviderError):
    """The response was not the provider's format (malformed JSON or SSE)."""


class TransientProviderError(ProviderError, TransientAdapterError):
    """A provider failure that may pass: the node's retry policy tries again."""


class ProviderConnectionError(TransientProviderError):
    """No connection to the endpoint (refused, reset, name not resolved)."""


class ProviderTimeout(TransientProviderError):
    """The endpoint did not answer in time."""


class RateLimited(TransientProviderError):
    """429: too many requests; ``retry_after`` is the server's ``Retry-After`` in seconds."""

    def __init__(self, provider: str, host: str, reason: str, retry_after: float | None) -> None:
        if retry_after is not None:
            reason = f"{reason} (server asked to wait {retry_after:g}s)"
        super().__init__(provider, host, 429, reason)
        self.retry_after = retry_after


class ProviderServerError(TransientProviderError):
    """5xx: the provider failed on its side."""


class StreamInterrupted(TransientProviderError):
    """A streamed reply stopped before its end; the partial reply is never used."""
