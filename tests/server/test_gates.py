"""Human gates and retries over real HTTP: a paused turn, 409 SessionPaused for new
turns, the question in GET /sessions/{id}, POST .../answer and POST .../retry."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from engine.graph import Node
from engine.registry import HandlerRegistry
from engine.server import create_app
from sessions import Limits, SessionManager

from .serve_kit import Running

GRAPH = """digraph g {
  start [shape=Mdiamond]; done [shape=Msquare]
  approve [shape=hexagon, question="Deploy?"]
  deploy [handler=deploy]; skip [handler=skip]
  start -> approve
  approve -> deploy [label=go]
  approve -> skip [label=skip]
  deploy -> done; skip -> done
}
"""


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[Running]:
    """A server whose turns ask before deploying; ``deploy`` fails on input "flaky"
    the first time (checkpoints on, so that turn can be retried)."""
    failures = ["flaky"]

    def deploy(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
        if ctx["session.input"] in failures:
            failures.remove(ctx["session.input"])
            raise RuntimeError("deploy target unreachable")
        return {"reply": f"deployed {ctx['session.input']}"}

    def skip(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
        return {"reply": "skipped"}

    dot = tmp_path / "g.dot"
    dot.write_text(GRAPH)
    manager = SessionManager(
        f"sqlite:///{tmp_path / 'gates.db'}",
        registry=HandlerRegistry({"deploy": deploy, "skip": skip}),
        turn_graph=dot,
        limits=Limits(checkpoint=True),
    )
    with Running(create_app(manager=manager)) as running:
        yield running


def _error(response: Any) -> tuple[int, str, str]:
    error = response.json()["error"]
    return response.status_code, error["kind"], error["message"]


def test_a_paused_turn_is_answered_over_http(gated: Running) -> None:
    client = gated.client
    paused = client.post("/sessions/s1/turns", json={"text": "v1"})
    assert paused.status_code == 200
    body = paused.json()
    assert (body["status"], body["turn"], body["reply"]) == ("paused", 1, "")
    assert body["question"] == {"node": "approve", "question": "Deploy?", "choices": ["go", "skip"]}
    meta = client.get("/sessions/s1").json()
    assert meta["turn_count"] == 0 and meta["retry"] is None
    assert meta["question"]["choices"] == ["go", "skip"] and meta["question"]["turn"] == 1

    status, kind, message = _error(client.post("/sessions/s1/turns", json={"text": "v2"}))
    assert (status, kind) == (409, "SessionPaused") and "Deploy? [go, skip]" in message
    status, kind, message = _error(client.post("/sessions/s1/answer", json={"choice": "maybe"}))
    assert (status, kind) == (400, "UnknownChoice") and "choose one of: go, skip" in message
    status, kind, _ = _error(client.post("/sessions/s1/answer", json={"pick": "go"}))
    assert (status, kind) == (400, "BadRequest")

    done = client.post("/sessions/s1/answer", json={"choice": "go"})
    assert done.status_code == 200, done.text
    assert (done.json()["status"], done.json()["reply"]) == ("success", "deployed v1")
    assert client.get("/sessions/s1").json()["question"] is None
    status, kind, _ = _error(client.post("/sessions/s1/answer", json={"choice": "go"}))
    assert (status, kind) == (409, "NotPaused")


def test_a_failed_turn_is_retried_over_http(gated: Running) -> None:
    client = gated.client
    status, kind, _ = _error(client.post("/sessions/s2/retry"))
    assert (status, kind) == (404, "SessionNotFound")
    client.post("/sessions/s2/turns", json={"text": "flaky"})
    failed = client.post("/sessions/s2/answer", json={"choice": "go"}).json()
    assert failed["status"] == "fail" and "deploy target unreachable" in failed["error"]
    assert client.get("/sessions/s2").json()["retry"]["node"] == "deploy"
    retried = client.post("/sessions/s2/retry")
    assert retried.status_code == 200, retried.text
    body = retried.json()
    assert (body["status"], body["turn"], body["reply"]) == ("success", 2, "deployed flaky")
    status, kind, message = _error(client.post("/sessions/s2/retry"))
    assert (status, kind) == (409, "RetryRefused") and "no failed turn" in message


def test_answered_and_retried_turns_reach_the_live_watchers(gated: Running) -> None:
    """A watcher of the session sees the turn an answer or a retry runs on, like a plain
    turn's: its events from ``RunStarted`` to its ``result``."""
    import httpx

    from .serve_kit import GUARD
    from .test_live import _frames, _until

    with (
        httpx.Client(base_url=gated.url, timeout=GUARD) as watcher,
        watcher.stream("GET", "/sessions/s3/live") as response,
    ):
        frames = _frames(response.iter_lines())
        assert next(frames)[0] == "watching"
        gated.client.post("/sessions/s3/turns", json={"text": "flaky"})
        paused = _until(frames, "result")
        assert "RunPaused" in [n for n, _ in paused] and paused[-1][1]["status"] == "paused"
        gated.client.post("/sessions/s3/answer", json={"choice": "go"})
        answered = _until(frames, "result")
        assert answered[0][0] == "RunStarted" and answered[-1][1]["status"] == "fail"
        assert ("NodeFailed", "deploy") in [(n, d.get("node_id")) for n, d in answered]
        gated.client.post("/sessions/s3/retry")
        retried = _until(frames, "result")
        assert retried[0][0] == "RunStarted"
        assert (retried[-1][1]["status"], retried[-1][1]["reply"]) == ("success", "deployed flaky")


