"""Writing DOT back: what the reader reads again, and what Graphviz draws as meant."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import run as cli
from engine.dot import parse_dot
from engine.dot_write import attr_list, quote
from engine.loader import clear_cache, load_graph

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz not installed")

JUSTIFIED = "left line\\lright\\rcentre"
VALID = (
    f'digraph j {{\n work [shape=Mdiamond, label="{JUSTIFIED}"]\n'
    " done [shape=Msquare]\n work -> done\n}\n"
)
INVALID = f'digraph j {{\n work [shape=Mdiamond, label="{JUSTIFIED}"]\n}}\n'


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    """Graphs this file renders are not served to later tests from the cache."""
    yield
    clear_cache()


@given(st.text())
def test_quote_reads_back_as_written(text: str) -> None:
    """Any text, quoted, is read back by the reader unchanged (as an id and as a value)."""
    raw = parse_dot(f"digraph {{ {quote(text)} [label={quote(text)}] }}")
    assert list(raw.nodes) == [text]
    assert raw.nodes[text].attrs == {"label": text}


@pytest.mark.parametrize(
    ("text", "written"),
    [
        ("a\\lb\\r", '"a\\lb\\r"'),  # justified line ends stay single
        ("\\N and \\G", '"\\N and \\G"'),
        ("a\nb", '"a\\nb"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\", '"back\\\\"'),
        ("back\\slash", '"back\\\\slash"'),  # not an escape: Graphviz shows it
        ("\\\\l", '"\\\\\\l"'),  # a backslash, then a left line end
    ],
)
def test_quote_keeps_graphviz_escapes(text: str, written: str) -> None:
    """Graphviz's label escapes stay single; every other backslash is doubled."""
    assert quote(text) == written


def test_attr_list() -> None:
    """Keys and values quoted, none gives nothing."""
    assert attr_list([("label", "x\\l"), ("a.b", "1")]) == ' ["label"="x\\l", "a.b"="1"]'
    assert attr_list([]) == ""


@pytest.mark.parametrize("text", [VALID, INVALID], ids=["valid", "marked"])
def test_render_to_dot_keeps_justified_line_ends(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    """``render -o x.dot`` writes ``\\l``/``\\r`` as Graphviz needs them; it reads back the same."""
    src, out = tmp_path / "j.dot", tmp_path / "out.dot"
    src.write_text(text)
    assert cli.main(["render", str(src), "-o", str(out)]) == (0 if text == VALID else 2)
    written = out.read_text()
    assert "left line\\lright\\rcentre" in written
    assert "\\\\l" not in written and "\\\\r" not in written
    label = parse_dot(written).nodes["work"].attrs["label"] or ""
    assert label.startswith(JUSTIFIED)
    if text == VALID:
        assert load_graph(out).nodes["work"].label.startswith(JUSTIFIED)


@needs_dot
@pytest.mark.parametrize("suffix", [".dot", ".svg"])
def test_graphviz_justifies_rendered_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    """Drawn by ``dot`` (from ``render``'s DOT, or by ``render -o x.svg``), ``\\l`` is a
    left-justified line and ``\\r`` a right-justified one, not literal backslashes."""
    src, out = tmp_path / "j.dot", tmp_path / f"out{suffix}"
    src.write_text(VALID)
    assert cli.main(["render", str(src), "-o", str(out)]) == 0
    if suffix == ".dot":
        svg = subprocess.run(
            ["dot", "-Tsvg", str(out)], capture_output=True, text=True, check=True
        ).stdout
    else:
        svg = out.read_text()
    texts = dict((m[1], m[0]) for m in re.findall(r'text-anchor="(\w+)"[^>]*>([^<]*)<', svg))
    assert texts.get("left line") == "start"
    assert texts.get("right") == "end"
    assert "\\" not in "".join(texts)
