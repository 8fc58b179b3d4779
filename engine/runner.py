"""``Engine.run``: walk a compiled graph from start to an exit, node by node.

The first run of a graph on an engine compiles it into a *plan*: per node, the handler
already resolved, its policies, and its outgoing edges pre-sorted into plain tuples
(conditions as callables).  After that a step is: call the handler, apply its updates,
pick the next edge from the tuples.  No pydot, no networkx, no graph queries, no
per-node allocation beyond the trace record.

Pay only for what a node asks for: a cancel scope exists only for nodes with a
``timeout`` (anyio's ``move_on_after``: :mod:`engine.scopes`); the retry loop only runs
again after a retryable failure; events are built only when someone observes them.

Edge selection after a node (DESIGN.md §4), first match wins:

1. conditional edges whose condition holds (highest ``weight``, then target id);
2. on failure: ``retry_target``, then ``fallback_retry_target``, else the run fails;
3. the unconditional edge whose label is the handler's ``preferred_label`` (compared
   trimmed and lowercased; an accelerator prefix such as ``[A] ``, ``A) `` or ``A - ``
   on either side is ignored, as Attractor's human gates write them);
4. the handler's ``suggested_next``, if an unconditional edge leads there;
5. the best unconditional edge (highest ``weight``, then target id).

Three kinds of node extend the loop without copying it, each compiled into its step so
a plain node pays one attribute test: a fan-out runs its branches as walks of this same
loop in a task group (:mod:`engine.parallel`), a sub-graph node runs the child graph's
walk as its visit (:mod:`engine.subgraphs`), and at an exit every ``goal_gate`` must have
succeeded, else the walk goes on from the gate's retry target.
"""

from __future__ import annotations

import itertools
import os
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from types import MappingProxyType
from typing import Any

import anyio
import msgspec

from engine.branches import FAN_OUT, find_fan_in, join_spec
from engine.errors import (
    GatePaused,
    GoalGateUnmet,
    GraphValidationError,
    HandlerError,
    HandlerTimeout,
    Issue,
    MaxStepsExceeded,
    NoRouteError,
    RunError,
    TransientAdapterError,
    TurnTimeout,
)
from engine.events import (
    EMITTER,
    Emitter,
    NodeCompleted,
    NodeFailed,
    NodeRetrying,
    NodeStarted,
    Observer,
    RunCompleted,
    RunFailed,
    RunPaused,
    RunStarted,
    notify,
)
from engine.gates import GATE_HANDLERS, Gate, compile_gate, take_answer
from engine.graph import Graph, Node
from engine.outcome import SUCCESS, NodeRecord, Outcome, RunResult, Status
from engine.parallel import Ctx, Fan, Walk, fan_out
from engine.registry import HandlerRegistry, HandlerSpec
from engine.scopes import call_with_deadline
from engine.subgraphs import Prefixed, child_context, key_map, outputs_of

__all__ = ["DEFAULT_MAX_STEPS", "Engine", "OnEnter", "OnStep"]

DEFAULT_MAX_STEPS = 1000

OnEnter = Callable[[Node], None]
"""Called with each node just before its handler runs: cheap (no event object is built),
for state that must follow the walk live, such as a session's phase.  Inside a parallel
branch, :func:`engine.current_branch` names the branch."""

OnStep = Callable[[NodeRecord, "str | None", Mapping[str, Any]], Awaitable[None]]
"""Awaited after each node with its record, the chosen next node (None at an exit) and
the context: the hook for checkpoints and streaming.  A branch's record carries its
``branch``; a branch's last step names its fan-in as the next node."""

_perf = time.perf_counter
_FAILED: frozenset[str] = frozenset({"fail", "retry"})
_MET: frozenset[str] = frozenset({"success", "partial"})


_Hop = tuple[str, int]
"""A route out of a node: (target id, the edge's ``Edge.index``; -1 for a retry jump)."""


