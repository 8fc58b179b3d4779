"""A session host: one :class:`~sessions.SessionManager` serving many sessions, run as a
Ray actor on one node.

The class is plain Python (it never imports Ray): :class:`~sessions.cluster.RaySessions`
wraps it with ``ray.remote`` and calls its async methods across the hop.  Every method
answers a :class:`~sessions.cluster.wire.Reply`, so turngraph errors reach the caller
as themselves.

A host opens its manager on first use, not in ``__init__``: Ray re-runs ``__init__``
when it restarts the actor after a crash, and the restarted host must serve again
without anyone calling a start method.  Each incarnation leases sessions under an owner
name of its own, so the store tells a dead incarnation from a live one: a session a
dead host held is taken over when its lease expires (the takeover waits for that), and
a host presumed dead while still running is fenced out of every later write.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from engine.outcome import NodeRecord
from sessions.cluster.hashing import owner_of
from sessions.cluster.wire import Reply, pack_error, turn_reply
from sessions.errors import Fenced, SessionBusy
from sessions.manager import SessionManager
from sessions.session import Session, TurnResult
from sessions.store.base import Message

__all__ = ["SessionHost"]

_POLL = 0.05
"""First wait between attempts to take over a session whose lease is still live."""


class SessionHost:
    """Hosts sessions for the cluster client (see the module).

    ``manager`` holds :class:`~sessions.SessionManager` keyword arguments (adapters,
    graphs, limits, ``lease_ttl`` ...; they travel pickled).  ``takeover_wait`` bounds
    how long opening a session waits for another owner's live lease to expire or be
    released.
    """

    def __init__(
        self, host_id: str, store: str, manager: Mapping[str, Any], takeover_wait: float
    ) -> None:
        self.host_id = host_id
        self.owner = f"ray:{host_id}:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._store = store
        self._options = dict(manager)
        self._takeover_wait = takeover_wait
        self._manager: SessionManager | None = None
        self._started: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._failure: BaseException | None = None
        self._runner: asyncio.Task[None] | None = None
        self._members: tuple[str, ...] = ()
        """The hosts as last told by the client (empty: not told yet, serve anything)."""
        self._version = -1
        self._closing: set[asyncio.Future[Any]] = set()
        """Sessions being released after a rebalance (kept so they are not collected)."""

    # ------------------------------------------------------------------ lifecycle

    async def _serve(self, ready: asyncio.Event, stop: asyncio.Event) -> None:
        """Own the manager for the actor's life: anyio wants one task to enter and exit."""
        try:
            async with SessionManager(self._store, owner=self.owner, **self._options) as m:
                self._manager = m
                ready.set()
                await stop.wait()
        except BaseException as exc:
            self._failure = exc
            raise
        finally:
            self._manager = None
            ready.set()

    async def _mgr(self) -> SessionManager:
        """The running manager, started on first use."""
        if self._started is None:
            self._started, self._stop = asyncio.Event(), asyncio.Event()
            self._runner = asyncio.get_running_loop().create_task(
                self._serve(self._started, self._stop)
            )
        await self._started.wait()
        if self._manager is None:
            raise self._failure or RuntimeError("the session manager stopped")
        return self._manager

    async def stop(self) -> None:
        """Close every session (releasing its lease) and the store."""
        if self._stop is not None and self._runner is not None:
            self._stop.set()
            await asyncio.gather(self._runner, return_exceptions=True)

    async def info(self) -> Reply:
        """Who this incarnation is (host id, owner name, pid, hosted session ids and those
        running a turn), once
        its manager serves."""
        return await _answer(self._info)

    async def _info(self) -> dict[str, Any]:
        live = (await self._mgr()).live
        return {
            "host": self.host_id,
            "owner": self.owner,
            "pid": os.getpid(),
            "live": [s.id for s in live],
            "busy": [s.id for s in live if s.busy],
        }

    # ------------------------------------------------------------------ sessions

    async def _session(self, session_id: str) -> Session:
        """The session, taking it over from a previous owner once its lease frees up;
        refused when it hashes to another host (so a closed session is not reopened
        here by a call that was routed before the members changed)."""
        members = self._members
        if members and owner_of(session_id, members) != self.host_id:
            raise _Moved(session_id)
        manager = await self._mgr()
        deadline = time.monotonic() + self._takeover_wait
        pause = _POLL
        while True:
            try:
                session = await manager.get_or_create(session_id)
            except Fenced:
                raise
            except SessionBusy:  # from acquire only: another owner's lease is live
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.5)
                continue
            if self._members and owner_of(session_id, self._members) != self.host_id:
                # The members changed while it opened (a rebalance that ran meanwhile
                # did not see it live): release it, or its lease would keep its new host
                # out for as long as this host lives.
                await manager.close(session_id)
                raise _Moved(session_id)
            return session

    async def open(self, session_id: str) -> Reply:
        """Host the session (creating it if new); answers its ``turn_count``."""
        return await _answer(self._count, session_id)

    async def _count(self, session_id: str) -> int:
        return (await self._session(session_id)).turn_count

    async def send(self, session_id: str, text: str, expect: int | None) -> Reply:
        """Run one turn.  ``expect`` is the turn number the caller expects it to take:
        when the session already has that turn with this input (its previous host
        committed it and died before answering), that turn is answered instead of
        running the input twice."""
        return await _answer(self._send, session_id, text, expect)

    async def _send(self, session_id: str, text: str, expect: int | None) -> Reply:
        try:
            return await self._send_once(session_id, text, expect)
        except Fenced:
            # Another host took the session while this one was presumed dead; the
            # manager has dropped it and nothing was written.  Take it back through the
            # lease (the client routes it here again) and run the turn once more.
            return await self._send_once(session_id, text, expect)

    async def _send_once(self, session_id: str, text: str, expect: int | None) -> Reply:
        session = await self._session(session_id)
        if expect is not None and session.turn_count >= expect:
            done = await _committed(session, expect, text)
            if done is not None:
                return turn_reply(done)
        return turn_reply(await session.send(text))

    async def go_on(self, session_id: str, step: str, args: tuple[Any, ...]) -> Reply:
        """Run ``session.answer(choice, node=node)`` (``args``: ``(choice, node)``) or
        ``session.retry_turn()`` (``step``): a turn
        that goes on from a paused gate or a failed node.  Not re-sent after a host
        loss: the new host finds the gate answered or the retry done, and refuses."""
        if step not in ("answer", "retry_turn"):
            raise ValueError(f"unknown step {step!r}")
        return await _answer(self._go_on, session_id, step, args)

    async def _go_on(self, session_id: str, step: str, args: tuple[Any, ...]) -> Reply:
        session = await self._session(session_id)
        if step == "answer":
            choice, node = args
            return turn_reply(await session.answer(choice, node=node))
        return turn_reply(await session.retry_turn())

    async def stream(self, session_id: str, text: str, expect: int | None) -> AsyncIterator[Any]:
        """Run one turn like :meth:`send`, yielding its events as they happen
        (:meth:`sessions.Session.stream`) in lists of those ready at once, the last list
        ending with the :class:`Reply` holding its :class:`TurnResult` or its error.
        Called as a Ray streaming generator; when the caller cancels it, the turn is
        cancelled unless it has committed.  A turn the previous host committed (see
        ``expect``) is answered alone, without events."""
        try:
            session = await self._session(session_id)
            if expect is not None and session.turn_count >= expect:
                done = await _committed(session, expect, text)
                if done is not None:
                    yield [turn_reply(done)]
                    return
        except _Moved:
            yield [Reply(moved=True)]
            return
        except Exception as exc:
            yield [Reply(error=pack_error(exc))]
            return
        # A pump fills a queue and each yield takes all that is queued: one Ray object
        # per burst of events rather than per event (each object costs about a ms).
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def pump() -> None:
            try:
                async with session.stream(text) as events:
                    async for item in events:
                        if isinstance(item, TurnResult):
                            queue.put_nowait(turn_reply(item))
                        else:
                            queue.put_nowait(item)
            except Exception as exc:
                queue.put_nowait(Reply(error=pack_error(exc)))

        task = asyncio.get_running_loop().create_task(pump())
        try:
            while True:
                batch = [await queue.get()]
                while not queue.empty():
                    batch.append(queue.get_nowait())
                yield batch
                if isinstance(batch[-1], Reply):
                    return
        finally:
            task.cancel()  # left early: the stream's exit cancels the uncommitted turn
            await asyncio.gather(task, return_exceptions=True)

    async def messages(self, session_id: str, offset: int, limit: int) -> Reply:
        """A page of the session's messages (:meth:`sessions.Session.messages`)."""
        return await _answer(self._messages, session_id, offset, limit)

    async def _messages(self, session_id: str, offset: int, limit: int) -> Any:
        return await (await self._session(session_id)).messages(offset, limit)

    async def close(self, session_id: str) -> Reply:
        """Stop hosting the session here (its lease is released)."""
        return await _answer(self._close, session_id)

    async def _close(self, session_id: str) -> None:
        await (await self._mgr()).close(session_id)

    async def delete(self, session_id: str) -> Reply:
        """Delete the session and all its records from the store."""
        return await _answer(self._delete, session_id)

    async def _delete(self, session_id: str) -> bool:
        return await (await self._mgr()).delete(session_id)

    async def compact(self, session_id: str) -> Reply:
        """Compact the session now (:meth:`sessions.SessionManager.compact`)."""
        return await _answer(self._compact, session_id)

    async def _compact(self, session_id: str) -> Any:
        await self._session(session_id)  # taken over first, as for a turn
        return await (await self._mgr()).compact(session_id)

    async def rebalance(self, members: tuple[str, ...], version: int) -> Reply:
        """Hosts are now ``members`` (change number ``version``; an older list arriving
        late is ignored): close (and so release) every session another member serves
        now, so its new host takes it over at once."""
        return await _answer(self._rebalance, members, version)

    async def _rebalance(self, members: tuple[str, ...], version: int) -> int:
        manager = await self._mgr()
        if version < self._version:
            return 0
        self._members, self._version = members, version
        moved = [s.id for s in manager.live if owner_of(s.id, members) != self.host_id]
        if moved:
            # Released in the background: closing waits for running turns and writes to
            # the store, and the client bounds this call by its probe timeout; a host
            # slow to answer would be taken for dead.  The new hosts wait for the leases.
            closing = asyncio.gather(*(manager.close(sid) for sid in moved), return_exceptions=True)
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        return len(moved)


