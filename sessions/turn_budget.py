"""A turn's ``max_steps`` budget across its runs.

A turn may run more than once: it pauses at a human gate and goes on when answered,
it fails and ``retry_turn()`` runs it again, a process dies and ``resume()`` picks it
up.  ``max_steps`` (the graph's attribute, capped by the engine's, i.e.
``Limits.max_steps_per_turn``) bounds the node visits of the whole turn, not of each
run: the visits made so far ride the checkpoint (``Checkpoint.steps``) and the run
that goes on may make only what is left.  Without that, a gate that loops back to
itself would let a turn visit without end, one answer at a time.

The engine bounds one run by its plan's ``max_steps``; the remainder is handed to it
as the ``max_steps`` of a copy of the graph (a graph may lower the engine's bound),
and a run that goes past it fails with the same
:class:`~engine.errors.MaxStepsExceeded`, naming the turn's whole budget and the node.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from engine.errors import MaxStepsExceeded
from engine.events import Observer
from engine.graph import Graph
from engine.outcome import RunResult

if TYPE_CHECKING:
    from engine.runner import Engine, OnEnter, OnStep

__all__ = ["max_steps_of", "run_within"]


def max_steps_of(graph: Graph, engine: Engine) -> int:
    """The most nodes one turn of ``graph`` may visit on ``engine`` (the graph's own
    ``max_steps`` may lower the engine's bound, never raise it: as the engine plans)."""
    return min(graph.max_steps or engine.max_steps, engine.max_steps)


@functools.lru_cache(maxsize=64)
def _capped(graph: Graph, left: int) -> Graph:
    """``graph`` bounded to ``left`` visits (cached: the engine plans each copy once)."""
    return dataclasses.replace(graph, max_steps=left)


async def run_within(
    engine: Engine,
    graph: Graph,
    used: int,
    context: Mapping[str, Any],
    *,
    run_id: str,
    start_at: str | None,
    observers: Sequence[Observer],
    on_enter: OnEnter | None,
    on_step: OnStep | None,
    time_limit: float | None,
) -> RunResult:
    """``engine.run(graph, context, ...)`` for a turn that already visited ``used`` nodes
    in earlier runs: bounded by what is left of :func:`max_steps_of`.  With nothing
    left, the run fails at once at its first node (no event: it never starts)."""
    budget = max_steps_of(graph, engine) if used > 0 else 0
    if used > 0:
        left = budget - used
        if left <= 0:
            spent = MaxStepsExceeded(budget, start_at or graph.start)
            return RunResult("fail", dict(context), (), run_id, spent)
        graph = _capped(graph, left)
    result = await engine.run(
        graph,
        context,
        run_id=run_id,
        observers=observers,
        on_enter=on_enter,
        start_at=start_at,
        on_step=on_step,
        time_limit=time_limit,
    )
    error = result.error
    if used > 0 and isinstance(error, MaxStepsExceeded):  # the remainder ran out
        # The turn's whole budget, as a turn that never paused would name it.
        whole = MaxStepsExceeded(budget, error.node_id)
        result = dataclasses.replace(result, error=whole)
    return result
