"""Human gates and retries at the session level: what a paused or failed turn leaves in
the store, and where ``answer()``, ``send()`` and ``retry_turn()`` take it up again.

Both ride the checkpoint record (:class:`~sessions.store.base.Checkpoint`), so they need
no table of their own and survive the process:

* **A pause.**  A turn that reaches a human gate (``wait.human``) stops there.  Nothing
  of it is committed: no message, no turn record, the turn count unchanged.  What is
  stored is a ``paused`` checkpoint: the input, the gate, its question and choices,
  the context and node trace so far, and the deadline when the gate has a
  ``timeout``.  ``answer(choice)``, in this process or any later one, runs the turn on
  from the gate; the turn then commits as one turn, input message included.  Its runs
  share one ``max_steps``: the visits made before the pause are stored with it, and
  the run that goes on may make only what is left (``Engine.run``'s ``steps_used``),
  so a gate that loops back to itself cannot keep a turn going one answer at a time.
* **Timeouts** are wall-clock deadlines, stored with the pause, so they hold across
  process exits.  A manager that hosts the session arms a timer for the deadline
  (:mod:`sessions.gate_timers`), which runs :func:`timeout_plan`.  Otherwise (no
  process held the session when it passed) the first call that meets the expired
  gate (``answer``, ``send``, or ``retry_turn``) does the same first: it runs the turn
  on with the gate's ``default`` (or, with no default, fails the gate: an
  ``outcome=fail`` edge may route that, else the turn fails).  ``answer`` then raises
  :class:`GateTimedOut`; ``send`` goes on with its own turn.
* **A failed turn**, with ``Limits.checkpoint`` on, leaves a ``failed`` checkpoint after
  its commit: the node that failed and the context just before it.
  ``retry_turn()`` re-runs the turn from that node as the next turn (the failed turn's
  record stays: history is append-only), unless the turn graph changed since.  The
  retry may visit only what the failed turn left of ``max_steps`` (its visits, the
  failing one included, are stored with the failure).  The next turn of any kind
  supersedes it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from engine.errors import GatePaused
from engine.gates import ANSWER_KEY
from engine.graph import Graph
from engine.outcome import NodeRecord, RunResult
from sessions.checkpoints import Checkpoints, durable_context, graph_fingerprint
from sessions.errors import (
    GateTimedOut,
    NotPaused,
    QuestionChanged,
    RetryRefused,
    SessionPaused,
    UnknownChoice,
)
from sessions.store.base import Checkpoint

__all__ = [
    "Continuation",
    "Question",
    "RetryHost",
    "answer_plan",
    "before_turn",
    "paused_checkpoint",
    "question_of",
    "refuse_paused",
    "retry_plan",
    "seconds_left",
    "timeout_plan",
    "waiting_of",
]


@dataclass(frozen=True, slots=True)
class Question:
    """The question a paused turn waits on: ``session.question``.

    ``deadline`` is Unix time (``None``: no timeout); ``default`` the choice taken
    when it passes (``None``: the gate fails then).
    """

    session_id: str
    turn: int
    node: str
    text: str
    choices: tuple[str, ...]
    default: str | None
    deadline: float | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for the server and the CLI)."""
        return {
            "turn": self.turn,
            "node": self.node,
            "question": self.text,
            "choices": list(self.choices),
            "default": self.default,
            "deadline": self.deadline,
        }


@dataclass(frozen=True, slots=True)
class Continuation:
    """A turn to run on from a node: ``after`` is raised once it has run; ``steps`` the
    node visits the turn made before (its runs share one ``max_steps``)."""

    input: str
    turn: int
    start_at: str
    carried: Mapping[str, Any]
    prior: tuple[Mapping[str, Any], ...]
    after: Exception | None = None
    steps: int = 0


def question_of(session_id: str, cp: Checkpoint | None) -> Question | None:
    """The question of a paused checkpoint."""
    if cp is None:
        return None
    return Question(
        session_id, cp.turn, cp.next_node, cp.question, cp.choices, cp.default, cp.deadline
    )


def waiting_of(session_id: str, cp: Checkpoint | None) -> dict[str, Any]:
    """What a stored session waits for, as JSON: ``question`` (a paused turn's
    :meth:`Question.to_dict`) and ``retry`` (a failed turn's ``turn``, ``node`` and
    ``error``), each ``None`` when absent."""
    kind = None if cp is None else cp.kind
    question = question_of(session_id, cp if kind == "paused" else None)
    retry = None
    if cp is not None and kind == "failed":
        retry = {"turn": cp.turn, "node": cp.next_node, "error": cp.error}
    return {"question": None if question is None else question.to_dict(), "retry": retry}


