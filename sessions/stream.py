"""``session.stream(text)``: one turn as an async iterator of its events.

::

    async with session.stream("hello") as events:
        async for event in events:
            if isinstance(event, TextDelta):
                print(event.text, end="", flush=True)
            elif isinstance(event, TurnResult):
                reply = event.reply

The items are the turn's engine events in order (``RunStarted``, ``NodeStarted``,
``TextDelta``, ``ToolCallRequested``, ``ToolCallCompleted``, ``NodeCompleted``...),
then :class:`~engine.events.TurnCommitted` once the turn is in the store, and last the
:class:`~sessions.TurnResult` itself.  The turn runs in the session manager's task
group, in the session's FIFO order like :meth:`~sessions.Session.send`; it starts when
iteration starts.  Errors ``send`` would raise (``SessionBusy``, ``SessionClosed``, a
store error) are raised by the iteration instead.

**The buffer.**  Events wait in a buffer of ``buffer`` items (default
:data:`STREAM_BUFFER`) until the consumer takes them; the turn never waits for the
consumer.  When the buffer is full a text delta is not queued but merged into the text
delta waiting last (same node), so a slow consumer gets fewer, longer pieces of the
same text; other events (a few per node visit, so bounded by the graph's ``max_steps``)
and the ``TurnCommitted`` event are always queued, and the ``TurnResult`` is kept apart
from the buffer.  Nothing is dropped, and memory stays bounded by the turn's size.

**Leaving early.**  ``aclose()`` (or leaving the ``async with`` block) cancels a turn
that has not reached its commit and waits until it has unwound: nothing of it is
stored, and the session is idle and usable.  A turn already committed stays committed
(its ``TurnCommitted`` event said so).  A plain ``break`` out of ``async for`` cancels
the turn when the iterator is dropped, without waiting; the session's next turn waits
for it in FIFO order as usual.

A model stream cut mid-way is a transient adapter error: the node retries (its text so
far is void, as a ``NodeRetrying`` event says) or fails, and no partial reply is ever
committed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING

import anyio

from engine.events import Event, Observer, TextDelta, TurnCommitted
from sessions.errors import SessionClosed

if TYPE_CHECKING:
    from sessions.heartbeat import Spawn
    from sessions.turns import TurnResult

__all__ = ["STREAM_BUFFER", "TurnStream"]

STREAM_BUFFER = 64
"""Events a stream holds for its consumer before it merges text deltas (see the module)."""

Starter = Callable[[Observer], Awaitable["TurnResult"]]
"""Runs the turn with the stream's observer watching it (``TurnPipeline.send``)."""


