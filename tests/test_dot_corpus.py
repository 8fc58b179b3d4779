"""The reader against the references: pydot's grammar, and Graphviz itself when installed.

The corpus is 418 real DOT files nobody here wrote (``shared/dotcorpus`` beside the
repository, or ``$TURNGRAPH_DOTCORPUS``); the tests skip without it.  pydot's reading
(``tests/pydot_oracle.py``: pydot's grammar and the flattening this project used
before its own reader) is slow and exponential in nesting, so only small files are
compared with it; Graphviz's ``nop`` (its reader alone) checks every file is read.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.dot import DotLimitError, parse_dot
from engine.errors import DotSyntaxError
from tests import pydot_oracle
from tests.test_dot_fuzz import DOT_TOKENS

ROOT = Path(__file__).resolve().parent.parent


def _corpus() -> Path | None:
    env = os.environ.get("TURNGRAPH_DOTCORPUS")
    for base in ([Path(env)] if env else []) + [
        ROOT.parent / "shared" / "dotcorpus",
        ROOT.parent.parent / "shared" / "dotcorpus",
    ]:
        if base.is_dir():
            return base
    return None


CORPUS = _corpus()
FILES = sorted(p for p in CORPUS.rglob("*") if p.suffix in (".dot", ".gv")) if CORPUS else []
needs_corpus = pytest.mark.skipif(CORPUS is None, reason="no DOT corpus (shared/dotcorpus)")
needs_dot = pytest.mark.skipif(shutil.which("nop") is None, reason="Graphviz is not installed")


def _text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _read(reader: Callable[[str], Any], text: str) -> dict[str, Any] | None:
    """The reading as plain data (the oracle has its own, identical, record classes)."""
    try:
        return dataclasses.asdict(reader(text))
    except DotSyntaxError:
        return None


def _small(path: Path) -> bool:
    # pydot doubles its work per level of nesting: keep it to shallow files.
    text = path.read_bytes()
    return len(text) <= 1200 and text.count(b"{") <= 6


@needs_corpus
def test_reads_what_pydot_reads_on_real_files() -> None:
    """Every small corpus file pydot reads gives the very same nodes, edges, positions."""
    compared = 0
    for path in filter(_small, FILES):
        text = _text(path)
        old = _read(pydot_oracle.parse_dot, text)
        if old is None:
            continue
        assert _read(parse_dot, text) == old, path
        compared += 1
    assert compared > 150


@needs_corpus
@needs_dot
def test_every_file_graphviz_reads_is_read() -> None:
    """Each corpus file Graphviz reads (one graph per file) is read here without error."""
    refused = []
    for path in FILES:
        done = subprocess.run(["nop", str(path)], capture_output=True, timeout=60)
        if done.returncode != 0:
            continue
        try:
            parse_dot(_text(path), str(path))
        except DotLimitError:
            refused.append(path)
        except DotSyntaxError as exc:
            if "only one graph" not in exc.reason:
                refused.append(path)
    assert refused == []


FUZZ = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@FUZZ
@given(st.lists(st.sampled_from(DOT_TOKENS), max_size=30).map(" ".join))
def test_token_soup_reads_as_pydot_reads(body: str) -> None:
    """What both read from DOT token soup, they read the same way.

    pydot also reads keywords as node names (``digraph { node }``), which Graphviz
    refuses, and so does the reader.
    """
    text = "digraph { " + body + " }"
    old = _read(pydot_oracle.parse_dot, text)
    new = _read(parse_dot, text)
    if old is not None and new is not None:
        assert new == old
