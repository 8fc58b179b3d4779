"""A turn paused at a human gate, seen in a real headless chromium: the live page
lights the gate it waits at and asks its question with a button per choice (which
answers it); the session page and the paused turn's page show the question and answer
it without JavaScript.  Screenshots are kept in the test's tmp folder.

Skipped when chromium or Graphviz is not installed (``apt-get install chromium graphviz``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .cdp_kit import Browser
from .serve_kit import Running
from .test_gates import gated  # noqa: F401  (the fixture)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or shutil.which("dot") is None,
    reason="needs Debian's chromium and Graphviz's dot",
)


def _node(name: str) -> str:
    """JavaScript: the class list of node ``name``'s SVG group, as a string."""
    return (
        f'[...document.querySelectorAll(".graph g.node")].find('
        f'g => g.querySelector("title").textContent === "{name}")?.getAttribute("class")'
    )


def _click(text: str) -> str:
    return f'[...document.querySelectorAll("button")].find(b => b.textContent === "{text}").click()'


def test_the_live_page_shows_the_pause_and_answers_it(gated: Running, tmp_path: Path) -> None:  # noqa: F811
    assert CHROMIUM is not None
    with Browser(CHROMIUM, tmp_path) as browser:
        browser.open(f"{gated.url}/ui/sessions/p1/live")
        browser.wait_for('document.getElementById("status").textContent.startsWith("watching")')
        assert gated.client.post("/sessions/p1/turns", json={"text": "v1"}).json()["status"] == (
            "paused"
        )
        browser.wait_for(
            'document.querySelector("#question .question")?.textContent === "Deploy? "'
        )
        assert "tg-waiting" in browser.evaluate(_node("approve"))
        assert "tg-visited" in browser.evaluate(_node("start"))
        buttons = browser.evaluate(
            '[...document.querySelectorAll("#question button")].map(b => b.textContent).join()'
        )
        assert buttons == "go,skip"
        (tmp_path / "live-paused.png").write_bytes(browser.screenshot())
        browser.evaluate(_click("go"))
        browser.wait_for('document.getElementById("reply").textContent === "deployed v1"')
        assert "tg-visited" in browser.evaluate(_node("deploy"))
        assert browser.evaluate('document.querySelector("#question").textContent') == ""


def test_the_session_and_turn_pages_show_the_question(gated: Running, tmp_path: Path) -> None:  # noqa: F811
    assert CHROMIUM is not None
    gated.client.post("/sessions/p2/turns", json={"text": "v2"})
    with Browser(CHROMIUM, tmp_path) as browser:
        browser.open(f"{gated.url}/ui/sessions/p2")
        browser.wait_for('!!document.getElementById("waiting")')
        text = browser.evaluate('document.getElementById("waiting").textContent')
        assert "approve" in text and "Deploy?" in text and "go" in text and "skip" in text
        browser.open(f"{gated.url}/ui/sessions/p2/turns/1")
        browser.wait_for(f'({_node("approve")} || "").includes("tg-waiting")')
        assert "tg-waiting" in browser.evaluate(_node("approve"))
        assert "tg-visited" in browser.evaluate(_node("start"))
        assert "v2" in browser.evaluate("document.body.textContent")
        (tmp_path / "turn-paused.png").write_bytes(browser.screenshot())
        browser.evaluate(_click("skip"))  # a plain form post, no script
        browser.wait_for('document.title.startsWith("turn 1 of p2 ·")')  # not "(paused)"
        assert "skipped" in browser.evaluate("document.body.textContent")
        assert "tg-visited" in browser.evaluate(_node("skip"))
    assert gated.client.get("/sessions/p2").json()["question"] is None