@dataclass(frozen=True, slots=True)
class _Step:
    """One node, compiled for running.  Routes are ``_Hop``s made once here, so
    choosing an edge allocates nothing."""

    node: Node
    spec: HandlerSpec
    in_thread: bool
    is_exit: bool
    status_key: str
    conds: tuple[tuple[Callable[[Mapping[str, Any]], bool], _Hop], ...]
    by_label: Mapping[str, _Hop]
    targets: Mapping[str, _Hop]
    default: _Hop | None
    on_fail: _Hop | None
    twins: bool
    """Whether the node has several edges to one target: only then does a visit's
    record name the edge it left by (the pair of node ids names any other)."""
    fan: Fan | None = None
    sub: _Sub | None = None
    gate: Gate | None = None


@dataclass(frozen=True, slots=True)
class _Sub:
    """A sub-graph node: the child's plan and the keys mapped in and out."""

    plan: _Plan
    inputs: tuple[tuple[str, str], ...]
    outputs: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class _Gate:
    """A ``goal_gate`` node: where to go while it has not succeeded, and how often."""

    node_id: str
    status_key: str
    target: str | None
    max_tries: int


@dataclass(frozen=True, slots=True)
class _Plan:
    graph: Graph
    start: str
    steps: Mapping[str, _Step]
    max_steps: int
    turn_timeout: float | None
    gates: tuple[_Gate, ...] = ()


_ACCELERATOR = re.compile(r"(?:\[\w\]\s*|\w\)\s+|\w\s+-\s+)(?=\S)")


def _norm_label(label: str) -> str:
    return label.strip().lower()


def _bare_label(label: str) -> str:
    """``label`` normalised without its accelerator prefix (``[a] approve`` → ``approve``)."""
    text = _norm_label(label)
    match = _ACCELERATOR.match(text)
    return text[match.end() :] if match else text


def _compile_step(graph: Graph, node: Node, spec: HandlerSpec) -> _Step:
    gate = compile_gate(graph, node) if node.handler in GATE_HANDLERS else None
    if gate is not None:  # its timeout bounds the wait for an answer, not its handler
        node = replace(node, timeout=None)
    # Highest weight first, then target id, so selection is deterministic.
    out = sorted(graph.out_edges(node.id), key=lambda e: (-e.weight, e.dst, e.index))
    conds = tuple((e.condition.test, (e.dst, e.index)) for e in out if e.condition is not None)
    plain = [e for e in out if e.condition is None]
    by_label: dict[str, _Hop] = {}
    for e in plain:
        if e.label:
            by_label.setdefault(_norm_label(e.label), (e.dst, e.index))
    for e in plain:  # after every exact label, so none of those is shadowed
        if e.label:
            by_label.setdefault(_bare_label(e.label), (e.dst, e.index))
    targets: dict[str, _Hop] = {}
    for e in plain:
        targets.setdefault(e.dst, (e.dst, e.index))
    on_fail = node.retry_target or node.fallback_retry_target
    return _Step(
        node=node,
        spec=spec,
        # A sync handler with a timeout runs in a worker thread: inline, nothing could
        # interrupt it.  Past the deadline the node fails; the thread is abandoned.
        in_thread=not spec.is_async
        and (spec.blocking or node.blocking or node.timeout is not None),
        is_exit=node.id in graph.exits,
        status_key=f"node.{node.id}.status",
        conds=conds,
        by_label=MappingProxyType(by_label),
        targets=MappingProxyType(targets),
        default=(plain[0].dst, plain[0].index) if plain else None,
        on_fail=(on_fail, -1) if on_fail else None,
        twins=len({e.dst for e in out}) < len(out),
        fan=_compile_fan(graph, node) if node.handler == FAN_OUT else None,
        gate=gate,
    )


def _compile_fan(graph: Graph, node: Node) -> Fan:
    fan_in, problems = find_fan_in(node.id, graph.nodes, graph.edges, graph.exits)
    join = join_spec(graph.nodes[fan_in]) if fan_in is not None else "no fan-in"
    if fan_in is None or isinstance(join, str):  # load_graph refuses these graphs
        why = problems[0] if problems else join
        issue = Issue("error", f"node {node.id!r}: fan-out {why}", graph.path, node.line)
        raise GraphValidationError(graph.path, (issue,))
    branches = tuple(e.dst for e in graph.out_edges(node.id))
    width = node.attrs.get("max_parallel")
    width = width if isinstance(width, int) else len(branches)
    on_fail = node.retry_target or node.fallback_retry_target
    return Fan(node.id, branches, fan_in, width, join, on_fail)


