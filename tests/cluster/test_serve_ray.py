"""``python -m engine.run serve --ray ADDRESS``: the HTTP API in front of a local Ray
cluster, over real HTTP on 127.0.0.1, every turn run by a host actor on the cluster and
stored in PostgreSQL.  A store the nodes cannot share is refused in one line.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from .conftest import NODE, import_ray_or_skip

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SECRET = "serve-ray-secret-0123456789abcdef"
GUARD = 120.0
"""Seconds before a stuck wait gives up (a hang guard, not a speed limit)."""


def _env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TURNGRAPH_LLM", "RAY_"))}
    return {
        **clean,
        "PYTHONPATH": str(ROOT),
        "TURNGRAPH_SECRET": SECRET,
    }  # no RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER: serve --ray 127.0.0.1:PORT needs none


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A one-node Ray cluster on 127.0.0.1 whose processes hold the store's key in
    their environment (as docs/cluster.md asks of every node)."""
    import_ray_or_skip()
    cluster_utils = importlib.import_module("ray.cluster_utils")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TURNGRAPH_SECRET", SECRET)
        mp.setenv("TURNGRAPH_HOME", str(tmp_path_factory.mktemp("ray-home")))
        cluster = cluster_utils.Cluster(
            initialize_head=True, head_node_args={**NODE, "include_dashboard": False}
        )
    try:
        yield str(cluster.address)
    finally:
        cluster.shutdown()


GATED = """digraph g {
  start [shape=Mdiamond]; done [shape=Msquare]
  approve [shape=hexagon, question="Deploy?"]
  answer [handler=llm_call]; reply [handler=format]
  start -> approve
  approve -> answer [label=go]
  approve -> done [label=skip]
  answer -> reply -> done
}
"""
"""A turn that asks before it answers (built-in handlers only: the hosts load it)."""


@contextlib.contextmanager
def serving(ray_address: str, store: str, *extra: str) -> Iterator[str]:
    """``serve --ray ADDRESS`` on a free loopback port; SIGTERM must end it with 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.run", "serve", "--port", "0", "--store", store,
         "--ray", ray_address, *extra],
        cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    reader = ThreadPoolExecutor(1)  # a server stuck before listening fails the test
    try:
        line = reader.submit(proc.stdout.readline).result(GUARD)
        assert line.startswith("serving on http://127.0.0.1:"), line + proc.stderr.read()
        yield line.split()[-1]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(GUARD) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(GUARD)
        reader.shutdown(wait=False)


@pytest.fixture(scope="module")
def server(ray_address: str, pg_schema_url: str) -> Iterator[str]:
    """The server over the cluster, with the default turn graph."""
    with serving(ray_address, pg_schema_url) as url:
        yield url


def _owner(url: str, session_id: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT owner FROM sessions WHERE id=%s", (session_id,)).fetchone()
    assert row is not None, session_id
    return str(row[0])


def _events(lines: Iterator[str]) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    name = ""
    for line in lines:
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            out.append((name, json.loads(line[6:])))
    return out


def test_turns_over_http_run_on_the_cluster_hosts(server: str, pg_schema_url: str) -> None:
    """Turns posted to the server run on a host actor (which holds the session's lease
    in PostgreSQL), in order, and read back through the API."""
    with httpx.Client(base_url=server, timeout=GUARD) as client:
        first = client.post("/sessions/alice/turns", json={"text": "hello there"})
        assert first.status_code == 200, first.text
        assert (first.json()["turn"], first.json()["status"]) == (1, "success")
        assert "hello there" in first.json()["reply"]
        assert client.post("/sessions/alice/turns", json={"text": "again"}).json()["turn"] == 2
        page = client.get("/sessions/alice/messages").json()["messages"]
        assert [m["content"] for m in page if m["role"] == "user"] == ["hello there", "again"]
        assert client.get("/readyz").status_code == 200
    assert _owner(pg_schema_url, "alice").startswith("ray:")


def test_concurrent_sessions_over_http_every_turn_stored(server: str) -> None:
    """Twenty sessions at once, three turns each: every turn answers and is stored once,
    numbered in order."""

    def converse(i: int) -> list[int]:
        with httpx.Client(base_url=server, timeout=GUARD) as client:
            turns = []
            for k in range(3):
                r = client.post(f"/sessions/c{i}/turns", json={"text": f"c{i} #{k}"})
                assert r.status_code == 200 and r.json()["status"] == "success", r.text
                turns.append(r.json()["turn"])
            return turns

    with ThreadPoolExecutor(20) as pool:
        assert list(pool.map(converse, range(20))) == [[1, 2, 3]] * 20
    with httpx.Client(base_url=server, timeout=GUARD) as client:
        for i in range(20):
            page = client.get(f"/sessions/c{i}/messages").json()["messages"]
            assert [m["content"] for m in page if m["role"] == "user"] == [
                f"c{i} #{k}" for k in range(3)
            ]


def test_a_streamed_turn_crosses_the_hop_as_sse(server: str) -> None:
    """An SSE turn streams the host's events, then the stored result."""
    with (
        httpx.Client(base_url=server, timeout=GUARD) as client,
        client.stream(
            "POST",
            "/sessions/streamer/turns",
            json={"text": "stream me"},
            headers={"accept": "text/event-stream"},
        ) as response,
    ):
        assert response.status_code == 200
        events = _events(response.iter_lines())
    names = [name for name, _ in events]
    assert names[-1] == "result" and events[-1][1]["turn"] == 1
    assert "NodeStarted" in names and "TurnCommitted" in names, names


