"""The viewer against hostile input, in a real headless chromium: a turn graph whose
DOT asks for ``javascript:`` links (``URL``, ``href``, ``labelURL``) and whose labels,
context keys and replies hold markup.  Every page loads, every link in a drawing is
clicked, and nothing runs (``window.__xss`` stays unset); the markup shows as text.
The same graph routes over one of three edges to one node: only that edge lights.

Skipped when chromium or Graphviz is not installed (``apt-get install chromium graphviz``).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from engine.graph import Node
from engine.outcome import Outcome
from engine.registry import HandlerRegistry
from engine.server import create_app
from sessions import SessionManager

from .cdp_kit import Browser
from .serve_kit import Running

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or shutil.which("dot") is None,
    reason="needs Debian's chromium and Graphviz's dot",
)

GRAPH = """digraph hostile {
  start [shape=Mdiamond, URL="javascript:window.__xss=1"]
  done [shape=Msquare, href="javascript:window.__xss=2"]
  route [handler=route, label="<script>window.__xss=3</script>", URL="javascript:window.__xss=4"]
  start -> route [URL="javascript:window.__xss=5", labelURL="javascript:window.__xss=6", label=x]
  route -> done [label=a, condition="context.mode=a"]
  route -> done [label=b, condition="context.mode=b"]
  route -> done [label=c, condition="context.mode=c"]
}
"""
KEY = "<script>window.__xss=7</script>"
REPLY = "<img src=x onerror=window.__xss=8>"


@pytest.fixture
def hostile(tmp_path: Path) -> Iterator[Running]:
    def route(node: Node, ctx: Mapping[str, Any]) -> Outcome:
        return Outcome("success", updates={"mode": "b", KEY: 1, "reply": REPLY})

    def nothing(node: Node, ctx: Mapping[str, Any]) -> None:
        return None

    dot = tmp_path / "hostile.dot"
    dot.write_text(GRAPH)
    manager = SessionManager(
        f"sqlite:///{tmp_path / 'hostile.db'}",
        registry=HandlerRegistry({"route": route, "start": nothing, "done": nothing}),
        turn_graph=dot,
    )
    with Running(create_app(manager=manager)) as running:
        yield running


CLICK_ALL = (
    '[...document.querySelectorAll("svg a")].forEach(a => a.dispatchEvent('
    'new MouseEvent("click", {bubbles: true})))'
)
LINKS = 'document.querySelectorAll("svg a[href], svg a[*|href]").length'


def _loaded(browser: Browser, url: str, ready: str) -> None:
    browser.open(url)
    browser.wait_for(ready)
    assert browser.evaluate(LINKS) == 0, url
    browser.evaluate(CLICK_ALL)
    assert browser.evaluate("window.__xss") is None, url


def test_nothing_hostile_runs_and_only_the_edge_taken_lights(
    hostile: Running, tmp_path: Path
) -> None:
    assert CHROMIUM is not None
    base = hostile.url
    with Browser(CHROMIUM, tmp_path) as browser:
        _loaded(browser, f"{base}/ui/sessions/eve/live", '!!document.querySelector("#graph svg")')
        browser.wait_for('document.getElementById("status").textContent.startsWith("watching")')
        assert (
            hostile.client.post("/sessions/eve/turns", json={"text": "<b>hi</b>"}).json()["reply"]
            == REPLY
        )
        browser.wait_for(f'document.getElementById("reply").textContent === {REPLY!r}')
        # Three edges join route and done; the turn took the one labelled b alone.
        taken = "[...document.querySelectorAll('#graph g.edge.tg-taken')]"
        assert browser.evaluate(f"{taken}.length") == 2
        assert "mode=b" in browser.evaluate(f"{taken}.map(g => g.textContent).join()")
        changed = browser.evaluate('document.getElementById("visits").textContent')
        assert "mode" in changed and KEY in changed  # the keys column, as text
        assert browser.evaluate("window.__xss") is None
        (tmp_path / "hostile-live.png").write_bytes(browser.screenshot())

        turn = f"{base}/ui/sessions/eve/turns/1"
        _loaded(browser, turn, '!!document.querySelector(".graph svg")')
        text = browser.evaluate("document.body.textContent")
        assert KEY in text and REPLY in text and "<script>window.__xss=3</script>" in text
        taken = "[...document.querySelectorAll('.graph g.edge.tg-taken')]"
        assert browser.evaluate(f"{taken}.length") == 2
        assert "mode=b" in browser.evaluate(f"{taken}.map(g => g.textContent).join()")
        (tmp_path / "hostile-turn.png").write_bytes(browser.screenshot())
        _loaded(browser, f"{base}/ui/sessions/eve", '!!document.querySelector(".msg")')
        _loaded(browser, f"{base}/?q=%3Cscript%3E", '!!document.querySelector("form")')
        _loaded(browser, f"{base}/graphs/turn.svg", '!!document.querySelector("svg")')
