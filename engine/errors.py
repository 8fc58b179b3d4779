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
    │   └── MaxStepsExceeded       a cycle ran past ``max_steps``
    ├── AdapterError               an LLM, memory or tools backend failed
    │   └── TransientAdapterError  ...and trying again may help (retryable)
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
    "GraphError",
    "GraphFileError",
    "GraphValidationError",
    "HandlerError",
    "HandlerTimeout",
    "Issue",
    "MaxStepsExceeded",
    "NoRouteError",
    "RunError",
    "TransientAdapterError",
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
    """
