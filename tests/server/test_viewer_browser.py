"""The trace viewer in a real headless browser (Debian's ``chromium``): the DOM it
renders and the pixels of a screenshot, which is kept in the test's tmp folder as an
artifact (``pytest --basetemp=DIR`` keeps it where you want it).

Skipped when chromium or Graphviz is not installed (``apt-get install chromium graphviz``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .cdp_kit import png_colours
from .serve_kit import GUARD, Running

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or shutil.which("dot") is None,
    reason="needs Debian's chromium and Graphviz's dot",
)

BLUE = (0x1F, 0x6F, 0xEB)  # the path taken (engine.cli.trace_dot.TAKEN)
RED = (0xFF, 0x6B, 0x6B)  # the failing node's fill (FAILED)
AMBER = (0xFF, 0xE3, 0xA3)  # a retried node's fill (RETRIED)


def _browser(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    assert CHROMIUM is not None
    # --no-sandbox: the suite may run as root, where chromium's sandbox refuses to start.
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        *args,
    ]
    done = subprocess.run(command, capture_output=True, timeout=GUARD * 2, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done


def _visible_text(dom: str) -> str:
    """The page's text as a person reads it: no style, no tags, spaces collapsed."""
    body = re.sub(r"<style>.*?</style>", "", dom, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body))


def test_a_person_sees_the_path_the_reply_and_the_timings(served: Running, tmp_path: Path) -> None:
    served.client.post("/sessions/alice/turns", json={"text": "hello browser"})
    url = f"{served.url}/ui/sessions/alice/turns/1"
    dom = _browser(tmp_path, "--dump-dom", url).stdout.decode()
    seen = _visible_text(dom)
    assert "turn 1 of alice" in seen and "echo: hello browser" in seen
    assert re.search(r"llm_call llm_call success 1 \d+\.\d\d ms", seen)
    assert 'id="tg-visited-llm_call"' in dom and 'class="node tg-visited"' in dom
    shot = tmp_path / "turn-page.png"
    _browser(tmp_path, "--window-size=1200,1400", f"--screenshot={shot}", url)
    colours = png_colours(shot.read_bytes())
    assert BLUE in colours and RED not in colours  # the path is drawn; nothing failed


def test_a_person_sees_the_failing_node_in_red(flaky: Running, tmp_path: Path) -> None:
    flaky.client.post("/sessions/erin/turns", json={"text": "please break"})
    url = f"{flaky.url}/ui/sessions/erin/turns/1"
    seen = _visible_text(_browser(tmp_path, "--dump-dom", url).stdout.decode())
    assert "status fail" in seen and "the template engine broke" in seen
    assert re.search(r"llm_call success 2 \d+\.\d\d ms", seen)  # the retried visit
    shot = tmp_path / "failed-turn.png"
    _browser(tmp_path, "--window-size=1200,1400", f"--screenshot={shot}", url)
    colours = png_colours(shot.read_bytes())
    assert {BLUE, RED, AMBER} <= colours


def test_a_person_sees_a_heartbeat_runs_path(served: Running, tmp_path: Path) -> None:
    served.client.post("/sessions/hana/turns", json={"text": "hi"})
    session = next(s for s in served.state.manager.live if s.id == "hana")
    assert served.call(session.heartbeat.beat()) is True
    url = f"{served.url}/ui/sessions/hana/heartbeats/1"
    seen = _visible_text(_browser(tmp_path, "--dump-dom", url).stdout.decode())
    assert "heartbeat 1 of hana" in seen and "status success" in seen
    assert re.search(r"check_goals check_goals success 1 \d+\.\d\d ms", seen)
    shot = tmp_path / "heartbeat-run.png"
    _browser(tmp_path, "--window-size=1200,1400", f"--screenshot={shot}", url)
    assert BLUE in png_colours(shot.read_bytes())
