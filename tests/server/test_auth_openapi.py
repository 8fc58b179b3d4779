"""Bearer-token authentication, the non-loopback refusal, and the OpenAPI document."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from starlette.routing import Route

from engine.cli.main import main
from engine.cli.serve import is_loopback
from engine.server import create_app
from engine.server.openapi import document

from .serve_kit import Running

TOKEN = "s3cret-token-value"
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", ["/healthz", "/sessions", "/openapi.json", "/graphs"])
def test_every_endpoint_needs_the_token_when_it_is_set(
    db: str, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    monkeypatch.setenv("TURNGRAPH_API_TOKEN", TOKEN)
    with Running(create_app(db, llm="echo")) as served:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
            refused = served.client.get(path, headers=headers)
            assert refused.status_code == 401, headers
            assert refused.json()["error"]["kind"] == "Unauthorized"
            assert refused.headers["www-authenticate"] == "Bearer"
            assert TOKEN not in refused.text
        ok = served.client.get(path, headers={"authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200
        assert served.client.get(path, headers={"authorization": f"bearer {TOKEN}"}).is_success


def test_a_turn_with_the_token(db: str) -> None:
    with Running(create_app(db, llm="echo", token=TOKEN)) as served:
        auth = {"authorization": f"Bearer {TOKEN}"}
        assert served.client.post("/sessions/a/turns", json={"text": "x"}).status_code == 401
        assert served.client.get("/sessions/a").status_code == 401
        body = served.client.post("/sessions/a/turns", json={"text": "x"}, headers=auth).json()
        assert body["reply"] == "echo: x"


def test_serve_refuses_a_public_address_without_a_token(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TURNGRAPH_API_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "TURNGRAPH_API_TOKEN" in err and "0.0.0.0" in err


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.0.1", True), ("::1", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("10.0.0.1", False), ("example.com", False)],
)  # fmt: skip
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_the_openapi_document_lists_every_route_and_method(served: Running) -> None:
    doc = json.loads(served.client.get("/openapi.json").content)
    assert doc["openapi"].startswith("3.") and doc == json.loads(json.dumps(document()))
    served_routes: dict[str, set[str]] = {}
    for route in served.app.routes:
        assert isinstance(route, Route)
        served_routes.setdefault(route.path, set()).update(
            m.lower() for m in route.methods or () if m != "HEAD"
        )
    listed = {path: set(ops) for path, ops in doc["paths"].items()}
    assert listed == served_routes
    for ops in doc["paths"].values():
        for op in ops.values():
            assert op["summary"] and "responses" in op


def test_serve_reports_a_store_that_cannot_open_in_one_line(tmp_path: Path) -> None:
    """In a process of its own: serving configures logging, which must not leak into
    the other tests."""
    store = f"sqlite:///{tmp_path / 'missing' / 'chat.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TURNGRAPH_API")}
    proc = subprocess.run(
        [sys.executable, "-m", "engine.run", "serve", "--port", "0", "--store", store],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout.startswith("serving on http://127.0.0.1:")
    err = proc.stderr
    assert err.count("\n") == 1 and "missing" in err and "Traceback" not in err
