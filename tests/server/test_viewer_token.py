"""The viewer with ``TURNGRAPH_API_TOKEN`` set: every page and the live stream need the
token; a browser signs in once through the 401 page's form (``POST /login``) and then
carries a cookie: in real headless chromium, the live page lights a turn and its form
runs one, with no header added by hand."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from engine.server import create_app
from engine.server.auth import COOKIE

from .cdp_kit import Browser
from .serve_kit import GUARD, Running

TOKEN = "s3cret-token-value"
PAGES = [
    "/",
    "/?q=a",
    "/ui/sessions/a",
    "/ui/sessions/a/turns/1",
    "/ui/sessions/a/live",
    "/ui/sessions/a/heartbeats",
]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_every_viewer_page_and_the_live_stream_need_the_token(db: str) -> None:
    with Running(create_app(db, llm="echo", token=TOKEN)) as served:
        served.client.post(
            "/sessions/a/turns", json={"text": "x"}, headers={"authorization": f"Bearer {TOKEN}"}
        )
        for path in PAGES:
            refused = served.client.get(path)
            assert refused.status_code == 401 and 'action="/login"' in refused.text, path
            assert TOKEN not in refused.text
        assert served.client.get("/sessions/a/live").status_code == 401
        posted = served.client.post("/ui/sessions/a/turns", data={"text": "y"})
        assert posted.status_code == 401 and posted.json()["error"]["kind"] == "Unauthorized"
        wrong = served.client.post("/login", data={"token": "guess", "next": "/"})
        assert wrong.status_code == 401 and "wrong token" in wrong.text
        assert COOKIE not in wrong.headers.get("set-cookie", "")
        # An address elsewhere in ``next`` is not followed (no open redirect).
        with httpx.Client(base_url=served.url, timeout=GUARD) as browser:
            signed = browser.post("/login", data={"token": TOKEN, "next": "//evil.test/x"})
            assert signed.status_code == 303 and signed.headers["location"] == "/"
            cookie = signed.headers["set-cookie"]
            assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie
            for path in PAGES:
                assert browser.get(path).status_code == 200, path
            with browser.stream("GET", "/sessions/a/live") as live:
                assert live.status_code == 200
            browser.post("/logout")
            assert browser.get("/").status_code == 401


@pytest.mark.skipif(
    CHROMIUM is None or shutil.which("dot") is None, reason="needs chromium and Graphviz"
)
def test_a_browser_signs_in_once_and_the_live_page_works(db: str, tmp_path: Path) -> None:
    assert CHROMIUM is not None
    with (
        Running(create_app(db, llm="echo", token=TOKEN)) as served,
        Browser(CHROMIUM, tmp_path) as browser,
    ):
        browser.open(f"{served.url}/ui/sessions/b/live")
        browser.wait_for('!!document.querySelector("form[action=\\"/login\\"]")')
        browser.evaluate(
            f'document.querySelector("input[name=token]").value = "{TOKEN}";'
            'document.querySelector("form").submit()'
        )
        browser.wait_for('document.getElementById("status")?.textContent.startsWith("watching")')
        browser.evaluate(
            'document.querySelector("#send input").value = "signed in";'
            'document.querySelector("#send").requestSubmit()'
        )
        browser.wait_for('document.getElementById("reply").textContent === "echo: signed in"')
        (tmp_path / "token-live.png").write_bytes(browser.screenshot())
