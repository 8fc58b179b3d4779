"""A session's checkpoints: the in-flight turn saved after every node, and what to do
with one found on load.

With ``Limits.checkpoint`` on, :meth:`Checkpoints.hook` gives the engine an ``on_step``
hook that saves the turn after each node, so a process that dies mid-turn leaves a
:class:`~sessions.store.base.Checkpoint` behind.  The next process to load the session
either keeps it for ``Session.resume`` (same graph, the next turn) or gives up on it:
it is reported (``interrupted``, a ``turn.interrupted`` warning) and cleared, never
replayed.  Paused and failed turns ride the same record (:mod:`sessions.gates`).

Parallel branches are checkpointed at their boundaries only.  The nodes inside a branch
are not saved one by one: a resume restarts at one node, and the branches' siblings,
their overlays and the join's wait cannot be restarted from one node.  The fan-out's
own step is the boundary: the engine reports it after the join, with the branches'
writes merged into the context and the fan-in as the next node, so a turn that dies
after a join resumes at the fan-in, and one that dies during the branches resumes at
the last node before the fan-out (its branches run again).  The branches' visits, which
the hook hears as they finish, are kept aside and put in the saved trace after their
fan-out, branch by branch in edge order, as the run's own trace has them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio

from engine.gates import ANSWER_KEY
from engine.logs import log
from engine.outcome import NodeRecord
from sessions.errors import Fenced
from sessions.store.base import Checkpoint
from sessions.writer import SessionWriter

if TYPE_CHECKING:
    from engine.graph import Graph
    from engine.runner import OnStep

__all__ = ["Checkpoints", "durable_context", "graph_fingerprint"]


def _jsonable(value: object, depth: int = 0) -> bool:
    """Whether ``value`` survives a JSON round trip (checkpoint contexts keep only those)."""
    if value is None or isinstance(value, str | int | float | bool):
        return True
    if depth > 8:
        return False
    if isinstance(value, list | tuple):
        return all(_jsonable(v, depth + 1) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _jsonable(v, depth + 1) for k, v in value.items())
    return False


def durable_context(context: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a run's context a checkpoint keeps: JSON-safe, not rebuilt per turn."""
    return {k: v for k, v in context.items() if not k.startswith("session.") and _jsonable(v)}


def _targets(graph: Graph | None, node_id: str) -> tuple[str, ...]:
    """Where ``node_id``'s edges lead, in edge order (a fan-out's branches)."""
    return tuple(e.dst for e in graph.out_edges(node_id)) if graph is not None else ()


def graph_fingerprint(graph: Graph) -> str:
    """What a checkpoint records of the graph it ran: the source hash of ``graph`` and
    of every sub-graph it includes, so that editing ``child.dot`` refuses a retry (or an
    answer) as editing the parent does.  Any byte counts: a whitespace or comment edit
    is a change.  A graph without sub-graphs keeps its plain source hash."""
    if not graph.subgraphs:
        return graph.source_hash
    h = hashlib.sha256(graph.source_hash.encode())
    for node_id in sorted(graph.subgraphs):
        h.update(f"\0{node_id}\0{graph_fingerprint(graph.subgraphs[node_id])}".encode())
    return h.hexdigest()


