"""A closed session is freed by reference counting alone, with no help from the cyclic
garbage collector: no part of a session refers back to it, so a server that evicts or
churns sessions does not keep them until a full collection (and its pause).

Each test runs with the collector off (after one collection, so nothing earlier is
counted) and checks weak references to the session and its parts, never collecting.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sessions import Limits, Session, SessionManager
from sessions.errors import Fenced, SessionClosed
from sessions.heartbeat import Heartbeat
from sessions.store.memory import MemoryStore

from .session_kit import SECRET, chain_graph, heartbeat_graph, reply_registry, running, wait_until

GATE = """digraph gated {
  start [shape=Mdiamond]; done [shape=Msquare]
  ask [shape=hexagon, question="Go on?", timeout="1h", default=yes]
  start -> ask; ask -> done [label=yes]
}
"""


@pytest.fixture(autouse=True)
def _no_cyclic_gc() -> Iterator[None]:
    """The cyclic collector off for the test: only reference counting frees anything."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


Refs = dict[str, weakref.ReferenceType[Any]]


def _watch(refs: Refs, session: Session) -> None:
    """Weak references to ``session`` and the parts that used to point back at it."""
    sid = session.id
    refs[sid] = weakref.ref(session)
    refs[f"{sid}.turns"] = weakref.ref(session._turns)
    refs[f"{sid}.log"] = weakref.ref(session._log)
    refs[f"{sid}.heartbeat"] = weakref.ref(session.heartbeat)


def _alive(refs: Refs) -> list[str]:
    return sorted(name for name, ref in refs.items() if ref() is not None)


async def _beats(heartbeat: Heartbeat, n: int) -> None:
    """Wait until ``heartbeat`` ran ``n`` times (its frame holds it, not the test's)."""
    await wait_until(lambda: heartbeat.runs >= n)


def _url(kind: str, tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'chat.db'}" if kind == "sqlite" else "memory:"


def _manager(url: str, **kw: Any) -> SessionManager:
    return SessionManager(
        url,
        registry=reply_registry(),
        turn_graph=kw.pop("turn_graph", None) or chain_graph(),
        heartbeat_graph=heartbeat_graph(),
        store_secret=SECRET,
        **kw,
    )


def _gated(tmp_path: Path) -> dict[str, Any]:
    """A manager's turn graph that pauses at a gate (its timer armed for an hour)."""
    path = tmp_path / "gated.dot"
    path.write_text(GATE)
    return {"turn_graph": path}


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_closed_manager_frees_its_sessions(kind: str, tmp_path: Path) -> None:
    """Sessions that ran turns (checkpointed, compacted, streamed), one never used and
    one with its heartbeat running are all freed when the manager exits."""
    refs: Refs = {}
    limits = Limits(checkpoint=True, compaction_threshold_tokens=20)
    async with _manager(_url(kind, tmp_path), limits=limits) as m:
        session = await m.get_or_create("unused")
        _watch(refs, session)
        for i in range(3):
            session = await m.get_or_create(f"s{i}")
            _watch(refs, session)
            for j in range(3):
                assert (await session.send(f"message number {j} " * 4)).ok
            await session.compact()
        session = await m.get_or_create("streamed")
        _watch(refs, session)
        async for _ in session.stream("hello"):
            pass
        session = await m.get_or_create("beating")
        _watch(refs, session)
        session.start_heartbeat(0.001)
        await _beats(session.heartbeat, 2)
        del session
        assert _alive(refs)  # the manager hosts them
    assert _alive(refs) == []


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_session_paused_at_a_gate_is_freed(kind: str, tmp_path: Path) -> None:
    """A session waiting at a gate (its timeout's timer armed) is freed once closed,
    while the manager runs, and when the manager exits."""
    refs: Refs = {}
    async with _manager(_url(kind, tmp_path), **_gated(tmp_path)) as m:
        for sid in ("evicted", "kept"):
            session = await m.get_or_create(sid)
            _watch(refs, session)
            assert (await session.send("v1")).status == "paused"
            assert sid in m.gate_timers
        del session
        await m.close("evicted")
        assert _alive(refs) == ["kept", "kept.heartbeat", "kept.log", "kept.turns"]
    assert _alive(refs) == []


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_session_closed_while_the_manager_runs_is_freed(kind: str, tmp_path: Path) -> None:
    """Closing one session (its heartbeat running) frees it at once; the others stay."""
    refs: Refs = {}
    async with _manager(_url(kind, tmp_path)) as m:
        for sid in ("gone", "stays"):
            session = await m.get_or_create(sid)
            _watch(refs, session)
            assert (await session.send("hello")).ok
        session.start_heartbeat(0.001)
        gone = await m.get("gone")
        gone.start_heartbeat(0.001)
        await _beats(gone.heartbeat, 2)
        await m.close("gone")
        with pytest.raises(SessionClosed):  # a closed session still refuses turns
            await gone.send("again")
        del gone, session
        assert _alive(refs) == ["stays", "stays.heartbeat", "stays.log", "stays.turns"]
        assert (await m.get("stays")).turn_count == 1


async def test_a_fenced_session_is_freed() -> None:
    """A session another owner took over leaves the manager and is freed."""
    refs: Refs = {}
    async with MemoryStore(secret=SECRET) as store, running(store) as m:
        session = await m.create("taken")
        _watch(refs, session)
        await session.send("mine")
        await store.release("taken", m.owner, session.token)
        await store.acquire("taken", "intruder", 30.0)
        try:
            await session.send("too late")
        except Fenced:
            pass
        else:
            raise AssertionError("the takeover was not noticed")
        assert session.closed and m.live == ()
        del session
        assert _alive(refs) == []
