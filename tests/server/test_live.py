"""Watching a session's turns live over real HTTP: ``GET /sessions/{id}/live`` replays
the running turn's events so far and follows it to its result; plain turns of a
watched session are published too; the live page's form works without JavaScript."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx

from .conftest import Gated
from .serve_kit import GUARD, Running


def _frames(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(event, data)`` of each SSE frame (comments skipped)."""
    name = ""
    for line in lines:
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            yield name, json.loads(line[6:])


Frame = tuple[str, dict[str, Any]]


def _until(frames: Iterator[Frame], name: str) -> list[Frame]:
    seen: list[Frame] = []
    for frame in frames:
        seen.append(frame)
        if frame[0] == name:
            return seen
    raise AssertionError(f"the stream ended before {name}: {seen}")


def start_streamed_turn(running: Running, sid: str, text: str) -> threading.Thread:
    """A streamed turn sent from a thread, read to its end; returns once the server has
    started it (its ``llm_call`` node is running)."""
    started = threading.Event()

    def send() -> None:
        with httpx.Client(base_url=running.url, timeout=GUARD) as client:
            headers = {"accept": "text/event-stream"}
            with client.stream(
                "POST", f"/sessions/{sid}/turns", json={"text": text}, headers=headers
            ) as r:
                for name, data in _frames(r.iter_lines()):
                    if name == "NodeStarted" and data["node_id"] == "llm_call":
                        started.set()

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    assert started.wait(GUARD), "the turn did not start"
    return thread


def test_a_watcher_arriving_mid_turn_sees_its_path_so_far_then_the_rest(gated: Gated) -> None:
    sender = start_streamed_turn(gated, "zoe", "hello")
    with (
        httpx.Client(base_url=gated.url, timeout=GUARD) as watcher,
        watcher.stream("GET", "/sessions/zoe/live") as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        frames = _frames(response.iter_lines())
        so_far = _until(frames, "NodeStarted")  # start's
        so_far += _until(frames, "NodeStarted")  # classify's
        so_far += _until(frames, "NodeStarted")  # llm_call's, running now
        assert [n for n, _ in so_far][:2] == ["watching", "RunStarted"]
        assert so_far[-1][1]["node_id"] == "llm_call"
        assert ("NodeCompleted", "classify") in [(n, d.get("node_id")) for n, d in so_far]
        assert gated.client.get("/sessions/zoe/turns/1").status_code == 404  # running
        gated.gate.set()
        rest = _until(frames, "result")
        done = [d["node_id"] for n, d in rest if n == "NodeCompleted"]
        assert done == ["llm_call", "format", "done"]
        assert rest[-1][1]["reply"] == "re: hello" and rest[-1][1]["turn"] == 1
        # A plain (JSON) turn of a watched session is published as well.
        plain = gated.client.post("/sessions/zoe/turns", json={"text": "again"})
        assert plain.json()["reply"] == "re: again"
        again = _until(frames, "result")
        assert again[0][0] == "RunStarted" and again[-1][1]["turn"] == 2
    sender.join(GUARD)


def test_the_live_page_draws_the_graph_and_its_form_works_without_javascript(
    served: Running,
) -> None:
    page = served.client.get("/ui/sessions/kim/live")  # a session not made yet
    assert page.status_code == 200 and "<title>llm_call</title>" in page.text
    assert 'data-watch="/sessions/kim/live"' in page.text and "<script>" in page.text
    sent = served.client.post(
        "/ui/sessions/kim/turns", data={"text": "from a form"}, follow_redirects=False
    )
    assert sent.status_code == 303 and sent.headers["location"] == "/ui/sessions/kim/turns/1"
    assert "echo: from a form" in served.client.get(sent.headers["location"]).text
    empty = served.client.post("/ui/sessions/kim/turns", data={"text": " "})
    assert empty.status_code == 400 and "empty" in empty.text
    # Another site's page posting the form (a cross-site request forgery) runs nothing.
    forged = served.client.post(
        "/ui/sessions/kim/turns", data={"text": "x"}, headers={"origin": "https://evil.test"}
    )
    assert forged.status_code == 403 and "CrossSite" in forged.text
    own = served.client.post(
        "/ui/sessions/kim/turns", data={"text": "mine"}, headers={"origin": served.url}
    )
    assert own.status_code == 303 and own.headers["location"].endswith("/turns/2")
    assert 'href="/ui/sessions/kim/live"' in served.client.get("/ui/sessions/kim").text


def test_a_watcher_does_not_hold_shutdown_up(db: str) -> None:
    """A server stops with a watcher connected, well inside a grace longer than the
    stop's own guard (a watcher that held shutdown would time the guard out)."""
    from engine.server import create_app

    running = Running(create_app(db, llm="echo"), grace=GUARD * 2).start()
    client = httpx.Client(base_url=running.url, timeout=GUARD)
    with client.stream("GET", "/sessions/lee/live") as response:
        assert next(_frames(response.iter_lines()))[0] == "watching"
        running.stop()
    client.close()
