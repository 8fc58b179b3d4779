"""Listing and searching many sessions over real HTTP.  The viewer's ``?q=`` (a
substring: no index) examines one bounded window per request and says where to
continue; the API's pages, filtered by ``agent``/``type`` or not, are index ranges from
the cursor ``after``: a rare agent among 3,000 sessions comes back in one request, and
following ``next`` walks every session once."""

from __future__ import annotations

import html
import re

import anyio

from engine.server import create_app
from engine.server.routes.sessions import SCAN
from sessions import SessionManager
from sessions.store.base import SessionMeta

from .serve_kit import Running

N = 3000
AGENTS = {"s0417": "Rare_Agent", "s0418": "rareXagent", "s2801": "RARE_agent"}


def _seed(db: str) -> None:
    async def seed() -> None:
        async with SessionManager(db) as manager:
            for i in range(N):
                sid = f"s{i:04d}"
                await manager.store.create(SessionMeta(sid, agent_id=AGENTS.get(sid, "plain")))

    anyio.run(seed)


def test_the_viewer_search_pages_through_a_bounded_window_per_request(db: str) -> None:
    _seed(db)
    with Running(create_app(db, llm="echo")) as served:
        url, found, pages = "/?q=RARE_agent", [], 0
        while url:
            pages += 1
            text = served.client.get(url).text
            found += re.findall(r'<a href="/ui/sessions/([^"]+)"', text)
            more = re.search(r'<a href="([^"]+)">more…</a>', text)
            assert (more is None) == (pages == N // SCAN + 1), text
            if more is not None:
                assert f"searched sessions up to s{pages * SCAN - 1:04d}" in text
            url = html.unescape(more.group(1)) if more else ""
        assert found == ["s0417", "s2801"]  # "_" is literal: not s0418
        assert "no more sessions match" in text
        percent = served.client.get("/?q=%25").text  # "%" is literal: no row in the window
        assert "/ui/sessions/" not in percent and "searched sessions up to s0999" in percent


def test_the_api_finds_a_rare_agent_in_one_request_and_pages_by_next(db: str) -> None:
    _seed(db)
    with Running(create_app(db, llm="echo")) as served:
        body = served.client.get("/sessions", params={"agent": "RARE_agent"}).json()
        assert [s["id"] for s in body["sessions"]] == ["s2801"] and body["next"] is None
        first = served.client.get("/sessions", params={"type": "primary", "limit": 2}).json()
        assert [s["id"] for s in first["sessions"]] == ["s0000", "s0001"]
        assert first["next"] == "s0001"
        params = {"type": "primary", "limit": "2", "after": "s0001"}
        second = served.client.get("/sessions", params=params).json()
        assert [s["id"] for s in second["sessions"]] == ["s0002", "s0003"]


def test_the_api_walks_every_session_once_by_next(db: str) -> None:
    """Unfiltered pages follow ``next`` to the end (null on the last page); ``offset``
    still skips for older clients."""
    _seed(db)
    with Running(create_app(db, llm="echo")) as served:
        params, found, requests = {"limit": "1000"}, [], 0
        while True:
            requests += 1
            body = served.client.get("/sessions", params=params).json()
            found += [s["id"] for s in body["sessions"]]
            if body["next"] is None:
                break
            params = {"limit": "1000", "after": body["next"]}
        assert found == [f"s{i:04d}" for i in range(N)] and requests == 3
        old = served.client.get("/sessions", params={"offset": 2990, "limit": 5}).json()
        assert [s["id"] for s in old["sessions"]] == [f"s{i}" for i in range(2990, 2995)]
        bad = served.client.get("/sessions", params={"after": "s0001", "offset": "-1"})
        assert bad.status_code == 400 and "offset" in bad.text
        empty = served.client.get("/sessions", params={"limit": "0"})
        assert empty.status_code == 400 and "limit=0" in empty.text


def test_the_viewer_pages_every_session_by_its_cursor(db: str) -> None:
    """Without ``?q=`` each page links to the next by ``after``; the last has no link."""
    _seed(db)
    with Running(create_app(db, llm="echo")) as served:
        url, found = "/", []
        while url:
            text = served.client.get(url).text
            found += re.findall(r'<a href="/ui/sessions/([^"]+)"', text)
            more = re.search(r'<a href="([^"]+)">next page</a>', text)
            url = html.unescape(more.group(1)) if more else ""
            assert not more or "after=" in url
        assert found == [f"s{i:04d}" for i in range(N)]