def _asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop, or ``None`` under another backend (trio)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _Feed:
    """The producer's side: the buffer the turn's observer fills, the turn's task state.

    Kept apart from :class:`TurnStream` so the running turn does not keep the consumer's
    iterator alive: when the consumer drops the iterator, its ``__del__`` cancels the turn.
    """

    __slots__ = (
        "buffer",
        "capacity",
        "committed",
        "done",
        "ended",
        "error",
        "finished",
        "loop",
        "result",
        "scope",
        "session_id",
        "wakeup",
    )

    def __init__(self, session_id: str, capacity: int) -> None:
        self.session_id = session_id
        self.capacity = capacity
        self.buffer: deque[Event] = deque()
        # Set while the consumer waits.
        self.wakeup: anyio.Event | asyncio.Future[None] | None = None
        self.loop = _asyncio_loop()
        self.scope: anyio.CancelScope | None = None
        self.ended = False  # the turn's task has finished
        self.finished: anyio.Event | None = None  # made only for a caller that waits
        self.result: TurnResult | None = None
        self.error: BaseException | None = None
        self.committed = False
        self.done = False

    def __call__(self, event: Event) -> None:
        """The turn's observer: queue ``event`` (merging text when full), wake the consumer."""
        buf = self.buffer
        if len(buf) >= self.capacity and buf:
            last = buf[-1]
            if (
                type(event) is TextDelta
                and type(last) is TextDelta
                and last.node_id == event.node_id
            ):
                buf[-1] = TextDelta(last.run_id, last.node_id, last.text + event.text)
                return  # the consumer was woken by ``last`` already
        if type(event) is TurnCommitted:
            self.committed = True
        buf.append(event)
        if self.wakeup is not None:
            self.wake()

    def wake(self) -> None:
        """Wake the consumer waiting in ``__anext__`` (there is one: ``wakeup`` is set)."""
        wakeup, self.wakeup = self.wakeup, None
        if isinstance(wakeup, anyio.Event):
            wakeup.set()
        elif wakeup is not None and not wakeup.done():  # an asyncio future
            wakeup.set_result(None)

    async def wait(self) -> None:
        """Sleep until :meth:`wake` (the consumer's side)."""
        loop = self.loop
        if loop is not None:
            # A bare future: a third of the cost of an anyio.Event (which wraps an
            # asyncio.Event, which makes a future anyway), paid once per delta.
            future = self.wakeup = loop.create_future()
            await future
        else:
            event = self.wakeup = anyio.Event()
            await event.wait()

    async def run(self, start: Starter) -> None:
        """The turn, in the manager's task group; it never raises into that group but
        for the group's own cancellation."""
        try:
            with anyio.CancelScope() as scope:
                self.scope = scope
                if self.done:  # closed before the task began
                    scope.cancel()
                self.result = await start(self)
        except Exception as exc:  # handed to the consumer, raised by its iteration
            self.error = exc
        finally:
            self.done = True
            self.scope = None
            self.ended = True
            self.wake()
            if self.finished is not None:
                self.finished.set()

    def cancel(self) -> None:
        """Cancel the turn unless it reached its commit (or has not begun: then it never will)."""
        if self.committed:
            return
        if self.scope is not None:
            self.scope.cancel()
        elif not self.ended:
            self.done = True

    async def join(self) -> None:
        """Wait until the turn's task has finished (shielded: a caller that leaves early
        must still find the session idle)."""
        if self.ended:
            return
        finished = self.finished
        if finished is None:
            finished = self.finished = anyio.Event()
        with anyio.CancelScope(shield=True):
            await finished.wait()


class TurnStream:
    """The async iterator :meth:`Session.stream` returns (see the module).

    Also an async context manager whose exit is :meth:`aclose`.
    """

    __slots__ = ("_feed", "_given", "_spawn", "_start", "_started")

    def __init__(
        self, session_id: str, start: Starter, spawn: Spawn, buffer: int = STREAM_BUFFER
    ) -> None:
        if buffer < 1:
            raise ValueError(f"buffer must be at least 1, not {buffer}")
        self._feed = _Feed(session_id, buffer)
        self._start = start
        self._spawn = spawn
        self._started = False
        self._given = False

    def __aiter__(self) -> TurnStream:
        return self

    async def __anext__(self) -> Event | TurnResult:
        feed = self._feed
        if not self._started:
            self._begin()
        while True:
            if feed.buffer:
                return feed.buffer.popleft()
            if feed.done:
                return self._last()
            await feed.wait()

    def _begin(self) -> None:
        feed, start = self._feed, self._start
        if feed.done:  # closed before the first item was asked for: no task, ever
            feed.ended = True
        else:
            self._spawn(lambda: feed.run(start))  # raises SessionClosed if the manager stopped
        self._started = True

    def _last(self) -> TurnResult:
        """The result once the buffer is empty; the turn's error; else the end."""
        feed = self._feed
        if feed.result is not None and not self._given:
            self._given = True
            return feed.result
        if feed.error is not None:
            error, feed.error = feed.error, None
            self._given = True
            raise error
        if not self._given and self._started and feed.ended:
            self._given = True  # cancelled from outside: say why once, then end
            raise SessionClosed(feed.session_id, "the turn was cancelled before it ended")
        raise StopAsyncIteration

    @property
    def result(self) -> TurnResult | None:
        """The turn's result once it has ended (``None`` before, or if it failed to run)."""
        return self._feed.result

    async def aclose(self) -> None:
        """Stop early: cancel the turn unless it committed, and wait until it has unwound."""
        feed = self._feed
        self._given = True
        feed.cancel()
        if self._started:
            await feed.join()  # the session is idle when we return
        feed.buffer.clear()

    async def __aenter__(self) -> TurnStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # ``break`` out of ``async for`` never calls aclose(): cancel on the way out.
        # Cancelling needs the event loop's thread; at interpreter exit there may be none.
        feed = getattr(self, "_feed", None)  # None when __init__ refused its arguments
        if feed is not None:
            with contextlib.suppress(RuntimeError):
                feed.cancel()
