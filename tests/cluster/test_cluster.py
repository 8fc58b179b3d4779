"""Sessions on a local three-node Ray cluster over one PostgreSQL store.

The tests share one cluster and one client and run in file order: concurrent turns,
then a host process killed and a node removed under load, then a node added, then a
host frozen and presumed dead while it still runs.  Recovery times are printed (see
them with ``pytest -rP``); nothing asserts on wall-clock time.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import msgspec
import pytest
import pytest_asyncio

from engine.events import NodeStarted, TextDelta, TurnCommitted
from sessions import SessionManager, TurnResult
from sessions.cluster import HostLost, RaySessions
from sessions.store import OpenStore, open_store

from .conftest import NODE, SECRET
from .models import SLOW, SlowOnRequest

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def store(pg_schema_url: str) -> AsyncIterator[OpenStore]:
    """The cluster's store, read directly from the test process."""
    async with open_store(pg_schema_url, secret=SECRET) as s:
        yield s


async def user_texts(store: OpenStore, session_id: str) -> list[tuple[int, str]]:
    """(turn, text) of every stored user message of the session, in order."""
    messages = await store.messages(session_id, 0, 100_000)
    return [(m.turn, m.content) for m in messages if m.role == "user"]


@dataclass
class Load:
    """Callers sending numbered turns to their sessions until stopped; what was
    acknowledged (turn, text) and what ended without an answer."""

    client: RaySessions
    acked: dict[str, list[tuple[int, str]]] = field(default_factory=lambda: defaultdict(list))
    unknown: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    served: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    stop: anyio.Event = field(default_factory=anyio.Event)

    async def caller(self, session_id: str) -> None:
        i = 0
        while not self.stop.is_set():
            text = f"{session_id}#{i}"
            i += 1
            try:
                result = await self.client.send(session_id, text)
            except HostLost:
                self.unknown[session_id].append(text)
                continue
            assert result.ok, result.error
            self.acked[session_id].append((result.turn, text))
            self.served[session_id].append(time.monotonic())

    async def back_after(self, moment: float, session_ids: list[str]) -> None:
        """Wait until every one of ``session_ids`` served a turn after ``moment``."""
        with anyio.fail_after(60):
            while not all(self.served[s][-1] > moment for s in session_ids):  # noqa: ASYNC110
                await anyio.sleep(0.05)

    def pause(self, start: float, end: float, session_ids: list[str]) -> float:
        """The longest time one of ``session_ids`` went unserved between ``start`` and
        ``end``: from its last answer before a failure to its first answer after."""
        longest = 0.0
        for sid in session_ids:
            times = self.served[sid]
            for before, after in itertools.pairwise(times):
                if after > start and before < end:
                    longest = max(longest, after - before)
        return longest


async def check_stored(store: OpenStore, load: Load, session_ids: list[str]) -> None:
    """Every acknowledged turn stored once, with its turn number, in order; anything
    else stored is a turn whose caller got no answer, stored at most once."""
    for sid in session_ids:
        stored = await user_texts(store, sid)
        texts = [t for _, t in stored]
        assert len(texts) == len(set(texts)), f"{sid}: a turn stored twice"
        acked = load.acked[sid]
        assert [p for p in stored if p[1] in {t for _, t in acked}] == acked, sid
        extra = set(texts) - {t for _, t in acked}
        assert extra <= set(load.unknown[sid]), f"{sid}: stored turns nobody sent: {extra}"


async def pid_of(client: RaySessions, host_id: str) -> int:
    info = {i["host"]: i for i in await client.info()}
    pid: int = info[host_id]["pid"]
    return pid


async def settle(client: RaySessions, members: int, within: float = 60.0) -> None:
    """Wait until ``members`` hosts are live (restarted hosts readmitted)."""
    with anyio.fail_after(within):
        while len(client.members) != members:
            await client.refresh()
            await anyio.sleep(0.2)


