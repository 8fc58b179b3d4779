"""Listing sessions by keyset (schema 6): every page, filtered by agent or type or not,
is one range of an index in id order from the cursor ``after``, on every backend.

Walks see each session that exists throughout exactly once, in order, while sessions
come and go between pages; a rare agent among thousands comes back in one request; the
SQLite and PostgreSQL plans are index range scans (their plan text, not a timing).
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from sessions.store import OpenStore, open_store
from sessions.store.base import Listed, SessionMatch, SessionMeta, SessionType
from sessions.store.durable import matched_sql

from . import SECRET
from .conftest import Raw

MANY = 2000
RARE = {"s0007": "rare", "s0999": "rare", "s1998": "rare"}
BACKGROUND = {"s0500", "s0999", "s1500"}


async def _seed(store: OpenStore, n: int = MANY) -> None:
    for i in range(n):
        sid = f"s{i:04d}"
        kind: SessionType = "background" if sid in BACKGROUND else "primary"
        await store.create(SessionMeta(sid, agent_id=RARE.get(sid, "plain"), type=kind))


async def _page(store: OpenStore, match: SessionMatch, limit: int) -> Listed:
    page = await store.list_sessions(0, limit, match=match)
    assert isinstance(page, Listed)
    return page


async def test_a_walk_sees_every_session_once_in_order_while_sessions_come_and_go(
    store: OpenStore,
) -> None:
    """Between pages, sessions are created and deleted on both sides of the cursor:
    the walk never repeats or goes back, lists each session that lived throughout,
    lists the new ones above the cursor and none that was gone before it got there."""
    for i in range(0, 200, 2):
        await store.create(SessionMeta(f"k{i:03d}"))
    survivors = {f"k{i:03d}" for i in range(0, 200, 2)}
    seen: list[str] = []
    after: str | None = ""
    step = 0
    while after is not None:
        page = await _page(store, SessionMatch(after=after), 7)
        seen += [m.id for m in page]
        after = page.scanned_to
        step += 1
        if after is None:
            break
        # Churn: a new session behind the cursor (not seen: already passed), one ahead
        # (seen), one ahead deleted (never seen), one behind deleted (seen before).
        ahead, behind = int(after[1:]) + 9, int(after[1:]) - 3
        await store.create(SessionMeta(f"k{behind:03d}x"))
        if ahead < 200:
            await store.create(SessionMeta(f"k{ahead:03d}y"))
            survivors.add(f"k{ahead:03d}y")
        gone = f"k{ahead + 1 + (ahead % 2):03d}"
        if await store.delete(gone):
            survivors.discard(gone)
        await store.delete(f"k{behind - behind % 2:03d}")
    assert seen == sorted(set(seen)), "out of order or repeated"
    assert survivors <= set(seen)
    assert not {s for s in seen if s.endswith("x")}  # created behind the cursor
    assert step > 10


async def test_pages_end_exactly_and_offset_still_skips(store: OpenStore) -> None:
    """``scanned_to`` is ``None`` on the last page (no empty request to learn it);
    ``offset`` and ``limit`` keep their old meaning; an empty store is one empty page."""
    assert list(await _page(store, SessionMatch(), 5)) == []
    for sid in "abcdef":
        await store.create(SessionMeta(sid, agent_id="x" if sid in "bdf" else "y"))
    first = await _page(store, SessionMatch(), 3)
    assert [m.id for m in first] == ["a", "b", "c"] and first.scanned_to == "c"
    last = await _page(store, SessionMatch(after="c"), 3)
    assert [m.id for m in last] == ["d", "e", "f"] and last.scanned_to is None
    assert [m.id for m in await store.list_sessions(1, 2)] == ["b", "c"]
    skipped = await store.list_sessions(1, 5, match=SessionMatch(agent_id="x", after="a"))
    assert [m.id for m in skipped] == ["d", "f"]


async def test_a_rare_agent_or_type_among_many_comes_back_in_one_request(
    store: OpenStore,
) -> None:
    """One call per filter, however far apart the matches: the page is read from the
    filter's index range, not from a window of every session."""
    await _seed(store)
    rare = await _page(store, SessionMatch(agent_id="rare"), 100)
    assert [m.id for m in rare] == sorted(RARE) and rare.scanned_to is None
    background = await _page(store, SessionMatch(type="background"), 100)
    assert [m.id for m in background] == sorted(BACKGROUND) and background.scanned_to is None
    both = await _page(store, SessionMatch(agent_id="rare", type="background"), 100)
    assert [m.id for m in both] == ["s0999"] and both.scanned_to is None
    assert list(await _page(store, SessionMatch(agent_id="nobody"), 100)) == []
    # Paged: two at a time, the cursor continues within the agent's range.
    two = await _page(store, SessionMatch(agent_id="rare"), 2)
    assert [m.id for m in two] == ["s0007", "s0999"] and two.scanned_to == "s0999"
    rest = await _page(store, SessionMatch(agent_id="rare", after="s0999"), 2)
    assert [m.id for m in rest] == ["s1998"] and rest.scanned_to is None
    # A deleted match leaves its index range.
    assert await store.delete("s0999")
    again = await _page(store, SessionMatch(agent_id="rare"), 100)
    assert [m.id for m in again] == ["s0007", "s1998"]