def _compile_gates(graph: Graph) -> tuple[_Gate, ...]:
    fallback = graph.attrs.get("retry_target")
    gates = []
    for node in graph.nodes.values():
        if node.attrs.get("goal_gate") is True:
            target = node.retry_target or node.fallback_retry_target
            if target is None and isinstance(fallback, str):
                target = fallback
            tries = node.attrs.get("max_retries")
            gates.append(
                _Gate(
                    node.id,
                    f"node.{node.id}.status",
                    target,
                    tries if isinstance(tries, int) else 3,
                )
            )
    return tuple(gates)


def _unmet_gate(
    gates: tuple[_Gate, ...], ctx: Mapping[str, Any], exit_id: str, tries: dict[str, int]
) -> str:
    """Where to go instead of exiting (raises when a gate is out of retries); "" when met."""
    for gate in gates:
        if ctx.get(gate.status_key) in _MET:
            continue
        done = tries.get(gate.node_id, 0)
        if gate.target is None or done >= gate.max_tries:
            raise GoalGateUnmet(gate.node_id, exit_id, done)
        tries[gate.node_id] = done + 1
        return gate.target
    return ""


def _as_outcome(value: object, node: Node) -> Outcome:
    if type(value) is Outcome:
        return value
    if value is None:
        return SUCCESS
    if isinstance(value, Outcome):
        return value
    if isinstance(value, Mapping):
        return Outcome("success", value)
    raise TypeError(
        f"handler {node.handler!r} of node {node.id!r} returned {type(value).__name__}; "
        "expected Outcome, a mapping of context updates, or None"
    )