async def test_concurrent_callers_every_turn_stored_once_in_order(
    client: RaySessions, store: OpenStore
) -> None:
    """200 sessions, three turns each sent at once (and many sessions at once): each
    turn is acknowledged with the turn number of its arrival and stored once, in order."""
    sids = [f"c{i:03d}" for i in range(200)]
    results: dict[tuple[str, int], int] = {}
    limit = anyio.CapacityLimiter(60)

    async def one(sid: str, k: int) -> None:
        result = await client.send(sid, f"{sid}/{k}")
        assert result.ok, result.error
        results[sid, k] = result.turn

    async def session(sid: str) -> None:
        async with limit, anyio.create_task_group() as tg:
            for k in range(3):
                tg.start_soon(one, sid, k)

    async with anyio.create_task_group() as tg:
        for sid in sids:
            tg.start_soon(session, sid)
    assert len({client.host_of(s) for s in sids}) == 3
    for sid in sids:
        assert [results[sid, k] for k in range(3)] == [1, 2, 3]
        assert await user_texts(store, sid) == [(k + 1, f"{sid}/{k}") for k in range(3)]


def shape(item: Any) -> tuple[str, dict[str, Any]]:
    """An event or result without what differs between two runs of the same turn
    (run and session ids, durations)."""
    fields = msgspec.to_builtins(item)
    if isinstance(item, TurnResult):
        fields = {k: fields[k] for k in ("reply", "status", "turn")}
    for key in ("run_id", "session_id", "trace_id", "duration"):
        fields.pop(key, None)
    return type(item).__name__, fields


async def test_hosts_run_at_the_callers_priority(client: RaySessions) -> None:
    """Ray starts worker processes at niceness 15; the hosts serve interactive turns
    and run at 0, like this process (else any other work on the node starves them)."""
    pids = [i["pid"] for i in await client.info()]
    assert len(pids) == 3
    assert {os.getpriority(os.PRIO_PROCESS, pid) for pid in pids} == {0}


async def test_stream_yields_the_same_events_as_in_process(
    client: RaySessions, pg_schema_url: str
) -> None:
    """A turn streamed across the hop yields the events a stream in one process yields
    for the same turn, text deltas included, TurnCommitted then the TurnResult last."""
    text = "stream me across the hop"
    async with SessionManager(pg_schema_url, store_secret=SECRET, llm=SlowOnRequest()) as m:
        local = await m.get_or_create("stream-local")
        async with local.stream(text) as events:
            expected = [shape(e) async for e in events]
    async with client.stream("stream-remote", text) as remote:
        items = [item async for item in remote]
    assert [shape(i) for i in items] == expected
    assert isinstance(items[-1], TurnResult) and items[-1].ok and remote.result is items[-1]
    assert isinstance(items[-2], TurnCommitted) and items[-2].turn == 1
    assert "".join(i.text for i in items if isinstance(i, TextDelta)) == items[-1].reply
    assert (await client.send("stream-remote", "then a send")).turn == 2


async def test_stream_left_early_cancels_the_turn_on_its_host(
    client: RaySessions, store: OpenStore
) -> None:
    """Leaving a stream before the turn commits cancels it on the host: nothing of it
    is stored, the session is idle, and its next turn takes the next number."""
    sid = "stream-cut"
    await client.send(sid, "warm")
    async with client.stream(sid, f"{SLOW} cut") as events:
        async for event in events:
            if isinstance(event, NodeStarted) and event.node_id == "llm_call":
                break
    with anyio.fail_after(10):
        while sid in {s for i in await client.info() for s in i["busy"]}:  # noqa: ASYNC110
            await anyio.sleep(0.05)
    result = await client.send(sid, "next")
    assert result.ok and result.turn == 2
    assert await user_texts(store, sid) == [(1, "warm"), (2, "next")]


