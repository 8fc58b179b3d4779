"""A closed store is freed by reference counting alone, with no help from the cyclic
garbage collector (as a closed session and a closed manager are: see
``tests/sessions/test_no_cycles.py``): nothing a store holds refers back to it.

The test runs with the collector off (after one collection, so nothing earlier is
counted) and checks a weak reference to the store, never collecting.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator

import anyio
import pytest

from sessions import Session, SessionManager
from sessions.store import open_store

from ..sessions.session_kit import chain_graph, cyclic_gc_off, heartbeat_graph, reply_registry
from . import SECRET


@pytest.fixture(autouse=True)
def _no_cyclic_gc() -> Iterator[None]:
    """The cyclic collector off for the test: only reference counting frees anything."""
    with cyclic_gc_off():
        yield


async def _turns(session: Session, n: int) -> None:
    for i in range(n):
        assert (await session.send(f"message {i}")).ok


async def test_a_closed_store_is_freed(store_url: str) -> None:
    """A store whose sessions committed turns together (SQLite and PostgreSQL: in
    group commits) is freed once closed and let go."""
    store = open_store(store_url, secret=SECRET)
    ref = weakref.ref(store)
    manager = SessionManager(
        store,
        registry=reply_registry(),
        turn_graph=chain_graph(),
        heartbeat_graph=heartbeat_graph(),
    )
    async with manager as m:
        sessions = [await m.create(f"s{i}") for i in range(6)]
        async with anyio.create_task_group() as tg:
            for session in sessions:
                tg.start_soon(_turns, session, 3)
        del sessions, session
    del store, manager, m
    assert ref() is None
