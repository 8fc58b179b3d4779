"""``python -m engine.run serve`` with and without its optional speedups (uvloop, uvicorn's
httptools parser): a missing one never breaks the server, ``--loop`` picks the loop."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from engine.cli.serve import loop_factory
from tests.test_cli_portable import BLOCKER  # sitecustomize: BLOCK_IMPORTS unimportable

from .serve_kit import GUARD

ROOT = Path(__file__).resolve().parents[2]

HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None


def _serve(tmp_path: Path, blocked: str, *argv: str) -> subprocess.Popen[str]:
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TURNGRAPH_")},
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}",
        "BLOCK_IMPORTS": blocked,
        "TURNGRAPH_HOME": str(tmp_path / "home"),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "engine.run", "serve", "--port", "0", "--store", "memory:",
         "--llm", "echo", *argv],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _turn_then_stop(proc: subprocess.Popen[str]) -> dict[str, object]:
    """A turn and a streamed turn on the served API, then SIGTERM: exit 0, no traceback."""
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        assert line.startswith("serving on http://127.0.0.1:"), line + proc.stderr.read()
        with httpx.Client(base_url=line.split()[-1], timeout=GUARD) as client:
            body: dict[str, object] = client.post("/sessions/s/turns", json={"text": "hi"}).json()
            streamed = client.post(
                "/sessions/s/turns", json={"text": "again"}, headers={"accept": "text/event-stream"}
            )
        assert streamed.status_code == 200 and "event: result" in streamed.text, streamed.text
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=GUARD)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and "Traceback" not in err, err
    return body


@pytest.mark.parametrize(
    ("blocked", "loop"),
    [("uvloop,httptools", "auto"), ("uvloop", "asyncio"), ("httptools", "asyncio")],
    ids=["neither-auto", "no-uvloop-asyncio", "no-httptools-asyncio"],
)
def test_serve_works_without_its_optional_speedups(tmp_path: Path, blocked: str, loop: str) -> None:
    body = _turn_then_stop(_serve(tmp_path, blocked, "--loop", loop))
    assert body["status"] == "success" and body["turn"] == 1 and body["reply"]


@pytest.mark.skipif(not HAS_UVLOOP, reason="uvloop is not installed")
def test_serve_on_uvloop_answers_turns_and_drains(tmp_path: Path) -> None:
    body = _turn_then_stop(_serve(tmp_path, "nothing", "--loop", "uvloop"))
    assert body["status"] == "success" and body["turn"] == 1


def test_loop_uvloop_without_it_is_one_line_naming_pip_install(tmp_path: Path) -> None:
    proc = _serve(tmp_path, "uvloop", "--loop", "uvloop")
    _, err = proc.communicate(timeout=GUARD)
    assert proc.returncode == 2, err
    [line] = err.splitlines()
    assert "--loop uvloop needs uvloop" in line and "pip install uvloop" in line


def test_loop_factory_makes_no_process_wide_choice() -> None:
    """``asyncio`` is asyncio's own loop; ``auto`` is uvloop exactly when it is installed;
    either way only a factory is handed back (no event-loop policy is set)."""
    import asyncio

    policy = asyncio.get_event_loop_policy()
    assert loop_factory("asyncio") is None
    auto = loop_factory("auto")
    if HAS_UVLOOP:
        import uvloop

        assert auto is uvloop.new_event_loop and loop_factory("uvloop") is auto
    else:
        assert auto is None
    assert asyncio.get_event_loop_policy() is policy
