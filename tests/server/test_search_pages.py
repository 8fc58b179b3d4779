"""Searching many sessions over real HTTP (issue 14): the viewer's ``?q=`` and the API's
``agent``/``type`` filters examine one bounded window per request and say where to
continue, so a rare match among 3,000 sessions is found by following the cursor."""

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


def test_the_api_agent_filter_continues_from_next(db: str) -> None:
    _seed(db)
    with Running(create_app(db, llm="echo")) as served:
        params, found, requests = {"agent": "RARE_agent"}, [], 0
        while True:
            requests += 1
            body = served.client.get("/sessions", params=params).json()
            found += [s["id"] for s in body["sessions"]]
            if body["next"] is None:
                break
            params = {"agent": "RARE_agent", "after": body["next"]}
        assert found == ["s2801"] and requests == N // SCAN + 1
        first = served.client.get("/sessions", params={"type": "primary", "limit": 2}).json()
        assert [s["id"] for s in first["sessions"]] == ["s0000", "s0001"]
        assert first["next"] == "s0001"  # more matches in the window: resume after the last