def test_delete_and_compact_go_to_the_host(server: str) -> None:
    """Compacting and deleting a session are answered by its host; a deleted session
    is gone from the store."""
    with httpx.Client(base_url=server, timeout=GUARD) as client:
        client.post("/sessions/bob/turns", json={"text": "short-lived"}).raise_for_status()
        assert client.post("/sessions/bob/compact").status_code == 200
        assert client.delete("/sessions/bob").status_code == 204
        assert client.get("/sessions/bob").status_code == 404
        assert client.delete("/sessions/bob").status_code == 404


def test_a_paused_turn_is_answered_on_its_host(
    ray_address: str, pg_schema_url: str, tmp_path: Path
) -> None:
    """A turn paused at a human gate (its graph sent to the hosts as DOT text) is
    answered over HTTP: the host runs it on from the gate and commits it."""
    graph = tmp_path / "gated.dot"
    graph.write_text(GATED)
    with (
        serving(ray_address, pg_schema_url, "--graph", str(graph)) as url,
        httpx.Client(base_url=url, timeout=GUARD) as client,
    ):
        paused = client.post("/sessions/gate/turns", json={"text": "ship it"}).json()
        assert paused.get("status") == "paused" and paused["turn"] == 1, paused
        assert client.get("/sessions/gate").json()["question"]["choices"] == ["go", "skip"]
        done = client.post("/sessions/gate/answer", json={"choice": "go"})
        assert done.status_code == 200, done.text
        assert (done.json()["status"], done.json()["turn"]) == ("success", 1)
        assert "ship it" in done.json()["reply"]
        refused = client.post("/sessions/gate/retry")
        assert refused.status_code == 409, refused.text


@pytest.mark.parametrize("store", ["sqlite:///{tmp}/s.db", "memory:"])
def test_a_store_the_nodes_cannot_share_is_refused_in_one_line(tmp_path: Path, store: str) -> None:
    """``--ray`` with SQLite or memory: exits 2 with one line naming the reason."""
    proc = subprocess.run(
        [sys.executable, "-m", "engine.run", "serve", "--port", "0", "--ray",
         "--store", store.format(tmp=tmp_path)],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=GUARD,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs a shared PostgreSQL store" in lines[0], proc.stderr
