"""Watching a session's turns live: a per-session broadcast of the turns run here.

A turn streamed through this server (``POST /sessions/{id}/turns`` with ``Accept:
text/event-stream``, which is how the viewer's form sends one), or a plain turn of a
session someone is watching, hands each of its items (engine events, then the
:class:`~sessions.TurnResult`, or the error that stopped it) to :meth:`LiveHub.publish`.
Every watcher of the session (``GET /sessions/{id}/live``) gets them, in order.

A watcher that arrives while a turn runs first gets that turn's items so far (all but
its text deltas), kept from its ``RunStarted`` event to its result, so a page opened
mid-turn shows the whole path.
Nothing is kept for a session without a running turn or a watcher; a plain turn of a
session nobody watches publishes nothing at all.

**A watcher that does not keep up** (it stopped reading; its connection stalls) holds
at most ``buffer`` items.  One more and it is dropped: its stream ends after what it
holds (the page's ``EventSource`` reconnects and gets the running turn so far), so
a stalled watcher neither grows the server's memory nor slows the turn.

The hub lives in one server process: watchers see the turns this process runs, not
those of another worker.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from engine.events import Event, RunStarted, TextDelta

__all__ = ["WATCH_BUFFER", "LiveHub"]

WATCH_BUFFER = 4096
"""Items a watcher may hold unread (beyond the running turn's so far) before it is dropped."""


class _Channel:
    """One session's watchers and the items of its running turn."""

    __slots__ = ("items", "running", "watchers")

    def __init__(self) -> None:
        self.items: list[object] = []
        self.running = False
        self.watchers: set[MemoryObjectSendStream[object]] = set()


class LiveHub:
    """Per-session broadcast of turn items to the session's watchers (see the module)."""

    __slots__ = ("_buffer", "_channels")

    def __init__(self, buffer: int = WATCH_BUFFER) -> None:
        self._channels: dict[str, _Channel] = {}
        self._buffer = buffer

    def watched(self, session_id: str) -> bool:
        """Whether anyone watches ``session_id`` now."""
        channel = self._channels.get(session_id)
        return channel is not None and bool(channel.watchers)

    def publish(self, session_id: str, item: object) -> None:
        """Hand ``item`` of a turn of ``session_id`` to its watchers, and keep it for
        later ones while the turn runs (a ``RunStarted`` begins a turn, its result or
        error ends it).  Text deltas, the most frequent items, are handed on but not
        kept: a late watcher gets the reply's text from where it joined, and whole with
        the result, so what is kept stays a few items per node visit."""
        channel = self._channels.get(session_id)
        if type(item) is TextDelta:
            if channel is not None and channel.watchers:
                self._fan_out(channel, item)
            return
        if channel is None:
            if not isinstance(item, RunStarted):
                return  # nobody watches, and this is no turn's start
            channel = self._channels[session_id] = _Channel()
        if isinstance(item, RunStarted):
            channel.items = [item]
            channel.running = True
        elif not isinstance(item, Event):  # the result, or the error that stopped it
            if not channel.running:
                return  # a turn that never started (busy, closed): not the watchers' news
            channel.items = []
            channel.running = False
        elif channel.running:
            channel.items.append(item)
        if channel.watchers:
            self._fan_out(channel, item)
        elif not channel.running:
            del self._channels[session_id]

    @staticmethod
    def _fan_out(channel: _Channel, item: object) -> None:
        for watcher in tuple(channel.watchers):
            try:
                watcher.send_nowait(item)
            except anyio.WouldBlock:  # it stopped reading: drop it (see the module)
                channel.watchers.discard(watcher)
                watcher.close()
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                channel.watchers.discard(watcher)

    @contextlib.contextmanager
    def watch(self, session_id: str) -> Iterator[MemoryObjectReceiveStream[object]]:
        """A stream of ``session_id``'s turn items from now on, starting with those of
        the turn running now (if any), for as long as the block lasts, or until it falls
        ``buffer`` items behind (then the stream ends)."""
        channel = self._channels.get(session_id)
        if channel is None:
            channel = self._channels[session_id] = _Channel()
        size = len(channel.items) + self._buffer
        send, receive = anyio.create_memory_object_stream[object](size)
        for item in channel.items:
            send.send_nowait(item)
        channel.watchers.add(send)
        try:
            with receive:
                yield receive
        finally:
            channel.watchers.discard(send)
            send.close()
            if not channel.running and not channel.watchers:
                self._channels.pop(session_id, None)
