"""The HTTP API over real HTTP on loopback: turns, sessions, graphs, health, errors."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from engine.server import create_app
from engine.server.run import bind
from sessions import SessionManager
from sessions.store.base import SessionType

from .serve_kit import Running


def _kind(response: httpx.Response) -> str:
    kind: str = response.json()["error"]["kind"]
    return kind


def _turn(served: Running, sid: str, text: str) -> dict[str, Any]:
    response = served.client.post(f"/sessions/{sid}/turns", json={"text": text})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_a_turn_answers_its_reply_status_turn_usage_and_trace(served: Running) -> None:
    body = _turn(served, "alice", "hello")
    assert body["reply"] == "echo: hello" and body["status"] == "success"
    assert body["turn"] == 1 and body["session_id"] == "alice"
    assert body["usage"]["calls"] == 1 and body["usage"]["by_model"]["echo"]["calls"] == 1
    assert [n["id"] for n in body["trace"]][:2] == ["start", "classify"]
    assert _turn(served, "alice", "again")["turn"] == 2


def test_the_turn_is_stored_and_read_back(served: Running) -> None:
    _turn(served, "bob", "hello")
    turn = served.client.get("/sessions/bob/turns/1").json()
    assert turn["status"] == "success" and turn["trace"][0]["id"] == "start"
    changed = {step["id"]: step.get("changed") for step in turn["trace"]}
    assert changed["format"] == ["reply"] and "intent" in changed["classify"]
    assert [t["turn"] for t in served.client.get("/sessions/bob/turns").json()["turns"]] == [1]
    page = served.client.get("/sessions/bob/messages", params={"offset": 1, "limit": 1}).json()
    assert [(m["seq"], m["role"], m["content"]) for m in page["messages"]] == [
        (1, "assistant", "echo: hello")
    ]
    meta = served.client.get("/sessions/bob").json()
    assert meta["turn_count"] == 1 and meta["message_count"] == 2
    assert meta["usage"]["turns"] == 1 and "version" not in meta


def test_sessions_are_listed_paged_and_filtered(db: str) -> None:
    async def seed() -> None:
        async with SessionManager(db) as manager:
            for i in range(5):
                agent = "a" if i % 2 else "b"
                kind: SessionType = "background" if i == 4 else "primary"
                await manager.create(f"s{i}", agent_id=agent, type=kind)

    anyio.run(seed)
    with Running(create_app(db, llm="echo")) as served:
        get = served.client.get
        ids = [s["id"] for s in get("/sessions").json()["sessions"]]
        assert ids == ["s0", "s1", "s2", "s3", "s4"]
        page = get("/sessions", params={"offset": 1, "limit": 2}).json()["sessions"]
        assert [s["id"] for s in page] == ["s1", "s2"]
        by_agent = get("/sessions", params={"agent": "b", "offset": 1}).json()["sessions"]
        assert [s["id"] for s in by_agent] == ["s2", "s4"]
        by_type = get("/sessions", params={"type": "background"}).json()["sessions"]
        assert [s["id"] for s in by_type] == ["s4"]
        assert get("/sessions", params={"type": "nope"}).status_code == 400
        assert get("/sessions", params={"limit": "x"}).status_code == 400


def test_delete_compact_export_and_import(served: Running) -> None:
    client = served.client
    for text in ("one", "two", "three"):
        _turn(served, "carol", text)
    compacted = client.post("/sessions/carol/compact")
    assert compacted.status_code == 200 and "messages_compacted" in compacted.json()
    doc = client.get("/sessions/carol/export").json()
    assert doc["meta"]["id"] == "carol"
    assert client.delete("/sessions/carol").status_code == 204
    assert _kind(client.get("/sessions/carol")) == "SessionNotFound"
    assert client.delete("/sessions/carol").status_code == 404
    imported = client.post("/sessions/import", json=doc)
    assert imported.status_code == 201, imported.text
    assert client.get("/sessions/carol").json()["turn_count"] == 3
    again = client.post("/sessions/import", json=doc)  # the id is taken
    assert again.status_code == 400 and _kind(again) == "ImportRejected", again.text
    assert client.post("/sessions/import", params={"replace": "true"}, json=doc).is_success
    doc["meta"]["turn_count"] = 99  # the signature no longer matches
    rejected = client.post("/sessions/import", params={"replace": "true"}, json=doc)
    assert rejected.status_code == 400 and _kind(rejected) == "ImportRejected"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "kind"),
    [
        ("GET", "/sessions/nobody", None, 404, "SessionNotFound"),
        ("GET", "/sessions/nobody/turns", None, 404, "SessionNotFound"),
        ("GET", "/sessions/nobody/messages", None, 404, "SessionNotFound"),
        ("GET", "/sessions/.hidden", None, 400, "InvalidSessionId"),
        ("POST", "/sessions/.x/turns", b'{"text": "hi"}', 400, "InvalidSessionId"),
        ("POST", "/sessions/a/turns", b'{"text": 3}', 400, "BadRequest"),
        ("POST", "/sessions/a/turns", b"[1, 2]", 400, "BadRequest"),
        ("POST", "/sessions/a/turns", b"{bad json", 400, "BadRequest"),
        ("POST", "/sessions/a/turns", b'{"text": "' + b"x" * 9000 + b'"}', 413, "BodyTooLarge"),
        ("GET", "/sessions/a/turns/0", None, 400, "BadRequest"),
        ("GET", "/nowhere", None, 404, "NotFound"),
        ("PUT", "/sessions", None, 405, "MethodNotAllowed"),
    ],
)
def test_errors_are_json_with_a_kind_and_a_status(
    served: Running, method: str, path: str, body: bytes | None, status: int, kind: str
) -> None:
    headers = {} if body is None else {"content-type": "application/json"}
    response = served.client.request(method, path, content=body, headers=headers)
    assert (response.status_code, _kind(response)) == (status, kind), response.text
    assert "Traceback" not in response.text


@pytest.mark.parametrize("media", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_json_endpoint_refuses_other_media_types(served: Running, media: str | None) -> None:
    """A page on another site can post text/plain or a form without asking the server
    first: refusing anything but JSON keeps it from running turns (415, nothing run)."""
    headers = {} if media is None else {"content-type": media}
    body = b'{"text": "hi"}'
    response = served.client.post("/sessions/csrf/turns", content=body, headers=headers)
    assert (response.status_code, _kind(response)) == (415, "NotJson"), response.text
    assert served.client.get("/sessions/csrf").status_code == 404
    ok = served.client.post(
        "/sessions/csrf/turns", content=body, headers={"content-type": "application/json"}
    )
    assert ok.is_success, ok.text


def test_a_body_without_a_length_is_cut_off_at_the_limit(served: Running) -> None:
    """Chunked upload: no Content-Length to check first; the limit holds while reading."""

    def chunks() -> Any:
        yield b'{"text": "'
        for _ in range(100):
            yield b"x" * 100
        yield b'"}'

    headers = {"content-type": "application/json"}
    response = served.client.post("/sessions/a/turns", content=chunks(), headers=headers)
    assert response.status_code == 413 and _kind(response) == "BodyTooLarge"
    assert served.client.get("/sessions/a").status_code == 404  # no turn ran


def test_a_busy_session_answers_409(db: str) -> None:
    async def hold() -> None:
        async with SessionManager(db, owner="elsewhere", lease_ttl=600) as manager:
            await manager.create("taken")
            manager._live.clear()  # leave without releasing: the lease stays held

    anyio.run(hold)
    with Running(create_app(db, llm="echo")) as served:
        response = served.client.post("/sessions/taken/turns", json={"text": "hi"})
        assert response.status_code == 409 and _kind(response) == "SessionBusy"


def test_an_unreachable_store_makes_readyz_and_reads_503(served: Running) -> None:
    assert served.client.get("/healthz").json() == {"status": "ok"}
    assert served.client.get("/readyz").status_code == 200
    served.call(served.state.manager.store.close())  # the database thread is gone
    ready = served.client.get("/readyz")
    assert ready.status_code == 503, ready.text
    assert served.client.get("/sessions").status_code == 503
    assert served.client.get("/healthz").status_code == 200


def test_draining_refuses_new_turns_with_503(served: Running) -> None:
    _turn(served, "dana", "hi")
    served.state.draining = True
    response = served.client.post("/sessions/dana/turns", json={"text": "more"})
    assert response.status_code == 503 and _kind(response) == "ShuttingDown"
    streamed = served.client.post(
        "/sessions/dana/turns", json={"text": "more"}, headers={"accept": "text/event-stream"}
    )
    assert streamed.status_code == 503 and _kind(streamed) == "ShuttingDown"
    assert served.client.get("/readyz").status_code == 503
    assert served.client.get("/sessions/dana").json()["turn_count"] == 1
    served.state.draining = False


def test_graphs_are_listed_and_drawn(served: Running) -> None:
    graphs = served.client.get("/graphs").json()["graphs"]
    assert {g["name"] for g in graphs} == {"turn", "heartbeat"}
    turn = next(g for g in graphs if g["name"] == "turn")
    assert "llm_call" in turn["nodes"] and turn["svg"] == "/graphs/turn.svg"
    assert served.client.get("/graphs/nope.svg").status_code == 404
    if shutil.which("dot") is None:
        pytest.skip("Graphviz's dot is not installed")
    svg = served.client.get("/graphs/turn.svg")
    assert svg.headers["content-type"].startswith("image/svg+xml")
    assert b"<svg" in svg.content and b"llm_call" in svg.content


def test_a_missing_graphviz_answers_503(
    served: Running, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no `dot` anywhere on it
    response = served.client.get("/graphs/turn.svg")
    assert response.status_code == 503 and _kind(response) == "GraphvizMissing"
    assert "graphviz" in response.json()["error"]["message"].lower()


def test_idle_sessions_make_room_at_the_hosting_limit(db: str) -> None:
    """Past ``max_sessions`` the idle hosted sessions are closed, not the request refused."""
    with Running(create_app(db, llm="echo", max_sessions=2)) as served:
        for i in range(5):
            assert _turn(served, f"u{i}", "hi")["turn"] == 1
        assert len(served.state.manager.live) <= 2
        assert _turn(served, "u0", "back")["turn"] == 2  # reloaded from the store


def test_the_listening_socket_is_tcp_so_nagle_is_turned_off() -> None:
    """asyncio sets TCP_NODELAY only on sockets whose proto says TCP; with Nagle on, a
    response written in two parts waits ~40 ms for the client's delayed ACK."""
    sock = bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
