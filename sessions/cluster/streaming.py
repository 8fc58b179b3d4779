"""``RaySessions.stream(session_id, text)``: one turn's events across the Ray hop.

The session's host runs :meth:`sessions.Session.stream` and Ray streams each event back
as the host yields it (a streaming generator from the host actor's async method), so
the items are the same as in one process: the engine events in order, then
:class:`~engine.events.TurnCommitted` once the turn is in the store, and last the
:class:`~sessions.TurnResult`.  Leaving early (``aclose()``, leaving ``async with``, or
dropping the iterator after ``break``) cancels the host's generator, which cancels the
turn unless it committed, as in one process.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from types import TracebackType

from engine.events import Event
from sessions.session import TurnResult

__all__ = ["ClusterStream"]


class ClusterStream:
    """The async iterator :meth:`RaySessions.stream` returns; also an async context
    manager whose exit is :meth:`aclose` (the surface of :class:`sessions.TurnStream`)."""

    __slots__ = ("_items", "result")

    def __init__(self, items: AsyncGenerator[Event | TurnResult, None]) -> None:
        self._items = items
        self.result: TurnResult | None = None
        """The turn's result once it has been yielded."""

    def __aiter__(self) -> ClusterStream:
        return self

    async def __anext__(self) -> Event | TurnResult:
        item = await self._items.__anext__()
        if isinstance(item, TurnResult):
            self.result = item
        return item

    async def aclose(self) -> None:
        """Stop early: cancel the turn on its host unless it committed."""
        await self._items.aclose()

    async def __aenter__(self) -> ClusterStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
