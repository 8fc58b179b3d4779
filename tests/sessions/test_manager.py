"""SessionManager: single-flight loading, ids, limits, switch/active, close, delete, leases."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from engine.graph import Node
from sessions import Limits, Session, SessionManager
from sessions.errors import (
    Fenced,
    InvalidSessionId,
    SessionBusy,
    SessionClosed,
    SessionExists,
    SessionLimitReached,
    SessionNotFound,
)
from sessions.store.base import LoadedSession, SessionMeta, Store
from sessions.store.memory import MemoryStore

from .session_kit import (
    SECRET,
    chain_graph,
    reply_registry,
    running,
    wait_until,
)


class _YieldingStore(MemoryStore):
    """A MemoryStore whose create/acquire/load yield to other tasks, as real I/O does."""

    async def create(self, meta: SessionMeta) -> SessionMeta:
        await anyio.lowlevel.checkpoint()
        return await super().create(meta)

    async def acquire(self, session_id: str, owner: str, ttl: float) -> int:
        await anyio.lowlevel.checkpoint()
        return await super().acquire(session_id, owner, ttl)

    async def load(self, session_id: str, *, recent: int = 50) -> LoadedSession:
        await anyio.lowlevel.checkpoint()
        return await super().load(session_id, recent=recent)


async def test_hundred_concurrent_get_or_create_make_one_session() -> None:
    """Concurrent get_or_create for one id share a single load: one Session object."""
    store = _YieldingStore(secret=SECRET)
    async with store, running(store) as m:
        got: list[Session] = []

        async def get() -> None:
            got.append(await m.get_or_create("shared"))

        async with anyio.create_task_group() as tg:
            for _ in range(100):
                tg.start_soon(get)
        assert len(got) == 100
        assert len({id(s) for s in got}) == 1
        assert m.live == (got[0],)
        assert [meta.id for meta in await m.list_sessions()] == ["shared"]


@pytest.mark.parametrize("bad", ["../etc", "", "a\x00b", "x" * 200, "a/b", ".hidden"])
async def test_invalid_ids_are_refused(store: Store, bad: str) -> None:
    """Unsafe ids raise InvalidSessionId before reaching the store."""
    async with running(store) as m:
        for call in (m.create, m.get, m.get_or_create, m.switch, m.delete):
            with pytest.raises(InvalidSessionId):
                await call(bad)
        assert await m.list_sessions() == ()


async def test_get_unknown_raises_and_create_twice_raises(store: Store) -> None:
    """get of a missing id is SessionNotFound; create of an existing id is SessionExists."""
    async with running(store) as m:
        with pytest.raises(SessionNotFound):
            await m.get("nobody")
        await m.create("once")
        with pytest.raises(SessionExists):
            await m.create("once")
        await m.close("once")
        with pytest.raises(SessionExists):
            await m.create("once")
        generated = await m.create()
        assert generated.id and generated.id != "once"


async def test_active_session_limit(store: Store) -> None:
    """More live sessions than ``max_active_sessions`` raise; closing frees a slot."""
    async with running(store, limits=Limits(max_active_sessions=2)) as m:
        await m.create("a")
        await m.get_or_create("b")
        with pytest.raises(SessionLimitReached):
            await m.get_or_create("c")
        assert await m.get("a") is m.live[0]  # a live session is always reachable
        await m.close("a")
        assert (await m.get_or_create("c")).id == "c"


async def test_switch_and_active(store: Store) -> None:
    """switch makes a session active (loading it); unknown ids raise SessionNotFound."""
    async with running(store) as m:
        assert m.active is None
        await m.create("one")
        await m.create("two")
        await m.close("two")
        switched = await m.switch("two")
        assert m.active is switched and switched.id == "two"
        with pytest.raises(SessionNotFound):
            await m.switch("three")
        assert m.active is switched
        await m.close("two")
        assert m.active is None


async def test_close_waits_for_the_running_turn(store: Store) -> None:
    """close() returns only after the running turn committed; then the lease is free."""
    entered, release = anyio.Event(), anyio.Event()

    async def llm(node: Node, ctx: Mapping[str, Any]) -> None:
        entered.set()
        await release.wait()

    async with running(store, reply_registry(llm_call=llm)) as m:
        session = await m.create("closing")
        closed = anyio.Event()
        results: list[Any] = []

        async def close() -> None:
            await m.close("closing")
            closed.set()

        async def send() -> None:
            results.append(await session.send("last words"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(send)
            await entered.wait()
            tg.start_soon(close)
            for _ in range(20):
                await anyio.lowlevel.checkpoint()
            assert not closed.is_set() and session.closed
            release.set()
        assert results[0].ok
        assert m.live == ()
        with pytest.raises(SessionClosed):
            await session.send("after")
        assert await store.acquire("closing", "someone-else", 5.0) > session.token
        page = await store.messages("closing", 0, 10)
        assert [x.content for x in page] == ["last words", "re: last words"]


async def test_a_second_close_waits_for_the_first(store: Store) -> None:
    """Two closes racing (an application's close and a delete or shutdown): the second
    waits for the first, so the lease is not released under the running turn (which
    would then be fenced and lost)."""
    entered, release = anyio.Event(), anyio.Event()

    async def llm(node: Node, ctx: Mapping[str, Any]) -> None:
        entered.set()
        await release.wait()

    results: list[Any] = []
    async with running(store, reply_registry(llm_call=llm)) as m:
        session = await m.create("closing-twice")

        async def send() -> None:
            try:
                results.append((await session.send("hello")).ok)
            except Exception as exc:  # Fenced, before the fix
                results.append(exc)

        with anyio.fail_after(10):  # a close that never returns fails, not hangs
            await _send_and_close_twice(m, send, entered, release)
        meta = (await store.load("closing-twice")).meta
    assert results == [True] and meta.turn_count == 1


async def _send_and_close_twice(
    m: SessionManager,
    send: Callable[[], Coroutine[Any, Any, None]],
    entered: anyio.Event,
    release: anyio.Event,
) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(send)
        await entered.wait()
        tg.start_soon(m.close, "closing-twice")
        for _ in range(10):
            await anyio.lowlevel.checkpoint()
        tg.start_soon(m.close, "closing-twice")
        for _ in range(10):
            await anyio.lowlevel.checkpoint()
        release.set()


async def test_reload_after_close_continues_counts_and_history(store: Store) -> None:
    """A closed session loads again from the store with its turns and messages."""
    async with running(store) as m:
        session = await m.create("again")
        for i in range(3):
            await session.send(f"m{i}")
        await m.close("again")
        loaded = await m.get("again")
        assert loaded is not session
        assert loaded.turn_count == 3 and loaded.message_count == 6
        assert [x.content for x in loaded.recent(2)] == ["m2", "re: m2"]
        result = await loaded.send("m3")
        assert result.turn == 4
        assert (await loaded.messages(6, 10)).items[0].seq == 6


async def test_a_second_owner_cannot_take_a_live_session(store: Store) -> None:
    """While one manager holds the lease, another manager's get raises SessionBusy."""
    async with running(store, owner="one") as first, running(store, owner="two") as second:
        await first.create("leased")
        with pytest.raises(SessionBusy):
            await second.get("leased")
        await first.close("leased")
        assert (await second.get("leased")).id == "leased"


class _CountingStore(MemoryStore):
    renewals = 0

    async def renew(self, session_id: str, owner: str, token: int, ttl: float) -> None:
        self.renewals += 1
        await super().renew(session_id, owner, token, ttl)


async def test_leases_are_renewed_in_the_background() -> None:
    """A live session's lease is renewed every ttl/3, so it never lapses to another owner."""
    store = _CountingStore(secret=SECRET)
    async with store, running(store, lease_ttl=0.15) as m:
        await m.create("kept")
        await wait_until(lambda: store.renewals >= 4)  # well past one ttl
        with pytest.raises(SessionBusy):
            await store.acquire("kept", "two", 1.0)


async def test_delete_and_compact_through_the_manager(store: Store) -> None:
    """delete closes and removes the session; compact works by id."""
    async with running(store, limits=Limits(keep_recent_turns=1)) as m:
        session = await m.create("gone")
        await session.send("a")
        await session.send("b")
        metrics = await m.compact("gone")
        assert metrics.messages_compacted == 2
        assert await m.delete("gone") is True
        assert m.live == () and not await store.exists("gone")
        assert await m.delete("gone") is False


async def test_manager_must_be_running() -> None:
    """Using a manager outside ``async with`` is an error, not a hang."""
    m = SessionManager(
        MemoryStore(secret=SECRET), registry=reply_registry(), turn_graph=chain_graph()
    )
    with pytest.raises(SessionClosed):
        await m.get_or_create("x")


async def test_a_fenced_session_stops_writing(store: Store) -> None:
    """When another owner takes the session over, the next commit is refused and the
    session closes; nothing of that turn reaches memory."""
    async with running(store) as m:
        session = await m.create("taken")
        await session.send("mine")
        await store.release("taken", m.owner, session.token)
        await store.acquire("taken", "intruder", 30.0)
        with pytest.raises(Fenced):
            await session.send("too late")
        assert session.closed and [x.content for x in session.history] == ["mine", "re: mine"]
        with pytest.raises(SessionClosed):
            await session.send("again")


async def test_lease_renewal_notices_a_takeover(store: Store) -> None:
    """The renewal loop drops a session another owner has taken over."""
    async with running(store, lease_ttl=0.15) as m:
        session = await m.create("renewed")
        await store.release("renewed", m.owner, session.token)
        await store.acquire("renewed", "intruder", 30.0)
        await wait_until(lambda: session.closed)
        assert m.live == ()


async def test_default_manager_runs_the_shipped_graphs_offline() -> None:
    """With no arguments but a store URL, the shipped turn and heartbeat graphs run."""
    async with SessionManager("memory:", store_secret=SECRET) as m:
        session = await m.get_or_create("defaults")
        result = await session.send("hello there")
        assert result.ok and result.reply
        assert [x.role for x in session.history] == ["user", "assistant"]
        assert m.heartbeat_graph is not None
        assert await session.heartbeat.beat() is True
        assert session.heartbeat.failures == 0


async def test_a_fenced_session_leaves_the_manager(store: Store) -> None:
    """After Fenced the manager no longer hands out the dead session: get_or_create
    acquires afresh (SessionBusy while the other owner holds the lease)."""
    async with running(store) as m:
        session = await m.create("moved")
        await store.release("moved", m.owner, session.token)
        token = await store.acquire("moved", "intruder", 30.0)
        with pytest.raises(Fenced):
            await session.send("lost")
        assert m.live == ()
        with pytest.raises(SessionBusy):
            await m.get_or_create("moved")
        await store.release("moved", "intruder", token)
        again = await m.get_or_create("moved")
        assert again is not session and not again.closed
        assert (await again.send("back")).ok