class Checkpoints:
    """The checkpoints of one session's turns graph (``graph_hash``: its
    :func:`graph_fingerprint`).

    ``resumable``: a checkpoint found on load that ``Session.resume`` may continue.
    ``interrupted``: the last one given up on.  ``paused``: the turn waiting at a human
    gate (``on_paused`` is told each new value: the manager's gate timers listen).
    ``failed``: the latest turn, failed, for ``retry_turn``.  ``point``: where the
    running turn is (its last checkpoint, or where it started).
    """

    __slots__ = (
        "_paused",
        "_writer",
        "failed",
        "graph_hash",
        "interrupted",
        "on_paused",
        "point",
        "resumable",
    )

    def __init__(self, writer: SessionWriter, graph_hash: str) -> None:
        self._writer = writer
        self.graph_hash = graph_hash
        self.resumable: Checkpoint | None = None
        self.interrupted: Checkpoint | None = None
        self._paused: Checkpoint | None = None
        self.failed: Checkpoint | None = None
        self.point: Checkpoint | None = None
        self.on_paused: Callable[[Checkpoint | None], None] | None = None

    @property
    def paused(self) -> Checkpoint | None:
        """The turn waiting at a human gate, if any."""
        return self._paused

    @paused.setter
    def paused(self, cp: Checkpoint | None) -> None:
        # Every pause, answer, timeout and cancelled answer passes here, so a listener
        # sees each one without the turn code knowing about it.
        changed = cp is not self._paused
        self._paused = cp
        if changed and self.on_paused is not None:
            self.on_paused(cp)

    async def adopt(self, cp: Checkpoint | None, turn_count: int) -> None:
        """Decide what to do with a checkpoint found on load.

        Same graph and the next turn: keep it in :attr:`resumable` (:attr:`paused` for
        a pause).  A failed turn's, for the latest turn: keep it in :attr:`failed`
        (``retry_turn`` checks the graph).  Otherwise give up on it (:meth:`abandon`).
        """
        if cp is None:
            return
        if cp.kind == "failed":
            if cp.turn == turn_count:
                self.failed = cp
            else:  # a later turn superseded it; nothing to report
                await self._writer.clear_checkpoint()
            return
        if cp.graph_hash == self.graph_hash and cp.turn == turn_count + 1:
            if cp.kind == "paused":
                self.paused = cp
            else:
                self.resumable = cp
            return
        if cp.kind == "paused" and cp.turn == turn_count + 1:
            # Loaded with another graph (a typo'd --graph?): report it, but keep it in
            # the store for the graph that asked; the next turn supersedes it.
            reason = "turn graph changed (the question stays stored for its graph)"
            await self.abandon(cp, reason, clear=False)
            return
        changed = cp.graph_hash != self.graph_hash
        await self.abandon(cp, "turn graph changed" if changed else "stale")

    async def abandon(self, cp: Checkpoint, reason: str, *, clear: bool = True) -> None:
        """Give up on ``cp``: clear it in the store (unless not ``clear``), keep it in
        ``interrupted``, warn."""
        if clear:
            await self._writer.clear_checkpoint()
        self.interrupted = cp
        self.resumable = None
        log(
            "warning",
            "turn.interrupted",
            session_id=self._writer.session_id,
            turn=cp.turn,
            node=cp.next_node,
            reason=reason,
        )

    def take(self) -> Checkpoint | None:
        """The resumable checkpoint, which is no longer resumable after this."""
        cp, self.resumable = self.resumable, None
        return cp

    def hook(
        self,
        text: str,
        turn: int,
        trace_id: str,
        prior: tuple[Mapping[str, Any], ...],
        start: tuple[str, Mapping[str, Any]],
        graph: Graph | None = None,
        *,
        store: bool = True,
        steps: int = 0,
    ) -> OnStep:
        """An ``on_step`` hook saving turn ``turn`` (input ``text``) after every node
        outside parallel branches; ``prior`` is the trace of the nodes a resumed turn ran
        before, ``start`` the node it starts at and the context it carries in (kept in
        :attr:`point` as where a retry would start, without the answer to a gate: a retry
        asks again); ``graph`` the graph run (its fan-outs' edge order orders the
        branches' visits in the trace).  A retry point, like a checkpoint, is never
        inside a branch: a turn that failed in one is retried from before its fan-out.
        ``steps``: the node visits the turn made in earlier runs; each checkpoint adds
        this run's visits so far (a sub-graph node's inner visits are not heard here,
        so a checkpoint may count fewer than the engine did).

        Not ``store``: the hook only tracks :attr:`point` and writes nothing.  A turn
        that goes on from a pause or a failure runs so: the stored pause (or failure)
        must stand until that turn commits, so that a process killed in the middle of it
        leaves the question answerable (the failed turn retriable) in the next process,
        which no running checkpoint would (no command resumes one)."""
        done: list[Mapping[str, Any]] = list(prior)
        held: dict[str, list[Mapping[str, Any]]] = {}  # branch id -> its visits so far
        graph_hash = self.graph_hash
        save = self._writer.save_checkpoint if store else None
        kept = {k: v for k, v in durable_context(start[1]).items() if k != ANSWER_KEY}
        self.point = Checkpoint(
            turn, graph_hash, trace_id, text, "", start[0], kept, prior, time.time(), steps=steps
        )
        before = steps - len(prior)  # + len(done): the visits of the turn so far

        async def on_step(
            record: NodeRecord, next_node: str | None, ctx: Mapping[str, Any]
        ) -> None:
            branch = record.branch
            visits: list[Mapping[str, Any]] = [record.to_dict()]
            if held:  # a fan-out's step comes after its branches' visits
                prefix = f"{branch}/" if branch is not None else ""
                for first in _targets(graph, record.node_id):
                    visits += held.pop(prefix + first, ())
            if branch is not None:
                held.setdefault(branch, []).extend(visits)
                return  # inside a branch: no checkpoint (see the module's docstring)
            done.extend(visits)
            if next_node is None:
                return  # the commit that follows deletes the checkpoint
            cp = Checkpoint(
                turn,
                graph_hash,
                trace_id,
                text,
                record.node_id,
                next_node,
                durable_context(ctx),
                tuple(done),
                time.time(),
                steps=before + len(done),
            )
            if save is not None:
                await save(cp)
            self.point = cp

        return on_step

    async def pause(self, cp: Checkpoint) -> None:
        """Store the pause ``cp`` (checkpoints on or off: it must outlive the process)."""
        await self._writer.save_checkpoint(cp)
        self.paused = cp

    async def keep_failed(self, error: str, steps: int) -> None:
        """After a failed turn's commit: store where it failed, for ``retry_turn``;
        ``steps``: the node visits of the turn's runs, the failing one included."""
        point, self.point = self.point, None
        if point is not None:
            cp = dataclasses.replace(point, kind="failed", error=error, ts=time.time(), steps=steps)
            await self._writer.save_checkpoint(cp)
            self.failed = cp

    def restore(self, was: Checkpoint | None) -> None:
        """Put back in memory the paused or failed turn ``was`` a turn went on from
        (its run was cancelled or its commit failed: the store still holds ``was``)."""
        self.paused = was if was is not None and was.kind == "paused" else None
        self.failed = was if was is not None and was.kind == "failed" else None

    def forget_stale(self, turn_count: int) -> None:
        """Drop a pause or failure a commit of unknown outcome turned out to supersede
        (the store caught up: the session has ``turn_count`` turns now)."""
        if self.paused is not None and self.paused.turn != turn_count + 1:
            self.paused = None
        if self.failed is not None and self.failed.turn != turn_count:
            self.failed = None

    async def cancelled(self, was: Checkpoint | None, saved: bool) -> None:
        """A cancelled turn stores nothing: its checkpoint is cleared (``saved``: it had
        one), shielded, and the paused or failed turn it went on from (``was``) is put
        back, so a cancelled answer leaves the question waiting.  ``Fenced`` here is
        handled (the session is closed); the caller re-raises the cancellation."""
        self.restore(was)
        if not saved:
            return  # the store still holds ``was``
        with anyio.CancelScope(shield=True), contextlib.suppress(Fenced):
            if was is None:
                await self._writer.clear_checkpoint()
            else:
                await self._writer.save_checkpoint(was)