class Engine:
    """Runs graphs with the handlers of one registry.

    ``observers`` receive every event of every run; ``run(observers=...)`` adds more for
    one run.  ``max_steps`` bounds cycles; a graph's own ``max_steps`` attribute may lower
    that bound for its runs, never raise it.
    ``rng`` drives retry jitter (pass a seeded ``random.Random`` for reproducible
    tests); ``sleep`` is the backoff sleep (anyio's by default).
    """

    __slots__ = (
        "_ids",
        "_plans",
        "_prefix",
        "_rng",
        "_sleep",
        "max_steps",
        "observers",
        "registry",
    )

    def __init__(
        self,
        registry: HandlerRegistry,
        *,
        observers: Sequence[Observer] = (),
        max_steps: int = DEFAULT_MAX_STEPS,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        if max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, not {max_steps}")
        self.registry = registry
        self.observers: tuple[Observer, ...] = tuple(observers)
        self.max_steps = max_steps
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._plans: dict[Graph, _Plan] = {}
        self._prefix = f"{os.getpid():x}{random.getrandbits(24):06x}"
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------ compile

    def check(self, graph: Graph) -> None:
        """Raise ``GraphValidationError`` unless every node's handler is registered."""
        self._plan(graph)

    def _plan(self, graph: Graph) -> _Plan:
        plan = self._plans.get(graph)
        if plan is None:
            plan = self._compile(graph)
            if len(self._plans) >= 256:  # graphs are few; a bound keeps reloads from leaking
                self._plans.pop(next(iter(self._plans)))
            self._plans[graph] = plan
        return plan

    def _compile(self, graph: Graph) -> _Plan:
        issues: list[Issue] = []
        steps: dict[str, _Step] = {}
        for node in graph.nodes.values():
            if node.handler not in self.registry:
                issues.append(
                    Issue(
                        "error",
                        f"node {node.id!r}: unknown handler {node.handler!r}",
                        graph.path,
                        node.line,
                        node.col,
                        node=node.id,
                    )
                )
                continue
            step = _compile_step(graph, node, self.registry.get(node.handler))
            child = graph.subgraphs.get(node.id)
            if child is not None:
                sub = _Sub(self._plan(child), key_map(node, "inputs"), key_map(node, "outputs"))
                step = replace(step, sub=sub)
            steps[node.id] = step
        if issues:
            raise GraphValidationError(graph.path, tuple(issues))
        # The engine's bound is the operator's safety limit: a graph may only tighten it.
        max_steps = min(graph.max_steps or self.max_steps, self.max_steps)
        limit = graph.attrs.get("turn_timeout")
        turn_timeout = limit.total_seconds() or None if isinstance(limit, timedelta) else None
        gates = _compile_gates(graph)
        return _Plan(graph, graph.start, MappingProxyType(steps), max_steps, turn_timeout, gates)

    # ------------------------------------------------------------------ run

    async def run(
        self,
        graph: Graph,
        context: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
        observers: Sequence[Observer] = (),
        start_at: str | None = None,
        on_step: OnStep | None = None,
        on_enter: OnEnter | None = None,
        time_limit: float | None = None,
        steps_used: int = 0,
    ) -> RunResult:
        """Run ``graph`` from its start (or ``start_at``) to an exit.

        ``context`` is copied once into the run's mapping; handlers see a read-only
        live view of it.  Node failures end in ``RunResult(status="fail", error=...)``;
        cancellation is re-raised after observers hear of it.  ``on_enter`` is called
        with each node before it runs; ``on_step`` is awaited after it ran; both also for
        the nodes of parallel branches, from the branches' tasks (a fan-out's own
        ``on_step`` comes after its join).

        ``time_limit`` (seconds) bounds the whole run, and so does the graph's
        ``turn_timeout`` attribute (the shorter wins: a graph may tighten the caller's
        bound, never lift it).  Past it the running node is cancelled where it waits
        and the run fails with :class:`~engine.errors.TurnTimeout`.

        ``steps_used``: node visits that earlier runs of the same unit of work (a turn
        that paused at a gate, failed or was interrupted) already made.  The run may
        make only what is left of ``max_steps``, and past it fails with
        :class:`~engine.errors.MaxStepsExceeded` naming the whole bound and the node it
        did not enter, as one run that made every visit would; with nothing left it
        fails at its first node.  A parallel branch's and a sub-graph's own walks keep
        their own bound, as in any run (their visits count in the run's trace).
        """
        plan = self._plan(graph)
        if start_at is not None and start_at not in plan.steps:
            raise ValueError(f"start_at: graph {graph.path} has no node {start_at!r}")
        if steps_used < 0:
            raise ValueError(f"steps_used must be at least 0, not {steps_used}")
        obs = self.observers + tuple(observers) if observers else self.observers
        rid = run_id or f"{self._prefix}-{next(self._ids)}"
        ctx: dict[str, Any] = dict(context) if context else {}
        trace: list[NodeRecord] = []
        t0 = _perf()
        # Handlers reach the observers through the run's emitter (engine.events); a run
        # nobody observes has none, nor inherits one from a run it is nested in.
        emitter = Emitter(obs, rid) if obs else None
        token = EMITTER.set(emitter) if obs or EMITTER.get() is not None else None
        if obs:
            notify(obs, RunStarted(rid, graph.name, start_at or plan.start))
        try:
            first = start_at or plan.start
            limit = _shorter(plan.turn_timeout, time_limit)
            if limit is None:
                exit_id = await self._walk(
                    plan, first, ctx, trace, rid, obs, on_step, on_enter, emitter, used=steps_used
                )
            else:
                where = [first]  # the node running when the deadline passes
                entered = _tracking(where, on_enter)
                walk = self._walk(
                    plan, first, ctx, trace, rid, obs, on_step, entered, emitter, used=steps_used
                )
                exit_id = await _within(limit, where, walk)
        except GatePaused as exc:  # before RunError: a pause is not a failure
            if obs:
                notify(
                    obs,
                    RunPaused(rid, graph.name, exc.node_id, exc.question, exc.choices, len(trace)),
                )
            return RunResult("paused", ctx, tuple(trace), rid, exc)
        except RunError as exc:
            if obs:
                failed_at = getattr(exc, "node_id", None)
                notify(
                    obs,
                    RunFailed(
                        rid, graph.name, "fail", failed_at, str(exc), len(trace), _perf() - t0
                    ),
                )
            return RunResult("fail", ctx, tuple(trace), rid, exc)
        except anyio.get_cancelled_exc_class():
            if obs:
                notify(
                    obs,
                    RunFailed(
                        rid, graph.name, "cancelled", None, "cancelled", len(trace), _perf() - t0
                    ),
                )
            raise
        finally:
            if token is not None:
                EMITTER.reset(token)
        if obs:
            notify(obs, RunCompleted(rid, graph.name, exit_id, len(trace), _perf() - t0))
        return RunResult("success", ctx, tuple(trace), rid)

    async def _walk(
        self,
        plan: _Plan,
        node_id: str,
        ctx: MutableMapping[str, Any],
        trace: list[NodeRecord],
        rid: str,
        obs: tuple[Observer, ...],
        on_step: OnStep | None,
        on_enter: OnEnter | None,
        emitter: Emitter | None = None,
        stop: str | None = None,
        branch: str | None = None,
        used: int = 0,
    ) -> str:
        """The loop: run a node, apply its outcome, choose the next; returns the exit id.

        A branch of a fan-out walks with ``stop`` (its fan-in: returns before entering
        it) and ``branch`` (its id, put in its records and events; a fan-out inside it
        names its branches ``branch/first``).  ``used``: visits made by earlier runs
        (``Engine.run``'s ``steps_used``): the walk may make what is left of the bound.
        """
        view = MappingProxyType(ctx)
        steps = plan.steps
        max_steps = plan.max_steps
        room = max_steps - used  # once per walk: the step check stays one comparison
        gate_tries: dict[str, int] | None = None
        via: int | None = None  # the edge taken into node_id, when its source has twins
        while True:
            if len(trace) >= room:
                raise MaxStepsExceeded(max_steps, node_id)
            step = steps[node_id]
            if step.gate is not None:
                take_answer(step.gate, ctx)  # or GatePaused: the walk stops before the gate
            if on_enter is not None:
                on_enter(step.node)
            if emitter is not None:
                emitter.node_id = node_id
            if step.sub is None:
                outcome, record, error = await self._visit(step, view, rid, obs, branch, via)
            else:
                outcome, record, error = await self._visit_sub(
                    step, step.sub, view, trace, rid, obs, emitter, branch
                )
            trace.append(record)
            if outcome.updates:
                ctx.update(outcome.updates)
            status = record.status
            ctx["outcome"] = status
            ctx["preferred_label"] = outcome.preferred_label or ""
            ctx[step.status_key] = status
            hop = _choose(step, outcome, status, view, error, record)
            nxt = None if hop is None else hop[0]
            via = None
            if step.twins and hop is not None and hop[1] >= 0:
                via = hop[1]
                trace[-1] = record = msgspec.structs.replace(record, edge=via)
            if step.fan is not None and nxt is not None and status not in _FAILED:
                walk = self._brancher(plan, rid, obs, step.fan, on_step, on_enter)
                nxt = await fan_out(step.fan, walk, ctx, trace, branch)
            if nxt is None and plan.gates:  # an exit: every goal gate must have succeeded
                gate_tries = {} if gate_tries is None else gate_tries
                nxt = _unmet_gate(plan.gates, view, node_id, gate_tries) or None
            if on_step is not None:
                await on_step(record, nxt, view)
            if nxt is None or (stop is not None and nxt == stop):
                return node_id
            node_id = nxt

    def _brancher(
        self,
        plan: _Plan,
        rid: str,
        obs: tuple[Observer, ...],
        fan: Fan,
        on_step: OnStep | None,
        on_enter: OnEnter | None,
    ) -> Walk:
        """The step loop for one branch of ``fan``, with the run's hooks, stopping at its
        fan-in.  An observed branch gets an emitter of its own, set in its task's context
        only, so a handler streaming in one branch names its own node, not a sibling's."""

        async def walk(first: str, ctx: Ctx, trace: list[NodeRecord], name: str) -> str:
            emitter = Emitter(obs, rid) if obs else None
            if emitter is not None:
                EMITTER.set(emitter)  # a task group task runs in a copy of the context
            return await self._walk(
                plan, first, ctx, trace, rid, obs, on_step, on_enter, emitter, fan.fan_in, name
            )

        return walk

    # ------------------------------------------------------------------ one node

    async def _visit(
        self,
        step: _Step,
        view: Mapping[str, Any],
        rid: str,
        obs: tuple[Observer, ...],
        branch: str | None = None,
        via: int | None = None,
    ) -> tuple[Outcome, NodeRecord, HandlerError | None]:
        """Run one node under its retry policy; never raises a node failure."""
        node = step.node
        if obs:
            notify(obs, NodeStarted(rid, node.id, node.handler, branch, via))
        t0 = _perf()
        attempt = 1
        while True:
            outcome, error, retryable = await self._attempt(step, view, attempt)
            if not retryable or attempt > node.retry.max_retries:
                break
            delay = node.retry.delay(attempt + 1, self._rng)
            asked = getattr(error.cause, "retry_after", None) if error is not None else None
            if asked is not None:
                if asked > node.retry.max_delay:
                    outcome, error = _wait_too_long(node, attempt, error, asked)
                    break
                delay = max(delay, asked)  # honour the server's Retry-After
            if obs:
                why = outcome.reason or str(error)
                retrying = NodeRetrying(rid, node.id, node.handler, attempt, delay, why, branch)
                notify(obs, retrying)
            await self._sleep(delay)
            attempt += 1
        return outcome, _finish(node, outcome, attempt, t0, rid, obs, branch), error

    async def _visit_sub(
        self,
        step: _Step,
        sub: _Sub,
        view: Mapping[str, Any],
        trace: list[NodeRecord],
        rid: str,
        obs: tuple[Observer, ...],
        emitter: Emitter | None,
        branch: str | None,
    ) -> tuple[Outcome, NodeRecord, HandlerError | None]:
        """Run a sub-graph node: the child graph's walk, traced as ``node/child``."""
        node = step.node
        if obs:
            notify(obs, NodeStarted(rid, node.id, node.handler, branch))
        t0 = _perf()
        child = child_context(sub.inputs, view)
        records: list[NodeRecord] = []
        error: HandlerError | None = None
        plan = sub.plan
        prefix = node.id + "/"
        # The child's events, streamed text included, name its nodes as the trace does.
        child_obs = (Prefixed(obs, prefix),) if obs else obs
        child_emitter = Emitter(child_obs, rid) if obs else None
        token = EMITTER.set(child_emitter) if emitter is not None else None
        try:
            await self._walk(
                plan, plan.start, child, records, rid, child_obs, None, None, child_emitter
            )
            outcome = Outcome("success", outputs_of(sub.outputs, child))
        except RunError as exc:
            reason = f"sub-graph {plan.graph.path}: {exc}"
            outcome = Outcome("fail", reason=reason)
            error = HandlerError(node.id, node.handler, 1, reason, exc)
            error.__cause__ = exc
        finally:
            if token is not None:
                EMITTER.reset(token)
        trace.extend(msgspec.structs.replace(r, node_id=prefix + r.node_id) for r in records)
        return outcome, _finish(node, outcome, 1, t0, rid, obs, branch), error

    async def _attempt(
        self, step: _Step, view: Mapping[str, Any], attempt: int
    ) -> tuple[Outcome, HandlerError | None, bool]:
        """One call of the handler: (outcome, error if it raised, whether to retry)."""
        node = step.node
        try:
            if node.timeout is None:
                spec = step.spec
                if spec.is_async:  # _call() inlined: the common case, one frame less
                    result = await spec.fn(node, view)  # type: ignore[misc]
                else:
                    result = await _call(step, view)
            else:
                result, timed_out = await call_with_deadline(_call(step, view), node.timeout)
                if timed_out:
                    err = HandlerTimeout(node.id, node.handler, attempt, node.timeout)
                    return Outcome("fail", reason=err.reason), err, True
            outcome = _as_outcome(result, node)
            return outcome, None, outcome.status == "retry"
        except TransientAdapterError as exc:
            return _failure(node, attempt, exc, retryable=True)
        except Exception as exc:  # a handler's bug or a permanent adapter error
            return _failure(node, attempt, exc, retryable=False)


def _choose(
    step: _Step,
    outcome: Outcome,
    status: Status,
    ctx: Mapping[str, Any],
    error: HandlerError | None,
    record: NodeRecord,
) -> _Hop | None:
    """The route to the next node, or None when ``step`` is an exit that succeeded."""
    for test, hop in step.conds:
        if test(ctx):
            return hop
    if status in _FAILED:
        if step.on_fail is not None:
            return step.on_fail
        node = step.node
        raise error or HandlerError(
            node.id, node.handler, record.attempts, outcome.reason or f"returned {status}"
        )
    if step.is_exit:
        return None
    label = outcome.preferred_label
    if label and step.by_label:
        labelled = step.by_label.get(_norm_label(label))
        if labelled is None and ("[" in label or ")" in label or " - " in label):
            labelled = step.by_label.get(_bare_label(label))  # "[A] Approve"
        if labelled is not None:
            return labelled
    hint = outcome.suggested_next
    if hint is not None:
        hinted = step.targets.get(hint)
        if hinted is not None:
            return hinted
    if step.default is None:
        raise NoRouteError(step.node.id, status)
    return step.default


def _failure(
    node: Node, attempt: int, exc: Exception, *, retryable: bool
) -> tuple[Outcome, HandlerError, bool]:
    """A raising handler's attempt as a failed outcome and its typed error."""
    reason = f"{type(exc).__name__}: {exc}"
    err = HandlerError(node.id, node.handler, attempt, reason, exc)
    err.__cause__ = exc
    return Outcome("fail", reason=reason), err, retryable


async def _call(step: _Step, view: Mapping[str, Any]) -> object:
    """Call the node's handler: awaited, in a worker thread, or inline."""
    spec = step.spec
    if spec.is_async:
        return await spec.fn(step.node, view)  # type: ignore[misc]
    if step.in_thread:
        return await anyio.to_thread.run_sync(spec.fn, step.node, view, abandon_on_cancel=True)
    return spec.fn(step.node, view)


def _finish(
    node: Node,
    outcome: Outcome,
    attempt: int,
    t0: float,
    rid: str,
    obs: tuple[Observer, ...],
    branch: str | None,
) -> NodeRecord:
    """The visit's record, told to the observers."""
    status: Status = "fail" if outcome.status == "retry" else outcome.status
    updates = outcome.updates
    record = NodeRecord(
        node.id,
        node.handler,
        status,
        attempt,
        _perf() - t0,
        outcome.reason,
        outcome.usage,
        branch,
        tuple(updates) if updates else (),
    )
    if obs:
        took = record.duration
        if status == "fail":
            reason = outcome.reason or "failed"
            notify(obs, NodeFailed(rid, node.id, node.handler, attempt, took, reason, branch))
        else:
            done = NodeCompleted(
                rid,
                node.id,
                node.handler,
                status,
                attempt,
                took,
                record.usage,
                branch,
                record.changed,
            )
            notify(obs, done)
    return record


def _tracking(where: list[str], on_enter: OnEnter | None) -> OnEnter:
    """An ``on_enter`` that also notes the node entered in ``where[0]``."""

    def entered(node: Node) -> None:
        where[0] = node.id
        if on_enter is not None:
            on_enter(node)

    return entered


async def _within(limit: float, where: list[str], walk: Awaitable[str]) -> str:
    """Await ``walk`` for at most ``limit`` seconds; past it, :class:`TurnTimeout`
    naming the node in ``where[0]``."""
    with anyio.move_on_after(limit) as scope:
        exit_id = await walk
        # A plain handler run inline cannot be interrupted, and the walk may end with
        # no await left to deliver the cancellation: a run that overran still fails.
        if anyio.current_time() < scope.deadline:
            return exit_id
    raise TurnTimeout(limit, where[0])


def _shorter(a: float | None, b: float | None) -> float | None:
    """The smaller of two optional bounds (``None``: unbounded)."""
    if a is None:
        return b
    return a if b is None else min(a, b)


def _wait_too_long(
    node: Node, attempt: int, error: HandlerError | None, asked: float
) -> tuple[Outcome, HandlerError]:
    """The node fails at once: the backend asked for a longer pause than it may take."""
    cause = error.cause if error is not None else None
    reason = (
        f"{error.reason if error is not None else 'failed'}; not retried: the server asked "
        f"to wait {asked:g}s, more than retry.max_delay={node.retry.max_delay:g}s"
    )
    err = HandlerError(node.id, node.handler, attempt, reason, cause)
    err.__cause__ = cause
    return Outcome("fail", reason=reason), err