def paused_checkpoint(
    text: str,
    turn: int,
    trace_id: str,
    graph_hash: str,
    result: RunResult,
    prior: tuple[Mapping[str, Any], ...],
    steps: int,
) -> Checkpoint:
    """What a turn that stopped at a gate (``result.status == "paused"``) stores;
    ``steps``: the node visits of the turn's runs so far, this one's included."""
    gate = result.error
    assert isinstance(gate, GatePaused)  # the engine's only paused result
    now = time.time()
    trace = prior + tuple(map(NodeRecord.to_dict, result.trace))
    last = str(trace[-1].get("id", "")) if trace else ""
    return Checkpoint(
        turn,
        graph_hash,
        trace_id,
        text,
        last,
        gate.node_id,
        durable_context(result.context),
        trace,
        now,
        kind="paused",
        question=gate.question,
        choices=gate.choices,
        default=gate.default,
        deadline=None if gate.timeout is None else now + gate.timeout,
        steps=steps,
    )


def _from_gate(cp: Checkpoint, choice: str | None, timed_out: bool) -> Continuation:
    answer = {"choice": choice, "timed_out": timed_out}
    carried = {**cp.context, ANSWER_KEY: answer}
    return Continuation(cp.input, cp.turn, cp.next_node, carried, cp.trace, steps=cp.steps)


def _expired(cp: Checkpoint, now: float) -> bool:
    return cp.deadline is not None and now >= cp.deadline


def answer_plan(
    session_id: str, cps: Checkpoints, choice: object, node: str | None = None
) -> Continuation:
    """The turn ``answer(choice)`` runs: on from the gate with ``choice``; after the
    deadline, with the default and then :class:`GateTimedOut`.  ``node``: the gate
    the caller saw; :class:`QuestionChanged` when another one waits now."""
    cp = cps.paused
    if cp is None:
        other = cps.interrupted
        if other is not None and other.kind == "paused":
            raise NotPaused(
                session_id,
                f"the question at node {other.next_node!r} was asked by another version "
                "of the turn graph (its fingerprint differs): load the session with that "
                "graph to answer it",
            )
        raise NotPaused(session_id, "no question is waiting")
    if node is not None and node != cp.next_node:
        raise QuestionChanged(session_id, cp.next_node, node)
    if _expired(cp, time.time()):
        after = GateTimedOut(session_id, cp.next_node, cp.default)
        plan = _from_gate(cp, cp.default, True)
        return dataclasses.replace(plan, after=after)
    if isinstance(choice, str):
        choice = str.__str__(choice)  # a str subclass as its plain value (its == may lie)
    if not isinstance(choice, str) or choice not in cp.choices:
        raise UnknownChoice(session_id, cp.next_node, choice, cp.choices)
    return _from_gate(cp, choice, False)


def seconds_left(cp: Checkpoint) -> float | None:
    """How long the pause ``cp`` has until its deadline (``<= 0``: passed; ``None``:
    it has no timeout), by the clock deadlines are written with."""
    return None if cp.deadline is None else cp.deadline - time.time()


def timeout_plan(session_id: str, cps: Checkpoints) -> Continuation:
    """The turn a gate's timer runs: on from the gate with its default (no default:
    the gate fails), as the next use of the session would.  :class:`NotPaused` when no
    question waits or its deadline has not passed (it was answered first)."""
    cp = cps.paused
    if cp is None or not _expired(cp, time.time()):
        raise NotPaused(session_id, "no timed-out question is waiting")
    return _from_gate(cp, cp.default, True)


def before_turn(session_id: str, cp: Checkpoint | None) -> Continuation | None:
    """Before a new turn: :class:`SessionPaused` while a question waits, the timed-out
    gate's turn to finish first once its deadline passed, else ``None``."""
    if cp is None:
        return None
    if _expired(cp, time.time()):
        return _from_gate(cp, cp.default, True)
    refuse_paused(session_id, cp)
    return None


def refuse_paused(session_id: str, cp: Checkpoint | None) -> None:
    """:class:`SessionPaused` when ``cp`` (a paused checkpoint) waits, expired or not."""
    if cp is not None:
        raise SessionPaused(session_id, cp.next_node, cp.question, cp.choices)


class RetryHost(Protocol):
    """What :func:`retry_plan` reads of a session."""

    id: str
    turn_count: int
    turn_graph: Graph


def retry_plan(host: RetryHost, cps: Checkpoints, checkpointing: bool) -> Continuation:
    """The turn ``retry_turn()`` runs: the failed turn again, as the next turn, from its
    failing node with the context just before it."""
    session_id, cp = host.id, cps.failed
    refuse_paused(session_id, cps.paused)
    if cp is None:
        why = (
            "no failed turn to retry (only the latest turn can be retried)"
            if checkpointing
            else "checkpoints are off (Limits.checkpoint): failed turns are not kept for retry"
        )
        raise RetryRefused(session_id, why)
    if cp.graph_hash != graph_fingerprint(host.turn_graph):
        raise RetryRefused(
            session_id,
            f"the turn graph changed since turn {cp.turn} failed (its fingerprint differs)",
        )
    turn = host.turn_count + 1
    return Continuation(cp.input, turn, cp.next_node, cp.context, cp.trace, steps=cp.steps)
