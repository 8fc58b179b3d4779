"""``render GRAPH --trace SESSION:TURN``: a stored turn's path drawn by real Graphviz,
from a real SQLite store written by real turns of the command line."""

from __future__ import annotations

import html
import re
import shutil
from pathlib import Path

import pytest

from engine import run as cli

ROOT = Path(__file__).resolve().parent.parent
TURN = str(ROOT / "graphs" / "turn.dot")
FAILING = """digraph fails {
    start [shape=Mdiamond]
    done [shape=Msquare]
    broken [handler=tool, tool=no_such_tool]
    start -> broken -> done
}
"""

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` not installed")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TURNGRAPH_LLM", raising=False)
    monkeypatch.delenv("TURNGRAPH_STORE", raising=False)


@pytest.fixture
def store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """A SQLite store holding session ``alice`` with one turn of the shipped graph."""
    url = f"sqlite:///{tmp_path / 'tg.db'}"
    assert cli.main([TURN, "-m", "hello", "--session", "alice", "--store", url]) == 0
    capsys.readouterr()
    return url


def _ids(svg: str) -> set[str]:
    return {html.unescape(i) for i in re.findall(r'<g id="([^"]*)"', svg)}


@needs_dot
def test_the_svg_highlights_the_path_the_turn_took(store: str, tmp_path: Path) -> None:
    out = tmp_path / "turn.svg"
    assert cli.main(["render", TURN, "--trace", "alice:1", "--store", store, "-o", str(out)]) == 0
    ids = _ids(out.read_text())
    assert {"tg-visited-classify", "tg-visited-llm_call", "tg-visited-done"} <= ids
    assert "tg-taken-recall-llm_call" in ids and not any("reject" in i for i in ids)


@needs_dot
def test_a_png_is_written_too(store: str, tmp_path: Path) -> None:
    out = tmp_path / "turn.png"
    assert cli.main(["render", TURN, "--trace", "alice:1", "--store", store, "-o", str(out)]) == 0
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_the_failing_node_is_marked_in_the_dot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = tmp_path / "fails.dot"
    graph.write_text(FAILING)
    url = f"sqlite:///{tmp_path / 'tg.db'}"
    cli.main([str(graph), "-m", "hi", "--session", "bob", "--store", url])  # the turn fails
    capsys.readouterr()
    assert cli.main(["render", str(graph), "--trace", "bob:1", "--store", url]) == 0
    dot = capsys.readouterr().out
    assert re.search(r'"broken" \[.*"fillcolor"="#ff6b6b".*"id"="tg-failed-broken"', dot)
    assert '"id"="tg-visited-start"' in dot and "tg-visited-done" not in dot


def test_a_changed_graph_is_drawn_with_a_warning(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edited = tmp_path / "turn.dot"
    edited.write_text(Path(TURN).read_text() + "// edited\n")
    assert cli.main(["render", str(edited), "--trace", "alice:1", "--store", store]) == 0
    captured = capsys.readouterr()
    assert "tg-visited-llm_call" in captured.out
    assert "warning: turn 1 of 'alice' ran on graph" in captured.err


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("alice", "expected SESSION:TURN"),
        ("alice:0", "expected SESSION:TURN"),
        ("alice:2", "session 'alice': no turn 2 (not committed)"),
        ("nobody:1", "no such session"),
        ("bad id:1", "session 'bad id': must be 1-128 characters"),
    ],
)
def test_bad_traces_are_one_line_and_exit_2(
    store: str, spec: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["render", TURN, "--trace", spec, "--store", store]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err
    assert len(captured.err.strip().splitlines()) == 1


def test_a_graph_that_fails_validation_carries_no_trace(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.dot"
    bad.write_text("digraph bad { start [shape=Mdiamond]; work [handler=nope]; start -> work }")
    assert cli.main(["render", str(bad), "--trace", "alice:1", "--store", store]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "fails validation" in captured.err
    assert "render it without --trace" in captured.err
