"""The live viewer in a real headless chromium, driven over the DevTools protocol: a
page opened while a turn runs shows the nodes already visited and the one running
(before the turn is committed), then the rest of the path and the reply as the turn
ends; a turn sent from the page's form lights up the same way.  Screenshots are kept
in the test's tmp folder (``pytest --basetemp=DIR`` keeps them where you want).

Skipped when chromium or Graphviz is not installed (``apt-get install chromium graphviz``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engine.cli.trace_dot import TAKEN, VISITED
from engine.server.routes.live import RUNNING

from .cdp_kit import Browser, png_colours
from .conftest import Gated
from .test_live import start_streamed_turn

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or shutil.which("dot") is None,
    reason="needs Debian's chromium and Graphviz's dot",
)


def _rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def _node(name: str) -> str:
    """JavaScript: the class list of node ``name``'s SVG group, as a string."""
    return (
        f'[...document.querySelectorAll("#graph g.node")].find('
        f'g => g.querySelector("title").textContent === "{name}")?.getAttribute("class")'
    )


def _text(selector: str) -> str:
    return f'document.querySelector("{selector}").textContent'


def test_a_running_turn_lights_up_node_by_node(gated: Gated, tmp_path: Path) -> None:
    assert CHROMIUM is not None
    sender = start_streamed_turn(gated, "zoe", "hello live")
    with Browser(CHROMIUM, tmp_path) as browser:
        browser.open(f"{gated.url}/ui/sessions/zoe/live")
        browser.wait_for(f'({_node("llm_call")} || "").includes("tg-running")')
        # Mid-turn: what already ran is visited, the model node runs, nothing is stored.
        assert "tg-visited" in browser.evaluate(_node("classify"))
        assert "tg-running" not in browser.evaluate(_node("format"))
        assert "llm_call" in browser.evaluate(_text("#status"))
        assert gated.client.get("/sessions/zoe/turns/1").status_code == 404
        (tmp_path / "live-running.png").write_bytes(browser.screenshot())
        graph = png_colours(browser.screenshot("#graph"))
        assert _rgb(RUNNING) in graph and _rgb(TAKEN) in graph  # running; the way here

        gated.gate.set()
        browser.wait_for(f'{_text("#reply")} === "re: hello live"')
        assert "tg-visited" in browser.evaluate(_node("llm_call"))
        assert "tg-visited" in browser.evaluate(_node("done"))
        assert browser.evaluate(_text("#status")).startswith("turn 1 · success")
        assert browser.evaluate('document.querySelectorAll("#visits tr").length') == 1 + 5
        assert browser.evaluate('document.querySelectorAll("#graph g.edge.tg-taken").length') == 4
        (tmp_path / "live-finished.png").write_bytes(browser.screenshot())
        graph = png_colours(browser.screenshot("#graph"))
        assert _rgb(RUNNING) not in graph and _rgb(VISITED) in graph

        # A turn sent from the page's own form (fetch, streamed) lights up the same way.
        browser.evaluate(
            'document.querySelector("#send input").value = "from the form";'
            'document.querySelector("#send").requestSubmit()'
        )
        browser.wait_for(f'{_text("#reply")} === "re: from the form"')
        browser.wait_for(f'{_text("#status")}.startsWith("turn 2 · success")')
    sender.join(30)
    assert gated.client.get("/sessions/zoe/turns/2").json()["status"] == "success"
