"""SIGTERM on a real ``python -m engine.run serve`` process with a turn in flight: the
turn's response still arrives and is committed, the lease is released, exit code 0."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import anyio
import httpx
import pytest

from sessions import SessionManager
from tests.llm_servers import Hang, Held, LLMServer, Reply

from .serve_kit import GUARD

ROOT = Path(__file__).resolve().parents[2]


def _env(model: LLMServer) -> dict[str, str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "ANTHROPIC_", "TURNGRAPH_LLM", "TURNGRAPH_API"))
    }
    return {
        **clean,
        "PYTHONPATH": str(ROOT),
        "OPENAI_BASE_URL": model.url,
        "OPENAI_API_KEY": "test-key",
    }


def _serve(model: LLMServer, db: str, *extra: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.run", "serve", "--port", "0", "--store", db,
         "--llm", "openai:m", *extra],
        cwd=ROOT, env=_env(model), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline()
    assert line.startswith("serving on http://127.0.0.1:"), line + proc.stderr.read()
    return proc, line.split()[-1]


def _wait_for(what: str, done: threading.Event | None = None, check: object = None) -> None:
    for _ in range(int(GUARD / 0.02)):
        if (done is not None and done.is_set()) or (callable(check) and check()):
            return
        threading.Event().wait(0.02)
    raise AssertionError(f"gave up waiting for {what}")


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_sigterm_lets_the_running_turn_finish_and_exits_0(tmp_path: Path, stream: bool) -> None:
    pytest.importorskip("openai")
    db = f"sqlite:///{tmp_path / 's.db'}"
    reply = Reply(tokens=("Slow", " and", " sure"), usage=(3, 3))
    with LLMServer("openai") as model:
        # A streamed model call is held until released; a plain one answers after 1 s.
        held = Held(reply, after=1)
        model.script(held if stream else Hang(1.0, reply))
        proc, url = _serve(model, db, "--grace", "30")
        answer: dict[str, httpx.Response] = {}
        headers = {"accept": "text/event-stream"} if stream else {}

        def post() -> None:
            with httpx.Client(base_url=url, timeout=GUARD) as client:
                response = client.post("/sessions/late/turns", json={"text": "hi"}, headers=headers)
                answer["r"] = response

        client = threading.Thread(target=post)
        try:
            client.start()
            _wait_for("the model request", check=lambda: bool(model.requests))
            proc.send_signal(signal.SIGTERM)
            threading.Event().wait(0.3)  # the server is draining, the turn still running
            assert proc.poll() is None and "r" not in answer
            held.release.set()
            client.join(GUARD)
            _, err = proc.communicate(timeout=GUARD)
        finally:
            held.release.set()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    response = answer["r"]
    assert response.status_code == 200, response.text
    if stream:
        last = response.text.strip().splitlines()[-1]
        assert last.startswith("data: ") and '"reply":"Slow and sure"' in last, response.text
    else:
        assert response.json()["reply"] == "Slow and sure", response.text

    async def reopen() -> tuple[int, int]:
        # Another owner takes the session at once: the server released its lease.
        async with SessionManager(db, owner="next", lease_ttl=600) as manager:
            session = await manager.get("late")
            return session.turn_count, session.message_count

    assert anyio.run(reopen) == (1, 2)


def test_a_turn_past_the_grace_period_is_cancelled_whole(tmp_path: Path) -> None:
    pytest.importorskip("openai")
    db = f"sqlite:///{tmp_path / 's.db'}"
    with LLMServer("openai") as model:
        model.script(Hang(GUARD, Reply(tokens=("Never", " told"))))
        proc, url = _serve(model, db, "--grace", "0.5")

        def post() -> None:
            # The connection is dropped when the grace runs out: expected.
            client = httpx.Client(base_url=url, timeout=GUARD)
            with client, contextlib.suppress(httpx.HTTPError):
                client.post("/sessions/cut/turns", json={"text": "hi"})

        poster = threading.Thread(target=post)
        try:
            poster.start()
            _wait_for("the model request", check=lambda: bool(model.requests))
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=GUARD)
        finally:
            poster.join(GUARD)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, err

    async def reopen() -> tuple[int, int]:
        async with SessionManager(db, owner="next", lease_ttl=600) as manager:
            session = await manager.get("cut")
            return session.turn_count, session.message_count

    assert anyio.run(reopen) == (0, 0)  # nothing of the cancelled turn was stored
