"""Filtered listings (issue 14): a search over many sessions with a rare match pages by
a keyset cursor, takes ``%``, ``_`` and ``\\`` literally, and reads a bounded window of
rows per call however large the store (counted by SQLite's VM and PostgreSQL's EXPLAIN).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sessions.store import OpenStore, open_store
from sessions.store.base import Listed, SessionMatch, SessionMeta
from sessions.store.durable import matched_sql

from . import SECRET
from .conftest import Raw

N = 3000
WINDOW = 500
# Agents a literal search must find, each beside a decoy that a wildcard would also match.
SPECIAL = {
    "s0417": "Rare_Agent",
    "s0418": "rareXagent",
    "s1200": "50%off",
    "s1201": "50 and more off",
    "s2801": "RARE_agent",
    "s2900": "a\\b",
    "s2901": "ab",
}


async def _seed(store: OpenStore) -> None:
    for i in range(N):
        sid = f"s{i:04d}"
        await store.create(SessionMeta(sid, agent_id=SPECIAL.get(sid, "plain")))


async def _search(store: OpenStore, match: SessionMatch) -> tuple[list[str], int]:
    """Every id passing ``match``, following the cursor; and the number of calls."""
    found: list[str] = []
    after, calls = "", 0
    while True:
        calls += 1
        page = await store.list_sessions(0, WINDOW, match=replace(match, after=after))
        assert isinstance(page, Listed)
        found += [m.id for m in page]
        if page.scanned_to is None:
            return found, calls
        assert page.scanned_to > after
        after = page.scanned_to


@pytest.fixture
async def seeded(store: OpenStore) -> OpenStore:
    await _seed(store)
    return store


async def test_a_rare_match_pages_by_cursor_in_bounded_windows(seeded: OpenStore) -> None:
    found, calls = await _search(seeded, SessionMatch(text="rare_AGENT"))
    assert found == ["s0417", "s2801"]  # any case; "_" is no wildcard (not s0418)
    assert calls == N // WINDOW + 1  # one window per call, the last one short


@pytest.mark.parametrize(
    ("text", "expected"),
    [("50%o", ["s1200"]), ("a\\b", ["s2900"]), ("%", ["s1200"]), ("_", ["s0417", "s2801"])],
)
async def test_wildcards_in_the_query_are_literal(
    seeded: OpenStore, text: str, expected: list[str]
) -> None:
    assert (await _search(seeded, SessionMatch(text=text)))[0] == expected


async def test_an_id_substring_and_exact_agent_and_type(seeded: OpenStore) -> None:
    assert (await _search(seeded, SessionMatch(text="S041")))[0] == [f"s041{i}" for i in range(10)]
    assert (await _search(seeded, SessionMatch(agent_id="50%off")))[0] == ["s1200"]
    assert (await _search(seeded, SessionMatch(agent_id="rare_agent")))[0] == []  # exact
    assert len((await _search(seeded, SessionMatch(type="primary")))[0]) == N
    assert (await _search(seeded, SessionMatch(type="background")))[0] == []


async def test_the_window_resumes_after_the_cursor(seeded: OpenStore) -> None:
    page = await seeded.list_sessions(0, 10, match=SessionMatch(after="s0410"))
    assert [m.id for m in page] == [f"s{i:04d}" for i in range(411, 421)]
    assert isinstance(page, Listed) and page.scanned_to == "s0420"
    end = await seeded.list_sessions(0, 10, match=SessionMatch(after="s2995"))
    assert isinstance(end, Listed) and end.scanned_to is None and len(end) == 4


# ------------------------------------------------------------------ bounded reads


def _sqlite_steps(path: str, sql: str, params: tuple[Any, ...]) -> int:
    """SQLite VM instructions ``sql`` runs: proportional to the rows it visits."""
    conn = sqlite3.connect(path)
    steps = 0

    def tick() -> int:
        nonlocal steps
        steps += 1
        return 0

    conn.set_progress_handler(tick, 1)
    try:
        conn.execute(sql, params).fetchall()
    finally:
        conn.close()
    return steps


async def test_sqlite_reads_a_window_not_the_store(tmp_path: Path) -> None:
    """The filtered query's cost does not grow with the store: on 3,000 sessions it
    runs a fraction of the VM steps of the same filter over the whole table, and its
    plan is a primary-key range search."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    async with open_store(url, secret=SECRET) as store:
        await _seed(store)
    raw = Raw(url)
    path = url[len("sqlite:///") :]
    match = SessionMatch(text="rare_agent")
    rows_sql, params, *_ = matched_sql(match, 0, 100, "?", sqlite=True)
    window = _sqlite_steps(path, rows_sql, params)
    whole = _sqlite_steps(
        path,
        "SELECT * FROM sessions WHERE lower(id) LIKE ? ESCAPE '\\' "
        "OR lower(agent_id) LIKE ? ESCAPE '\\' ORDER BY id",
        params[-2:],
    )
    assert window * 5 < whole, (window, whole)  # a 100-row window of 3,000 rows
    plan = " ".join(str(r[-1]) for r in raw.execute("EXPLAIN QUERY PLAN " + rows_sql, params))
    assert "PRIMARY KEY (id>?)" in plan, plan


def _leaf_rows(node: dict[str, Any]) -> int:
    """Rows the plan's table scans read (returned plus filtered out)."""
    own = 0
    if "Relation Name" in node:
        own = int(node.get("Actual Rows", 0)) + int(node.get("Rows Removed by Filter", 0))
    return own + sum(_leaf_rows(child) for child in node.get("Plans", []))


@pytest.mark.postgres
async def test_postgres_reads_a_window_not_the_store(pg_url: str) -> None:
    """EXPLAIN ANALYZE of the filtered query on 3,000 sessions: the table is read
    through its primary key and no more than the window's rows."""
    async with open_store(pg_url, secret=SECRET) as store:
        await _seed(store)
    rows_sql, params, *_ = matched_sql(SessionMatch(text="rare_agent"), 0, 100, "%s")
    with psycopg.connect(pg_url, autocommit=True) as pg:
        pg.execute("ANALYZE sessions")
        row = pg.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + rows_sql, params).fetchone()
    assert row is not None
    doc = row[0]
    plan = (doc if isinstance(doc, list) else json.loads(doc))[0]["Plan"]
    assert _leaf_rows(plan) <= 100, json.dumps(plan)
    assert "sessions_pkey" in json.dumps(plan)


async def test_a_tampered_or_undecodable_row_in_the_window_is_listed_as_tampered(
    durable: OpenStore, raw: Raw
) -> None:
    """A row edited behind the store's back shows as tampered in a filtered listing; on
    SQLite a row whose text is not UTF-8 does not fail the whole window."""
    for sid in ("a1", "b1", "c1"):
        await durable.create(SessionMeta(sid, agent_id="team"))
    raw.execute("UPDATE sessions SET agent_id='team' || 'x' WHERE id='b1'")
    page = await durable.list_sessions(0, 10, match=SessionMatch(text="TEAM"))
    assert [(m.id, m.tampered) for m in page] == [("a1", False), ("b1", True), ("c1", False)]
    if durable.url.startswith("sqlite:"):
        raw.execute("UPDATE sessions SET cognitive_mode=X'FF' || id WHERE id='c1'")
        page = await durable.list_sessions(0, 2, match=SessionMatch(text="1", after="a1"))
        assert [(m.id, m.tampered) for m in page] == [("b1", True), ("c1", True)]
        assert isinstance(page, Listed) and page.scanned_to == "c1"
