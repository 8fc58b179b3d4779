"""turngraph's engine: load a DOT turn graph, run it over a context map.

::

    from engine import Engine, HandlerRegistry, Outcome, load_graph

    graph = load_graph("graphs/turn.dot")
    result = await Engine(registry).run(graph, {"session.input": "hi"})

Everything public is re-exported here on purpose; the submodules are implementation.
"""

from engine.errors import (
    AdapterError,
    DotSyntaxError,
    GraphError,
    GraphFileError,
    GraphValidationError,
    HandlerError,
    HandlerTimeout,
    Issue,
    MaxStepsExceeded,
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
    RunStarted,
    StructlogObserver,
)
from engine.graph import Condition, Edge, Graph, Node, RetryPolicy, Value
from engine.loader import load_graph
from engine.outcome import NodeRecord, Outcome, RunResult, Status
from engine.registry import Handler, HandlerRegistry
from engine.runner import Engine

__all__ = [
    "AdapterError",
    "Condition",
    "DotSyntaxError",
    "Edge",
    "Engine",
    "Event",
    "Graph",
    "GraphError",
    "GraphFileError",
    "GraphValidationError",
    "Handler",
    "HandlerError",
    "HandlerRegistry",
    "HandlerTimeout",
    "Issue",
    "MaxStepsExceeded",
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
    "RunResult",
    "RunStarted",
    "Status",
    "StructlogObserver",
    "TransientAdapterError",
    "TurnTimeout",
    "TurngraphError",
    "Value",
    "load_graph",
]