class _Moved(Exception):
    """The session hashes to another host now."""


async def _answer(fn: Callable[..., Awaitable[Any]], *args: Any) -> Reply:
    """``fn(*args)`` as a Reply: its value, or its error packed for the hop."""
    try:
        value = await fn(*args)
    except _Moved:
        return Reply(moved=True)
    except Exception as exc:
        return Reply(error=pack_error(exc))
    return value if isinstance(value, Reply) else Reply(value)


async def _committed(session: Session, turn: int, text: str) -> TurnResult | None:
    """Turn ``turn`` as stored, if it ran input ``text``; else ``None``.

    A failed turn stores no messages, so it is taken as ours when it is the latest.
    """
    records = await session.traces(turn - 1, 1)
    if not records or records[0].turn != turn:
        return None
    record = records[0]
    trace = tuple(
        NodeRecord(
            r["id"],
            r["handler"],
            r["status"],
            r["attempts"],
            r["duration_ms"] / 1000.0,
            r.get("reason"),
            changed=tuple(r.get("changed", ())),
        )
        for r in record.trace
    )
    if record.status != "success":
        if session.turn_count != turn:
            return None
        return TurnResult("", "fail", turn, trace, None, record.trace_id)
    messages = await _turn_messages(session, turn)
    if not messages or messages[0].role != "user" or messages[0].content != text:
        return None
    replies = [m.content for m in messages if m.role == "assistant"]
    return TurnResult(replies[-1] if replies else "", "success", turn, trace, None, record.trace_id)


async def _turn_messages(session: Session, turn: int) -> list[Message]:
    """The messages of ``turn`` (a recent one: read backwards from the newest)."""
    found: list[Message] = []
    stop = session.message_count
    while stop > 0:
        start = max(0, stop - 16)
        page = await session.messages(start, stop - start)
        found[:0] = [m for m in page.items if m.turn == turn]
        if not page.items or page.items[0].turn < turn:
            break
        stop = start
    return found