# ------------------------------------------------------------------ query plans

SHAPES: list[tuple[SessionMatch, str, str]] = [
    (SessionMatch(after="s0100"), "PRIMARY KEY (id>?)", "sessions_pkey"),
    (
        SessionMatch(agent_id="rare"),
        "INDEX sessions_by_agent (agent_id=? AND id>?)",
        "sessions_by_agent",
    ),
    (
        SessionMatch(type="background"),
        "INDEX sessions_by_type (type=? AND id>?)",
        "sessions_by_type",
    ),
    (
        SessionMatch(agent_id="rare", type="background"),
        "INDEX sessions_by_agent_type (agent_id=? AND type=? AND id>?)",
        "sessions_by_agent_type",
    ),
]


@pytest.mark.parametrize(("match", "sqlite_plan", "_pg"), SHAPES)
async def test_sqlite_pages_are_index_range_searches(
    tmp_path: Any, match: SessionMatch, sqlite_plan: str, _pg: str
) -> None:
    """EXPLAIN QUERY PLAN of each listing: one SEARCH of the right index, no scan of
    the table and no sort (the index gives id order)."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    async with open_store(url, secret=SECRET) as store:
        await _seed(store, 300)
    q = matched_sql(match, 0, 100, "?", sqlite=True)
    plan = " | ".join(
        str(r[-1]) for r in Raw(url).execute("EXPLAIN QUERY PLAN " + q.rows, q.params)
    )
    assert plan == f"SEARCH sessions USING {sqlite_plan}", plan


def _nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node, *(n for child in node.get("Plans", []) for n in _nodes(child))]


@pytest.mark.postgres
async def test_postgres_pages_are_index_range_scans(pg_url: str) -> None:
    """EXPLAIN of each listing on 2,000 analysed sessions: an index scan of the right
    index with the filter and the cursor as its condition, no sequential scan, no sort."""
    async with open_store(pg_url, secret=SECRET) as store:
        await _seed(store)
    with psycopg.connect(pg_url, autocommit=True) as pg:
        pg.execute("ANALYZE sessions")
        for match, _, index in SHAPES:
            q = matched_sql(match, 0, 100, "%s")
            row = pg.execute("EXPLAIN (FORMAT JSON) " + q.rows, q.params).fetchone()
            assert row is not None
            doc = row[0] if isinstance(row[0], list) else json.loads(row[0])
            nodes = _nodes(doc[0]["Plan"])
            text = json.dumps(doc)
            scans = [n for n in nodes if "Relation Name" in n]
            assert len(scans) == 1 and scans[0]["Node Type"] == "Index Scan", text
            assert scans[0]["Index Name"] == index, text
            assert "id >" in scans[0]["Index Cond"], text
            assert not any(n["Node Type"] in ("Sort", "Seq Scan") for n in nodes), text