def test_a_paused_stream_and_odd_answers_over_http(gated: Running) -> None:
    """A streamed turn that pauses ends with ``RunPaused`` then a ``paused`` result; a
    stream started while the question waits is one ``SessionPaused`` error frame; a
    huge choice is refused in a short message, and the question still waits."""
    client = gated.client
    sse = {"accept": "text/event-stream"}
    with client.stream("POST", "/sessions/s3/turns", json={"text": "v1"}, headers=sse) as s:
        frames = s.read().decode().strip().split("\n\n")
    names = [f.split("\n")[0] for f in frames]
    assert names[-2:] == ["event: RunPaused", "event: result"]
    assert '"status":"paused"' in frames[-1] and '"choices":["go","skip"]' in frames[-1]
    with client.stream("POST", "/sessions/s3/turns", json={"text": "v2"}, headers=sse) as s:
        (only,) = s.read().decode().strip().split("\n\n")
    assert only.startswith("event: error") and '"kind":"SessionPaused"' in only
    status, kind, message = _error(client.post("/sessions/s3/answer", json={"choice": "g" * 10**5}))
    assert (status, kind) == (400, "UnknownChoice") and len(message) < 300
    assert client.post("/sessions/s3/answer", json={"choice": "skip"}).json()["reply"] == "skipped"


def test_an_answer_for_another_gate_is_refused_over_http_and_the_viewer(gated: Running) -> None:
    """``node`` names the gate whose question was seen: another gate waiting (a timeout
    took that question on) answers 409 QuestionChanged, over the JSON API and the
    viewer's form alike, and nothing runs; the viewer's form sends the gate it shows."""
    client = gated.client
    assert client.post("/sessions/s5/turns", json={"text": "v5"}).json()["status"] == "paused"
    page = client.get("/ui/sessions/s5").text
    assert '<input type="hidden" name="node" value="approve">' in page
    assert "JSON.stringify({choice: c, node: q.node})" in client.get("/ui/sessions/s5/live").text
    refused = client.post("/sessions/s5/answer", json={"choice": "go", "node": "confirm"})
    status, kind, message = _error(refused)
    assert (status, kind) == (409, "QuestionChanged")
    assert "waiting is at node 'approve', not 'confirm'" in message
    status, kind, _ = _error(client.post("/sessions/s5/answer", json={"choice": "go", "node": 1}))
    assert (status, kind) == (400, "BadRequest")
    form = client.post(
        "/ui/sessions/s5/answer",
        content="choice=go&node=confirm",
        headers={"content-type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert form.status_code == 409 and "QuestionChanged" in form.text
    assert client.get("/sessions/s5").json()["question"]["node"] == "approve"
    done = client.post("/sessions/s5/answer", json={"choice": "go", "node": "approve"})
    assert done.json()["reply"] == "deployed v5"
