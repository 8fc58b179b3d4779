"""Model usage added up: per turn (``TurnResult.usage``) and per session
(``await session.usage()``).

The unit is a node visit that called a model: its trace record carries ``model``,
``input_tokens`` and ``output_tokens`` (see :meth:`engine.NodeRecord.to_dict`).  A turn's
usage sums its visits; a session's sums the trace records of its stored turns, so it is
read from the store and survives restarts, and it counts failed turns too (their tokens
were spent all the same).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from engine.outcome import NodeRecord

if TYPE_CHECKING:
    from sessions.store.base import Store

__all__ = ["ModelUsage", "UsageTotals", "stored_usage"]

_PAGE = 500
"""Turn records read from the store per query by :func:`stored_usage`."""


@dataclass(frozen=True, slots=True)
class ModelUsage:
    """Tokens one model used: ``calls`` node visits, their input and output tokens."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    def to_dict(self) -> dict[str, int]:
        """``{"calls", "input_tokens", "output_tokens"}``."""
        return {
            "calls": self.calls,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
        }


@dataclass(frozen=True, slots=True)
class UsageTotals:
    """Usage summed over node visits, with a breakdown by model name.

    ``calls`` counts the visits that used a model; ``turns`` the turns summed (1 for a
    turn's own usage).  A visit whose model is not known is counted under ``""``.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    calls: int = 0
    turns: int = 0
    by_model: Mapping[str, ModelUsage] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def total_tokens(self) -> int:
        """Input and output tokens together."""
        return self.input_tokens + self.output_tokens

    @classmethod
    def of(cls, traces: Iterable[Iterable[NodeRecord | Mapping[str, Any]]]) -> UsageTotals:
        """The usage of the turns whose traces are ``traces`` (records or stored dicts)."""
        models: dict[str, list[int]] = {}
        turns = 0
        for trace in traces:
            turns += 1
            for r in trace:
                u = r.to_dict() if isinstance(r, NodeRecord) else r
                if "input_tokens" not in u:
                    continue
                row = models.setdefault(str(u.get("model") or ""), [0, 0, 0])
                row[0] += 1
                row[1] += int(u["input_tokens"])
                row[2] += int(u["output_tokens"])
        by_model = {name: ModelUsage(c, i, o) for name, (c, i, o) in models.items()}
        return cls(
            input_tokens=sum(m.input_tokens for m in by_model.values()),
            output_tokens=sum(m.output_tokens for m in by_model.values()),
            calls=sum(m.calls for m in by_model.values()),
            turns=turns,
            by_model=MappingProxyType(by_model),
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: the totals and ``by_model`` (name → :meth:`ModelUsage.to_dict`)."""
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "calls": self.calls,
            "turns": self.turns,
            "by_model": {name: m.to_dict() for name, m in self.by_model.items()},
        }


async def stored_usage(store: Store, session_id: str, page: int = _PAGE) -> UsageTotals:
    """The usage of every turn of ``session_id`` recorded in ``store``, read in pages."""
    traces: list[tuple[Mapping[str, Any], ...]] = []
    offset = 0
    while True:
        records = await store.turns(session_id, offset, page)
        traces.extend(r.trace for r in records)
        if len(records) < page:
            return UsageTotals.of(traces)
        offset += len(records)