async def test_host_killed_then_node_removed_sessions_continue(
    client: RaySessions, store: OpenStore, cluster: Any
) -> None:
    """Kill one host's process, then remove a whole node, under load: the affected
    sessions serve again on the survivors; no acknowledged turn lost or duplicated."""
    sids = [f"k{i:02d}" for i in range(60)]
    load = Load(client)
    async with anyio.create_task_group() as tg:
        for sid in sids:
            tg.start_soon(load.caller, sid)
        await anyio.sleep(2)

        head = cluster.head_node.node_id
        by_host: dict[str, list[str]] = defaultdict(list)
        for sid in sids:
            by_host[str(client.host_of(sid))].append(sid)
        victim = max(by_host, key=lambda h: len(by_host[h]))
        pid = await pid_of(client, victim)
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        await load.back_after(killed_at, by_host[victim])

        await settle(client, 3)
        node = next(n for n in cluster.worker_nodes if n.node_id != head)
        on_node = [h for h in client.members if client.host(h).node == node.node_id]
        moved = [s for s in sids if client.host_of(s) in on_node]
        doomed = [await pid_of(client, h) for h in on_node]
        removed_at = time.monotonic()
        cluster.remove_node(node)
        # remove_node stops the node's raylet but leaves its actor processes running
        # for a while; a lost machine takes them with it.
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError):  # it may have exited already
                os.kill(pid, signal.SIGKILL)
        await anyio.sleep(2 * 2.0 + 2.0)  # its hosts die; the leases (2 s) expire
        await load.back_after(time.monotonic(), moved)
        load.stop.set()
    kill_back = load.pause(killed_at, removed_at, by_host[victim])
    node_back = load.pause(removed_at, time.monotonic(), moved)

    print(
        f"\nlongest pause in service: host process killed, its {len(by_host[victim])} "
        f"sessions {kill_back:.2f} s; node removed, its {len(moved)} sessions "
        f"{node_back:.2f} s (lease_ttl 2 s, probe_timeout 2 s)"
    )
    assert sum(map(len, load.acked.values())) > len(sids)
    await check_stored(store, load, sids)


async def test_node_added_moves_only_its_share(
    client: RaySessions, store: OpenStore, cluster: Any
) -> None:
    """A node joins: a host starts there and exactly the sessions that hash to it move;
    every other session stays on its host."""
    sids = [f"c{i:03d}" for i in range(200)]
    await settle(client, 3)
    before = {sid: client.host_of(sid) for sid in sids}
    old = set(client.members)
    node = cluster.add_node(**NODE)
    await settle(client, 4)
    (new,) = set(client.members) - old
    assert client.host(new).node == node.node_id
    after = {sid: client.host_of(sid) for sid in sids}
    moved = {sid for sid in sids if after[sid] != before[sid]}
    assert moved and all(after[sid] == new for sid in moved)
    assert len(moved) < len(sids) / 2

    async with anyio.create_task_group() as tg:
        for sid in sids:
            tg.start_soon(client.send, sid, f"{sid}/after-join")
    hosted: dict[str, list[str]] = defaultdict(list)
    for info in await client.info():
        for s in info["live"]:
            hosted[s].append(info["host"])
    wrong = {s: (hosted.get(s), after[s]) for s in sids if hosted.get(s) != [after[s]]}
    assert not wrong
    for sid in sids:
        assert (await user_texts(store, sid))[-1] == (4, f"{sid}/after-join")


async def test_presumed_dead_host_still_running_cannot_write(
    client: RaySessions, store: OpenStore
) -> None:
    """A host frozen in the middle of a turn is presumed dead; a survivor takes the
    session over and runs the turn; when the frozen host wakes and finishes the turn,
    the store fences its commit out: the turn is stored once."""
    sid = "frozen"
    await client.send(sid, "warm")
    host = str(client.host_of(sid))
    pid = await pid_of(client, host)
    text = f"{SLOW} stale"
    result: list[Any] = []

    async def slow_turn() -> None:
        result.append(await client.send(sid, text))

    async with anyio.create_task_group() as tg:
        tg.start_soon(slow_turn)
        with anyio.fail_after(10):
            while sid not in {s for i in await client.info() for s in i["busy"]}:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        os.kill(pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
    took_over = time.monotonic() - frozen_at
    assert client.host_of(sid) != host
    os.kill(pid, signal.SIGCONT)
    await anyio.sleep(4)  # the woken host finishes its turn and tries to commit

    print(f"\nfrozen host: turn answered by a survivor {took_over:.2f} s after the freeze")
    assert result[0].ok and result[0].turn == 2
    assert await user_texts(store, sid) == [(1, "warm"), (2, text)]
    info = {i["host"]: i for i in await client.info()}
    assert host in info and sid not in info[host]["busy"]
