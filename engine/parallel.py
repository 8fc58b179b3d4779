"""Running a fan-out's branches concurrently and joining them at the fan-in.

Each branch is the engine's own step loop (``Engine._walk``) started at one target of
the fan-out and stopped when it would enter the fan-in.  A branch sees the run's
context through a copy-on-write overlay (a ``ChainMap`` whose first map takes its
writes): nothing is copied, and the history stays one read-only view.  Branches run in
one anyio task group, at most ``max_parallel`` at once; the join policy cancels the
rest as soon as it is met (or can no longer be met), and the fan-in's ``timeout``
bounds the whole wait.  The successful branches' writes are then merged into the run's
context in branch order (edge order of the fan-out).

A fan-out inside a branch is the same thing one level down: its branches' overlays sit
on the outer branch's overlay (the chain grows by one map per level), their ids are
``outer/first`` (``a/x``), and they join, and merge, into the outer branch's layer
before the outer branch walks on.  While a branch runs, :func:`current_branch` gives
its id (a ``ContextVar`` set in the branch's own task), so hooks called with a bare
node, observers and handlers can tell branches apart.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Awaitable, Callable, MutableMapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import anyio

from engine.branches import JoinSpec
from engine.errors import JoinError, JoinTimeout, MergeConflict, RunError
from engine.outcome import NodeRecord

__all__ = ["Ctx", "Fan", "Walk", "current_branch", "fan_out", "run_branches"]

Ctx = MutableMapping[str, Any]

# Keys the step loop writes after every node: routing state, not a branch's result.
_ROUTING = frozenset({"outcome", "preferred_label"})

Walk = Callable[[str, Ctx, list[NodeRecord], str], Awaitable[str]]
"""``walk(first, ctx, trace, branch)``: the step loop over one branch, to the fan-in."""

_BRANCH: ContextVar[str | None] = ContextVar("turngraph_branch", default=None)


def current_branch() -> str | None:
    """The id of the parallel branch this code runs in (``a``, ``a/x`` when nested), or
    ``None`` outside any branch: for an ``on_enter`` hook, a handler, an observer."""
    return _BRANCH.get()


@dataclass(frozen=True, slots=True)
class Fan:
    """A compiled fan-out: its branches in edge order, its fan-in and join settings."""

    node_id: str
    branches: tuple[str, ...]
    fan_in: str
    max_parallel: int
    join: JoinSpec
    on_fail: str | None = None
    """Where the walk goes when the join fails (the fan-out's retry target), if anywhere."""


@dataclass(slots=True)
class _Branch:
    first: str
    name: str
    writes: dict[str, Any] = field(default_factory=dict)
    trace: list[NodeRecord] = field(default_factory=list)
    ok: bool = False
    error: RunError | None = None


async def fan_out(
    fan: Fan, walk: Walk, ctx: Ctx, trace: list[NodeRecord], parent: str | None
) -> str:
    """Run ``fan``'s branches (inside branch ``parent``, if any): the fan-in next, or the
    fan-out's retry target when the join failed and it has one (the failure is then the
    fan-out's status)."""
    try:
        await run_branches(fan, walk, ctx, trace, parent)
    except JoinError:
        if fan.on_fail is None:
            raise
        ctx["outcome"] = ctx[f"node.{fan.node_id}.status"] = "fail"
        return fan.on_fail
    return fan.fan_in


async def run_branches(
    fan: Fan, walk: Walk, ctx: Ctx, trace: list[NodeRecord], parent: str | None = None
) -> None:
    """Run ``fan``'s branches, join them, merge their writes into ``ctx``.

    Branch records are appended to ``trace`` in branch order, each with its ``branch``
    (``parent/first`` inside branch ``parent``).  Raises :class:`JoinError` (or
    :class:`JoinTimeout`, :class:`MergeConflict`) when the join fails; cancellation from
    outside propagates after the branches stopped.
    """
    prefix = f"{parent}/" if parent else ""
    branches = [_Branch(first, prefix + first) for first in fan.branches]
    join = fan.join
    need = len(branches) if join.need is None else min(join.need, len(branches))
    # Pay only for what the graph asks for: no limiter when every branch may run at
    # once, no deadline scope without a timeout.
    limiter = anyio.CapacityLimiter(fan.max_parallel) if fan.max_parallel < len(branches) else None
    done = [0, 0]  # successes, failures

    async def one(b: _Branch, tg: anyio.abc.TaskGroup) -> None:
        _BRANCH.set(b.name)  # this task's own context: siblings do not see it
        try:
            if limiter is None:
                await walk(b.first, ChainMap(b.writes, ctx), b.trace, b.name)
            else:
                async with limiter:  # the walk starts only once a place is free
                    await walk(b.first, ChainMap(b.writes, ctx), b.trace, b.name)
        except RunError as exc:
            b.error = exc
            done[1] += 1
            if len(branches) - done[1] < need and sum(done) < len(branches):
                tg.cancel_scope.cancel()  # the policy can no longer be met: stop the rest
            return
        b.ok = True
        done[0] += 1
        if done[0] >= need and sum(done) < len(branches):
            tg.cancel_scope.cancel()  # the policy is met: stop the rest

    async def every() -> None:
        try:
            async with anyio.create_task_group() as tg:
                for b in branches:
                    tg.start_soon(one, b, tg)
        except BaseExceptionGroup as group:  # a hook or observer raised in one branch
            _reraise_alone(group)

    timed_out = False
    if join.timeout is None:
        await every()
    else:
        with anyio.move_on_after(join.timeout) as timer:
            await every()
        timed_out = timer.cancelled_caught
    for b in branches:
        trace.extend(b.trace)
    if done[0] < need:
        _fail(fan, branches, need, timed_out)
    _merge(fan, [b for b in branches if b.ok][:need], ctx)


def _reraise_alone(group: BaseExceptionGroup[BaseException]) -> None:
    """Raise a task group's one exception as itself, as it would propagate from a node
    outside branches; several stay grouped."""
    if len(group.exceptions) == 1:
        raise group.exceptions[0] from None
    raise group


def _fail(fan: Fan, branches: list[_Branch], need: int, timed_out: bool) -> None:
    failed = [b for b in branches if b.error is not None]
    if timed_out and fan.join.timeout is not None:
        late = tuple(b.name for b in branches if not b.ok and b.error is None)
        raise JoinTimeout(fan.fan_in, fan.join.policy, fan.join.timeout, late)
    first = failed[0]
    reason = f"branch {first.name!r} failed: {first.error}"
    if fan.join.need is not None:  # first_success, quorum=N: say why the wait gave up
        left = len(branches) - len(failed)
        reason = f"{need} must succeed, {left} of {len(branches)} could; {reason}"
    raise JoinError(fan.fan_in, fan.join.policy, reason, tuple(b.name for b in failed))


def _merge(fan: Fan, winners: list[_Branch], ctx: MutableMapping[str, Any]) -> None:
    """Apply the winners' writes to ``ctx`` under the fan-in's ``merge`` rule."""
    rule = fan.join.merge
    writer: dict[str, str] = {}
    lists: dict[str, list[Any]] = {}
    for b in winners:
        for key, value in b.writes.items():
            if key in _ROUTING:
                continue
            if key.startswith("node."):  # node statuses: per node, never a conflict
                ctx[key] = value
                continue
            if rule == "list":
                lists.setdefault(key, []).append(value)
                continue
            if rule == "none" and key in writer:
                raise MergeConflict(fan.fan_in, fan.join.policy, key, (writer[key], b.name))
            writer[key] = b.name
            ctx[key] = value
    ctx.update(lists)
