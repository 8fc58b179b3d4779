"""PostgreSQL: a connection cut around a turn's commit never wedges or duplicates a session.

A real server behind :class:`~tests.store.pg_proxy.PgProxy`, which cuts the connection
right after the server answered the turn's ``COMMIT`` (committed, answer lost), right
after the client sent it (either outcome), or after the turn's statement (not
committed).  On every write path (the first turn after open, the first after a lease
renewal, a steady turn with group commits on and off) the turn reports its true
outcome, committed with its reply, the store holds it exactly once and the next
``send()`` works; a fresh process then reads exactly the turns sent.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

import psycopg
import pytest

from sessions import Limits, SessionManager
from sessions.errors import CommitUnknown, StoreError, StoreLocked
from sessions.store.postgres import PostgresStore

from ..sessions.session_kit import chain_graph, reply_registry
from . import SECRET
from .pg_proxy import PgProxy

pytestmark = pytest.mark.postgres

_GROUP_SQL = b"WITH v AS (SELECT * FROM unnest"


@pytest.fixture
async def proxy(pg_url: str) -> AsyncIterator[PgProxy]:
    """A running proxy in front of the test server."""
    p = PgProxy.for_url(pg_url)
    await p.start()
    try:
        yield p
    finally:
        await p.close()


def _manager(store: PostgresStore, **kw: Any) -> SessionManager:
    return SessionManager(
        store,
        registry=reply_registry(),
        turn_graph=chain_graph(),
        limits=Limits(compaction_threshold_tokens=None),
        lease_ttl=600.0,  # no background renewal racing the armed cut
        **kw,
    )


def _stored_turns(pg_url: str, sid: str) -> list[tuple[int, str]]:
    with psycopg.connect(pg_url, autocommit=True) as c:
        rows = c.execute(
            "SELECT key, body FROM records WHERE session_id=%s AND kind='turn' ORDER BY rseq",
            (sid,),
        ).fetchall()
    return [(int(k), str(b)) for k, b in rows]


Path = Literal["first", "after_renew", "steady"]
Cut = Literal["commit_reply", "commit_request", "statement_reply"]


@pytest.mark.parametrize("groups", [0, 2])
@pytest.mark.parametrize("path", ["first", "after_renew", "steady"])
@pytest.mark.parametrize("cut", ["commit_reply", "commit_request", "statement_reply"])
async def test_a_cut_connection_reports_the_true_outcome(
    pg_url: str, proxy: PgProxy, groups: int, path: Path, cut: Cut
) -> None:
    """Whatever the cut, the turn is committed once, its reply returned, the next works."""
    store = PostgresStore(proxy.url(pg_url), secret=SECRET, group_commits=groups)
    async with store, _manager(store) as m:
        s = await m.get_or_create("s1")
        sent = ["zero"]
        assert (await s.send("zero")).ok
        if path == "first":  # a new process: nothing remembered about the row
            await m.close("s1")
            s = await m.get("s1")
        elif path == "after_renew":
            await store.renew("s1", m.owner, s.token, 600.0)
        else:
            sent.append("warm")
            assert (await s.send("warm")).ok  # the store now remembers the row it wrote
        grouped = groups > 0 and path == "steady"
        if cut == "statement_reply":
            proxy.arm(_GROUP_SQL if grouped else b"INSERT INTO records", "reply", keep=0)
        else:
            pattern = _GROUP_SQL if grouped else b"COMMIT"
            proxy.arm(pattern, "reply" if cut == "commit_reply" else "request", keep=1)
        result = await s.send("cut")
        sent.append("cut")
        assert proxy.cuts == 1
        assert result.ok and result.reply == "re: cut" and s.turn_count == len(sent)
        nxt = await s.send("next")
        sent.append("next")
        assert nxt.ok and s.turn_count == len(sent)
    assert [k for k, _ in _stored_turns(pg_url, "s1")] == list(range(1, len(sent) + 1))
    async with PostgresStore(pg_url, secret=SECRET) as fresh, _manager(fresh) as m2:
        contents = [msg.content for msg in await (await m2.get("s1")).all()]
    assert contents == [x for t in sent for x in (t, f"re: {t}")]


async def test_dead_pooled_connections_are_replaced_before_a_turn(pg_url: str) -> None:
    """Every pooled connection of the store killed by the server between turns: the
    next turn still commits once (dead connections are replaced, the write retried)."""
    app = f"tg_kill_{uuid.uuid4().hex[:8]}"  # only this store's connections are killed
    async with (
        PostgresStore(f"{pg_url}&application_name={app}", secret=SECRET, group_commits=2) as store,
        _manager(store) as m,
    ):
        s = await m.get_or_create("s1")
        assert (await s.send("one")).ok
        assert (await s.send("two")).ok
        with psycopg.connect(pg_url, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = %s",
                (app,),
            ).fetchone()
        assert killed is not None and killed[0] >= 1
        assert (await s.send("three")).ok and s.turn_count == 3
        assert (await s.send("four")).ok and s.turn_count == 4
    assert [k for k, _ in _stored_turns(pg_url, "s1")] == [1, 2, 3, 4]


async def test_a_write_waiting_on_a_row_lock_gives_up(pg_url: str) -> None:
    """A row locked by another transaction: the write gives up after ``lock_timeout``
    with StoreLocked, and writes nothing; once the lock is gone the turn goes through."""
    async with (
        PostgresStore(pg_url, secret=SECRET, group_commits=0, lock_timeout=0.2) as store,
        _manager(store) as m,
    ):
        s = await m.get_or_create("s1")
        assert (await s.send("one")).ok
        with psycopg.connect(pg_url) as blocker:
            blocker.execute("SELECT 1 FROM sessions WHERE id='s1' FOR UPDATE")
            with pytest.raises(StoreLocked, match="lock"):
                await s.send("two")
            blocker.rollback()
        assert s.phase == "idle" and s.turn_count == 1
        assert (await s.send("two")).ok and s.turn_count == 2
    assert [k for k, _ in _stored_turns(pg_url, "s1")] == [1, 2]


def test_lock_timeout_must_be_positive(pg_url: str) -> None:
    """``lock_timeout`` is seconds > 0."""
    with pytest.raises(ValueError, match="lock_timeout"):
        PostgresStore(pg_url, lock_timeout=0)


@pytest.mark.parametrize("groups", [0, 2])
async def test_an_unknown_outcome_is_resolved_before_the_next_turn(
    pg_url: str, proxy: PgProxy, groups: int
) -> None:
    """The server committed, the answer was lost, and the server stayed unreachable
    while the store tried to find out: CommitUnknown (not a failure).  Once the server
    is back, the next send adopts the stored turn first, then follows it: no duplicate,
    no wedge, memory and store agree."""
    store = PostgresStore(
        proxy.url(pg_url), secret=SECRET, group_commits=groups, connect_timeout=3.0
    )
    async with store, _manager(store) as m:
        s = await m.get_or_create("s1")
        assert (await s.send("zero")).ok
        await m.close("s1")
        s = await m.get("s1")  # the first turn after open: the locked path
        proxy.arm(b"COMMIT", "reply", keep=1, then_refuse=True)
        with pytest.raises(CommitUnknown, match="turn 2"):
            await s.send("cut")
        assert s.turn_count == 1 and s.phase == "idle"
        proxy.refusing = False
        errors: list[str] = []
        for _ in range(10):  # the pool reconnects with backoff: a send may find it not yet
            try:
                nxt = await s.send("next")
                break
            except StoreError as exc:  # only PoolTimeout is expected here
                errors.append(str(exc))
        assert all("PoolTimeout" in e for e in errors)
        assert nxt.ok and nxt.turn == 3 and s.turn_count == 3
        assert [msg.content for msg in s.recent(6)] == [
            "zero",
            "re: zero",
            "cut",
            "re: cut",
            "next",
            "re: next",
        ]
    assert [k for k, _ in _stored_turns(pg_url, "s1")] == [1, 2, 3]
