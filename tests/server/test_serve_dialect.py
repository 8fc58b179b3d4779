"""``python -m engine.run serve --dialect attractor [--allow-shell]``: Attractor's pipelines
served over real HTTP on loopback; shell commands stay off unless the command line (or
``TURNGRAPH_ALLOW_SHELL``) turns them on, whatever the graph says."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from .serve_kit import GUARD

ROOT = Path(__file__).resolve().parents[2]

PLAN = """digraph P {
  graph [goal="ship the parser"]
  start [shape=Mdiamond]
  plan [prompt="Plan: $goal"]
  exit [shape=Msquare]
  start -> plan -> exit
}
"""

SHELL = """digraph P {
  graph [dialect=attractor]
  start [shape=Mdiamond]
  mark [shape=parallelogram, tool_command="echo ran > marker.txt"]
  exit [shape=Msquare]
  start -> mark -> exit
}
"""


def _serve(tmp_path: Path, *argv: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TURNGRAPH_")}
    return subprocess.Popen(
        [sys.executable, "-m", "engine.run", "serve", "--port", "0", "--store", "memory:",
         "--llm", "echo", *argv],
        cwd=tmp_path, env={**clean, "PYTHONPATH": str(ROOT),
                           "TURNGRAPH_HOME": str(tmp_path / "home"), **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _turn(proc: subprocess.Popen[str]) -> dict[str, object]:
    """One turn over HTTP, then SIGTERM: the server exits 0 with no traceback."""
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        assert line.startswith("serving on http://127.0.0.1:"), line + proc.stderr.read()
        with httpx.Client(base_url=line.split()[-1], timeout=GUARD) as client:
            body: dict[str, object] = client.post("/sessions/s/turns", json={"text": "hi"}).json()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=GUARD)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and "Traceback" not in err, err
    return body


def _refused(proc: subprocess.Popen[str]) -> str:
    """The server did not start: exit 2, one line on stderr, nothing on stdout."""
    out, err = proc.communicate(timeout=GUARD)
    assert proc.returncode == 2 and out == "", (out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_dialect_attractor_serves_a_pipeline_with_box_tasks(tmp_path: Path) -> None:
    """A box node with a prompt is an LLM task; $goal is expanded from the graph."""
    (tmp_path / "plan.dot").write_text(PLAN)
    body = _turn(_serve(tmp_path, "--graph", "plan.dot", "--dialect", "attractor"))
    assert body["status"] == "success" and body["reply"] == "echo: Plan: ship the parser", body


def test_without_dialect_the_same_graph_is_refused_at_start(tmp_path: Path) -> None:
    (tmp_path / "plan.dot").write_text(PLAN)
    err = _refused(_serve(tmp_path, "--graph", "plan.dot"))
    assert "plan.dot:4:3: error: node 'plan': unknown handler 'plan'" in err, err


def test_a_shell_node_is_refused_at_start_without_allow_shell(tmp_path: Path) -> None:
    """The graph's own dialect=attractor does not turn shell commands on."""
    (tmp_path / "shell.dot").write_text(SHELL)
    err = _refused(_serve(tmp_path, "--graph", "shell.dot"))
    assert "shell.dot:4:3: error: shell: node 'mark': tool_command is refused" in err, err
    assert "--allow-shell" in err and not (tmp_path / "marker.txt").exists()


def test_a_shell_node_in_a_sub_graph_is_refused_at_start(tmp_path: Path) -> None:
    (tmp_path / "shell.dot").write_text(SHELL)
    parent = 'digraph { start -> sub -> exit; sub [graph="shell.dot"] }'
    (tmp_path / "parent.dot").write_text(parent)
    err = _refused(_serve(tmp_path, "--graph", "parent.dot"))
    assert "shell.dot:4:3: error: shell: node 'mark': tool_command is refused" in err, err


def test_allow_shell_runs_tool_command(tmp_path: Path) -> None:
    (tmp_path / "shell.dot").write_text(SHELL)
    body = _turn(_serve(tmp_path, "--graph", "shell.dot", "--allow-shell"))
    assert body["status"] == "success", body
    assert (tmp_path / "marker.txt").read_text() == "ran\n"


def test_turngraph_allow_shell_env_runs_tool_command(tmp_path: Path) -> None:
    (tmp_path / "shell.dot").write_text(SHELL)
    proc = _serve(tmp_path, "--graph", "shell.dot", env={"TURNGRAPH_ALLOW_SHELL": "1"})
    assert _turn(proc)["status"] == "success"
    assert (tmp_path / "marker.txt").read_text() == "ran\n"


def test_dialect_turngraph_overrides_the_graph_attribute(tmp_path: Path) -> None:
    """--dialect turngraph reads an attractor-attributed graph by the default rules:
    its parallelogram is turngraph's ``tool`` node, never a shell command."""
    (tmp_path / "shell.dot").write_text(SHELL)
    body = _turn(_serve(tmp_path, "--graph", "shell.dot", "--dialect", "turngraph"))
    # turngraph's tool node finds no tool named "mark": a failed turn, not a refusal.
    assert body["status"] == "fail" and "tool_command" not in str(body), body
    assert not (tmp_path / "marker.txt").exists()


def test_ray_hosts_take_neither_dialect_nor_shell(tmp_path: Path) -> None:
    """Sessions on Ray hosts read the graph by its own dialect= and run no shell: the
    flags are refused rather than silently ignored."""
    err = _refused(_serve(tmp_path, "--ray", "--allow-shell"))
    assert "--dialect and --allow-shell do not work with --ray" in err, err
