"""Parallel branches as graph structure: fan-outs, their fan-in, and the join settings.

A fan-out node (handler ``parallel``, ``shape=component``) starts one branch per
outgoing edge; every branch must reach the same fan-in node (handler
``parallel.fan_in``, ``shape=tripleoctagon``) and nothing else that ends a walk.  A
branch may hold a fan-out of its own (nesting): its branches must join at a fan-in of
their own inside the outer branch, and the outer walk goes on from that inner fan-in.
This module finds the fan-ins and reports, at load time, fan-outs without one, branches
that escape to an exit, and nested fan-outs sharing their outer fan-in.  It reads
settings once (:func:`join_spec`); the runtime lives in :mod:`engine.parallel`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from engine.graph import Edge, Node

__all__ = [
    "FAN_IN",
    "FAN_OUT",
    "JoinSpec",
    "MergeRule",
    "branch_issues",
    "find_fan_in",
    "join_spec",
]

FAN_OUT = "parallel"
FAN_IN = "parallel.fan_in"

MergeRule = Literal["none", "last_writer", "list"]
_MERGES: frozenset[str] = frozenset({"last_writer", "list"})


@dataclass(frozen=True, slots=True)
class JoinSpec:
    """How a fan-in joins: ``need`` successes end the wait (the rest are cancelled)."""

    policy: str
    need: int | None
    """Successes that satisfy the join; ``None``: every branch (``wait_all``)."""
    merge: MergeRule
    timeout: float | None


def join_spec(node: Node) -> JoinSpec | str:
    """The fan-in's join settings, or a message saying what is wrong with them."""
    policy = str(node.attrs.get("join", "wait_all")).strip()
    need: int | None
    if policy == "wait_all":
        need = None
    elif policy == "first_success":
        need = 1
    elif policy.startswith("quorum="):
        count = policy[len("quorum=") :]
        if not count.isdigit() or int(count) < 1:
            return f"join {policy!r}: quorum=N needs an integer N >= 1"
        need = int(count)
    else:
        return f"join {policy!r}: expected wait_all, first_success or quorum=N"
    merge = str(node.attrs.get("merge", "none")).strip()
    if merge != "none" and merge not in _MERGES:
        return f"merge {merge!r}: expected last_writer or list"
    rule: MergeRule = "list" if merge == "list" else "last_writer" if merge in _MERGES else "none"
    return JoinSpec(policy, need, rule, node.timeout)


def _successors(edges: Sequence[Edge]) -> dict[str, list[str]]:
    succ: dict[str, list[str]] = {}
    for e in edges:
        succ.setdefault(e.src, []).append(e.dst)
    return succ


def _explore(
    begin: str,
    succ: Mapping[str, list[str]],
    nodes: Mapping[str, Node],
    exits: Collection[str],
    within: tuple[str, ...],
) -> tuple[set[str], list[str], dict[str, str]]:
    """(fan-ins reached, problems, nested fan-out -> its fan-in) walking from ``begin``
    without passing a fan-in.

    A nested fan-out is stepped over: the walk goes on after its own fan-in.
    ``within``: the fan-outs whose branches are being walked (outermost first).
    """
    fan_ins: set[str] = set()
    problems: list[str] = []
    stepped: dict[str, str] = {}
    seen, todo = {begin}, [begin]
    while todo:
        here = todo.pop()
        handler = nodes[here].handler if here in nodes else ""
        if handler == FAN_IN:
            fan_ins.add(here)
            continue
        after = here
        if handler == FAN_OUT:
            if here in within:
                problems.append(f"leads back into fan-out {here!r}")
                continue
            inner, _ = _fan_in_of(here, succ, nodes, exits, (*within, here))
            if inner is None:  # why is reported on the inner fan-out itself
                problems.append(f"reaches fan-out {here!r}, which cannot join")
                continue
            stepped[here] = after = inner
        elif here in exits:
            problems.append(f"escapes to exit {here!r} without passing a fan-in")
            continue
        for nxt in (*succ.get(after, ()), *_retry_targets(nodes.get(here))):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return fan_ins, problems, stepped


def _retry_targets(node: Node | None) -> tuple[str, ...]:
    """Where a failing ``node`` may send the walk besides its edges: a branch goes there too."""
    if node is None:
        return ()
    return tuple(t for t in (node.retry_target, node.fallback_retry_target) if t)


def _fan_in_of(
    fan_out: str,
    succ: Mapping[str, list[str]],
    nodes: Mapping[str, Node],
    exits: Collection[str],
    within: tuple[str, ...],
) -> tuple[str | None, list[str]]:
    common: set[str] | None = None
    problems: list[str] = []
    reached: set[str] = set()
    stepped: dict[str, str] = {}
    branches = succ.get(fan_out, [])
    if not branches:
        problems.append("has no outgoing branch")
    for start in branches:
        if nodes.get(start) is not None and nodes[start].handler == FAN_IN:
            problems.append(f"edge straight to fan-in {start!r}: a branch needs a node")
            continue
        fan_ins, found, inner = _explore(start, succ, nodes, exits, within)
        problems += [f"branch {start!r} {p}" for p in found]
        if len(fan_ins) > 1:
            problems.append(f"branch {start!r} reaches several fan-ins: {sorted(fan_ins)}")
        common = fan_ins if common is None else common & fan_ins
        reached |= fan_ins
        stepped.update(inner)
    shared = [
        f"nests fan-out {inner!r}, which joins at {join!r} too: a nested fan-out "
        "needs a fan-in of its own inside the branch"
        for inner, join in sorted(stepped.items())
        if join in reached
    ]
    problems += shared
    if not common or shared:
        if not problems:
            problems.append("no fan-in (shape=tripleoctagon) reachable from every branch")
        return None, problems
    return min(common), problems


def find_fan_in(
    fan_out: str, nodes: Mapping[str, Node], edges: Sequence[Edge], exits: Collection[str]
) -> tuple[str | None, list[str]]:
    """The fan-in every branch of ``fan_out`` reaches, and the problems found on the way.

    A fan-out nested in a branch is stepped over (the branch goes on after its fan-in);
    one joining at the outer fan-in is a problem: the two joins would be one node.
    """
    return _fan_in_of(fan_out, _successors(edges), nodes, exits, (fan_out,))


def branch_issues(
    nodes: Mapping[str, Node], edges: Sequence[Edge], exits: Collection[str]
) -> list[tuple[Node, str]]:
    """(node, message) for every fan-out or fan-in that cannot run."""
    found: list[tuple[Node, str]] = []
    for node in nodes.values():
        if node.handler == FAN_OUT:
            fan_in, problems = find_fan_in(node.id, nodes, edges, exits)
            found += [(node, f"fan-out {p}") for p in problems]
            spec = join_spec(nodes[fan_in]) if fan_in is not None else None
            width = sum(1 for e in edges if e.src == node.id)
            if isinstance(spec, JoinSpec) and spec.need is not None and spec.need > width:
                found.append(
                    (
                        node,
                        f"fan-out has {width} branches: its fan-in {fan_in!r} "
                        f"({spec.policy}) can never join",
                    )
                )
        elif node.handler == FAN_IN:
            spec = join_spec(node)
            if isinstance(spec, str):
                found.append((node, f"fan-in {spec}"))
    return found
