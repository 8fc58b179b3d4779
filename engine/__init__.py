"""turngraph's engine: load a DOT turn graph, run it over a context map.

::

    from engine import Engine, HandlerRegistry, Outcome, load_graph

    graph = load_graph("graphs/turn.dot")
    result = await Engine(registry).run(graph, {"session.input": "hi"})

Everything public is re-exported here on purpose; the submodules are implementation.

Names are imported on first use (PEP 562): ``import engine`` or ``import engine.dot``
does not import the runner, the events or anyio, and a process that only reads
graphs, or finds its graph in the cache, pays for nothing else.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.errors import (
        AdapterError,
        DotSyntaxError,
        GatePaused,
        GoalGateUnmet,
        GraphError,
        GraphFileError,
        GraphValidationError,
        HandlerError,
        HandlerTimeout,
        Issue,
        JoinError,
        JoinTimeout,
        MaxStepsExceeded,
        MergeConflict,
        NoRouteError,
        RunError,
        TransientAdapterError,
        TurngraphError,
        TurnTimeout,
    )
    from engine.events import (
        Event,
        NodeCompleted,
        NodeFailed,
        NodeRetrying,
        NodeStarted,
        Observer,
        RunCompleted,
        RunFailed,
        RunPaused,
        RunStarted,
        StructlogObserver,
    )
    from engine.graph import Condition, Edge, Graph, Node, RetryPolicy, Value
    from engine.loader import load_graph
    from engine.outcome import NodeRecord, Outcome, RunResult, Status
    from engine.parallel import current_branch
    from engine.registry import Handler, HandlerRegistry
    from engine.runner import Engine

_SOURCES: dict[str, str] = {
    "AdapterError": "engine.errors",
    "Condition": "engine.graph",
    "DotSyntaxError": "engine.errors",
    "Edge": "engine.graph",
    "Engine": "engine.runner",
    "Event": "engine.events",
    "Graph": "engine.graph",
    "GraphError": "engine.errors",
    "GraphFileError": "engine.errors",
    "GraphValidationError": "engine.errors",
    "Handler": "engine.registry",
    "HandlerError": "engine.errors",
    "HandlerRegistry": "engine.registry",
    "HandlerTimeout": "engine.errors",
    "Issue": "engine.errors",
    "GatePaused": "engine.errors",
    "GoalGateUnmet": "engine.errors",
    "JoinError": "engine.errors",
    "JoinTimeout": "engine.errors",
    "MergeConflict": "engine.errors",
    "MaxStepsExceeded": "engine.errors",
    "NoRouteError": "engine.errors",
    "Node": "engine.graph",
    "NodeCompleted": "engine.events",
    "NodeFailed": "engine.events",
    "NodeRecord": "engine.outcome",
    "NodeRetrying": "engine.events",
    "NodeStarted": "engine.events",
    "Observer": "engine.events",
    "Outcome": "engine.outcome",
    "RetryPolicy": "engine.graph",
    "RunCompleted": "engine.events",
    "RunError": "engine.errors",
    "RunFailed": "engine.events",
    "RunPaused": "engine.events",
    "RunResult": "engine.outcome",
    "RunStarted": "engine.events",
    "Status": "engine.outcome",
    "StructlogObserver": "engine.events",
    "TransientAdapterError": "engine.errors",
    "TurnTimeout": "engine.errors",
    "TurngraphError": "engine.errors",
    "Value": "engine.graph",
    "current_branch": "engine.parallel",
    "load_graph": "engine.loader",
}
"""Each public name → the submodule that defines it."""


def __getattr__(name: str) -> Any:
    """Import a public name's submodule on first use; later uses find it in globals()."""
    module = _SOURCES.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's names, the not yet imported public ones included."""
    return sorted({*globals(), *__all__})


__all__ = [
    "AdapterError",
    "Condition",
    "DotSyntaxError",
    "Edge",
    "Engine",
    "Event",
    "GatePaused",
    "GoalGateUnmet",
    "Graph",
    "GraphError",
    "GraphFileError",
    "GraphValidationError",
    "Handler",
    "HandlerError",
    "HandlerRegistry",
    "HandlerTimeout",
    "Issue",
    "JoinError",
    "JoinTimeout",
    "MaxStepsExceeded",
    "MergeConflict",
    "NoRouteError",
    "Node",
    "NodeCompleted",
    "NodeFailed",
    "NodeRecord",
    "NodeRetrying",
    "NodeStarted",
    "Observer",
    "Outcome",
    "RetryPolicy",
    "RunCompleted",
    "RunError",
    "RunFailed",
    "RunPaused",
    "RunResult",
    "RunStarted",
    "Status",
    "StructlogObserver",
    "TransientAdapterError",
    "TurnTimeout",
    "TurngraphError",
    "Value",
    "current_branch",
    "load_graph",
]
