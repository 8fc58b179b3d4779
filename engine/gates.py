"""Human gates: a ``wait.human`` node (``shape=hexagon``) pauses the walk for an answer.

A gate asks ``question`` (else its ``label``) and offers its unconditional outgoing
edges as the choices (every outgoing edge when all have conditions): each edge's label,
else its target node's id (as Attractor does).  The engine reaches it with no answer in
the context: the walk stops there and :meth:`Engine.run <engine.runner.Engine.run>`
returns ``status="paused"`` with a :class:`~engine.errors.GatePaused` naming the node,
the question and the choices.  The gate node has not run: it is not in the trace.

To go on, run again from the gate (``start_at``) with the context as it was and
:data:`ANSWER_KEY` set to ``{"choice": "<label>", "timed_out": false}`` (a session does
this in ``answer()``).  The gate then runs its handler, which records the answer in
``node.<id>.answer`` (and ``node.<id>.timed_out``) and prefers the chosen label, so the
walk follows that edge.  ``{"choice": null, "timed_out": true}`` is a gate whose
``timeout`` passed with no ``default``: the node fails, so an ``outcome=fail`` edge or
``retry_target`` may route it, else the run fails.  The answer is taken once: a walk
that comes back to a gate pauses again.

A gate pauses only the top-level walk: inside a sub-graph or a parallel branch there is
nobody to resume it, so there its pause fails that node.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from engine.errors import GatePaused, GraphValidationError, Issue
from engine.graph import Graph, Node
from engine.outcome import Outcome

__all__ = ["ANSWER_KEY", "GATE_HANDLERS", "WAIT_HUMAN", "Gate", "compile_gate", "human_gate"]

WAIT_HUMAN = "wait.human"
GATE_HANDLERS = frozenset({WAIT_HUMAN})
ANSWER_KEY = "human.answer"
"""The context key a resumed walk carries the answer in, taken by the gate it reaches."""


@dataclass(frozen=True, slots=True)
class Gate:
    """A gate node, compiled: what it asks and how it may be answered."""

    node_id: str
    question: str
    choices: tuple[str, ...]
    default: str | None
    timeout: float | None
    answer_key: str


def compile_gate(graph: Graph, node: Node) -> Gate:
    """The gate of ``node``; :class:`GraphValidationError` when it offers no choice or
    its ``default`` is not one of them."""
    edges = sorted(graph.out_edges(node.id), key=lambda e: e.index)
    # Conditional edges (an ``outcome=fail`` route) are choices only when nothing else is:
    # Attractor offers every edge, and its pipelines put conditions on their answers.
    offered = [e for e in edges if e.condition is None] or edges
    choices: list[str] = []
    for edge in offered:
        label = edge.label.strip() or edge.dst
        if label not in choices:
            choices.append(label)
    default = node.attrs.get("default")
    problem = ""
    if not choices:
        problem = "a human gate needs an outgoing edge (its choices)"
    elif default is not None and str(default) not in choices:
        problem = f"default {default!r} is not one of its choices {choices}"
    if problem:
        issue = Issue("error", f"node {node.id!r}: {problem}", graph.path, node.line, node=node.id)
        raise GraphValidationError(graph.path, (issue,))
    question = node.attrs.get("question")
    if question is None:
        question = node.label if node.label and node.label != node.id else f"{node.id}?"
    return Gate(
        node.id,
        str(question),
        tuple(choices),
        None if default is None else str(default),
        node.timeout,
        f"node.{node.id}.answer",
    )


def take_answer(gate: Gate, ctx: MutableMapping[str, Any]) -> None:
    """Hand the waiting answer to ``gate`` (once), or raise :class:`GatePaused`."""
    if ANSWER_KEY not in ctx:
        raise GatePaused(gate.node_id, gate.question, gate.choices, gate.default, gate.timeout)
    ctx[gate.answer_key] = ctx.pop(ANSWER_KEY)


def human_gate(node: Node, context: Mapping[str, Any]) -> Outcome:
    """The ``wait.human`` handler: route on the answer the engine handed over."""
    answer = context.get(f"node.{node.id}.answer")
    if isinstance(answer, Mapping):
        choice, timed_out = answer.get("choice"), bool(answer.get("timed_out"))
    else:
        choice, timed_out = answer, False
    answered = f"node.{node.id}.answer"
    flag = f"node.{node.id}.timed_out"
    if not isinstance(choice, str):
        why = "timed out with no default choice" if timed_out else "has no answer"
        return Outcome("fail", {answered: None, flag: timed_out}, reason=f"human gate {why}")
    # An unlabelled edge's choice is its target's id: ``suggested_next`` routes that one.
    return Outcome(
        "success",
        {answered: choice, flag: timed_out},
        preferred_label=choice,
        suggested_next=choice,
    )
