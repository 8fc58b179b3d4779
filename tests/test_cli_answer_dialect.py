"""``sessions answer`` and ``retry`` take ``--dialect`` and ``--allow-shell`` as the run
did: an Attractor pipeline paused at its human gate is answered by another process."""

from __future__ import annotations

from pathlib import Path

from tests.test_cli_gates import program

PIPELINE = """digraph P {
  start [shape=Mdiamond]; exit [shape=Msquare]
  review [shape=hexagon, label="Ship it?"]
  ship [shape=parallelogram, tool_command="echo shipped > MARKER"]
  fix [prompt="Fix it"]
  start -> review
  review -> ship [label="ship"]
  review -> fix [label="fix"]
  ship -> exit; fix -> exit
}
"""


def test_an_attractor_pause_is_answered_in_its_dialect_with_shell_as_asked(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "marker.txt"
    path = tmp_path / "p.dot"
    path.write_text(PIPELINE.replace("MARKER", str(marker)))
    store = ("--store", f"sqlite:///{tmp_path / 's.db'}")
    attractor = ("--graph", str(path), "--dialect", "attractor")
    first = program(
        tmp_path, str(path), "-m", "go", "--session", "s1", *store, "--dialect", "attractor",
        "--allow-shell",
    )  # fmt: skip
    assert first.returncode == 0 and "waiting at node 'review'" in first.stdout, first.stderr
    plain = program(tmp_path, "sessions", *store, "answer", "s1", "ship", "--graph", str(path))
    assert plain.returncode == 2 and plain.stderr.count("\n") == 1, plain.stderr
    assert "node 'fix': unknown handler 'fix'" in plain.stderr
    no_shell = program(tmp_path, "sessions", *store, "answer", "s1", "ship", *attractor)
    assert no_shell.returncode == 2 and no_shell.stderr.count("\n") == 1, no_shell.stderr
    assert "node 'ship': tool_command is refused" in no_shell.stderr
    assert not marker.exists()
    shell = program(
        tmp_path, "sessions", *store, "answer", "s1", "ship", *attractor, "--allow-shell"
    )
    assert shell.returncode == 0, shell.stderr
    assert marker.read_text() == "shipped\n"
