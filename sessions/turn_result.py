"""How one turn ended, as ``send``, ``answer``, ``retry_turn`` and ``resume`` return it."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.errors import GatePaused
from engine.outcome import NodeRecord, RunStatus
from sessions.usage import UsageTotals

__all__ = ["TurnResult"]


@dataclass(frozen=True, slots=True)
class TurnResult:
    """How one turn ended: the reply, ``status`` (success/fail/paused), its number and
    node trace.

    ``error`` is the run's error when it failed (a :class:`~engine.errors.RunError`);
    :attr:`usage` sums the model tokens of the trace's node visits.  A ``paused`` turn
    waits at a human gate (``error``: the :class:`~engine.errors.GatePaused` with its
    ``question`` and ``choices``); nothing of it is committed until it is answered.
    """

    reply: str
    status: RunStatus
    turn: int
    trace: tuple[NodeRecord, ...]
    error: BaseException | None = field(default=None, compare=False)
    trace_id: str = ""

    @property
    def ok(self) -> bool:
        """True when the turn reached an exit node and was committed."""
        return self.status == "success"

    @property
    def question(self) -> str:
        """What a paused turn asks ("" unless paused)."""
        return self.error.question if isinstance(self.error, GatePaused) else ""

    @property
    def choices(self) -> tuple[str, ...]:
        """The answers a paused turn accepts (empty unless paused)."""
        return self.error.choices if isinstance(self.error, GatePaused) else ()

    @property
    def usage(self) -> UsageTotals:
        """The turn's model usage: tokens in and out, by model (computed on demand, so
        a turn whose usage nobody reads pays nothing for it)."""
        return UsageTotals.of((self.trace,))
