"""The PostgreSQL store under more concurrent transactions than it has connections.

Transactions queue for a connection without a deadline (backpressure): a busy pool
never fails a turn that only had to wait.  A server that cannot be reached still fails
the waiting call with a typed :class:`~sessions.errors.StoreError` within the connect
timeout.
"""

from __future__ import annotations

import anyio
import pytest

from sessions import SessionManager, TurnResult
from sessions.errors import StoreError
from sessions.limits import Limits
from sessions.store.postgres import PostgresStore

from . import SECRET
from .pg_proxy import PgProxy

pytestmark = pytest.mark.postgres


async def test_turns_beyond_the_pool_wait_for_a_connection_and_none_fails(pg_url: str) -> None:
    """A pool of two connections, both busy for longer than the pool's wait timeout
    (the connect timeout), while fifty sessions send two turns each: every turn waits
    its turn and is stored; none fails with a pool timeout (each did before)."""
    store = PostgresStore(pg_url, secret=SECRET, max_connections=2, connect_timeout=0.5)
    results: list[TurnResult] = []
    async with SessionManager(store, limits=Limits(max_active_sessions=100)) as manager:

        async def hog() -> None:  # a slow transaction holding a connection for 1 s
            async with store._db.tx() as c:
                await c.execute("SELECT pg_sleep(1)")

        async def one(i: int) -> None:
            session = await manager.get_or_create(f"s{i}")
            for k in range(2):
                results.append(await session.send(f"turn {k}"))

        async with anyio.create_task_group() as tg:
            for _ in range(2):
                tg.start_soon(hog)
            await anyio.sleep(0.1)
            for i in range(50):
                tg.start_soon(one, i)
    assert [r.error for r in results if not r.ok] == []
    assert len(results) == 100
    async with PostgresStore(pg_url, secret=SECRET) as check:
        assert [await check.verify(f"s{i}") for i in range(50)] == [6] * 50


async def test_a_dead_server_fails_every_waiting_call_with_a_store_error(pg_url: str) -> None:
    """The queue has no deadline, but a call that holds its place and gets no connection
    (the server refuses them all) fails with StoreError after the connect timeout, as
    on an idle pool; the calls queued behind it fail the same way in turn."""
    proxy = PgProxy.for_url(pg_url)
    await proxy.start()
    errors: list[BaseException] = []

    async def call(store: PostgresStore) -> None:
        try:
            await store.list_sessions()
        except Exception as exc:
            errors.append(exc)

    try:
        store = PostgresStore(
            proxy.url(pg_url), secret=SECRET, max_connections=2, connect_timeout=0.5
        )
        async with store:
            await store.list_sessions()
            proxy.refusing = True
            await proxy.close()  # every pooled connection dropped, new ones refused
            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    for _ in range(5):
                        tg.start_soon(call, store)
    finally:
        await proxy.close()
    assert len(errors) == 5
    assert all(isinstance(e, StoreError) for e in errors), errors


async def _hog(store: PostgresStore, seconds: float) -> None:
    """A transaction holding one of the pool's connections for ``seconds``."""
    async with store._db.tx() as c:
        await c.execute("SELECT pg_sleep(%s)", (seconds,))


async def test_cancelled_waiters_free_their_places_and_the_rest_complete(pg_url: str) -> None:
    """Half of fifty queued calls are cancelled (a client went away, a deadline hit):
    the other half all complete, and afterwards every place is free again and the pool
    has no more connections than its size."""
    store = PostgresStore(pg_url, secret=SECRET, max_connections=2, connect_timeout=0.5)
    done: list[int] = []
    scopes = [anyio.CancelScope() for _ in range(50)]

    async def waiter(i: int) -> None:
        with scopes[i]:
            await store.list_sessions()
            done.append(i)

    async with store:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for _ in range(2):
                    tg.start_soon(_hog, store, 0.5)
                await anyio.sleep(0.1)
                for i in range(50):
                    tg.start_soon(waiter, i)
                await anyio.sleep(0.1)
                for scope in scopes[::2]:
                    scope.cancel()
        assert sorted(done) == list(range(1, 50, 2))
        assert store._db._places is not None and store._db._places.value == 2
        assert store._db.pool is not None and store._db.pool.get_stats()["pool_size"] <= 2
        await store.list_sessions()


async def test_calls_queued_when_the_store_closes_fail_with_a_store_error(pg_url: str) -> None:
    """The store closes while calls wait in the queue: each fails with StoreError
    (the store is not open), not an AttributeError on the pool it no longer has."""
    store = PostgresStore(pg_url, secret=SECRET, max_connections=2, connect_timeout=0.5)
    errors: list[BaseException] = []

    async def waiter() -> None:
        try:
            await store.list_sessions()
        except Exception as exc:
            errors.append(exc)

    await store.open()
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for _ in range(2):
                tg.start_soon(_hog, store, 0.5)
            await anyio.sleep(0.1)
            for _ in range(5):
                tg.start_soon(waiter)
            await anyio.sleep(0.1)
            await store.close()
    assert len(errors) == 5
    assert all(isinstance(e, StoreError) and "not open" in str(e) for e in errors), errors
