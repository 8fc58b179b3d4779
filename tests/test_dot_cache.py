"""The compiled-graph cache on disk: served without parsing, never trusted blindly."""

from __future__ import annotations

import json
import os
import threading
from datetime import timedelta
from pathlib import Path

import pytest

import engine.dot
import engine.graph_cache
from engine.graph import Graph
from engine.graph_cache import entry_path, load_entry, store_entry
from engine.loader import clear_cache, load_graph

ROOT = Path(__file__).resolve().parent.parent
DOT = """digraph t {
  graph [max_steps=7, retry.delay=250ms]
  start [shape=Mdiamond]
  work [max_retries=2, timeout="1.5s", ratio=0.5, flag=true, label="W\\lx"]
  done [shape=Msquare]
  start -> work
  work -> done [condition="outcome=success", weight=3]
  work -> done [label=fallback]
}
"""


@pytest.fixture(autouse=True)
def _fresh() -> None:
    clear_cache()


def _same(a: Graph, b: Graph) -> None:
    assert (a.name, a.path, a.source_hash, a.start, a.exits) == (
        b.name, b.path, b.source_hash, b.start, b.exits,
    )  # fmt: skip
    assert dict(a.attrs) == dict(b.attrs)
    assert a.nodes == b.nodes
    assert (a.warnings, a.max_steps, a.default_retry) == (b.warnings, b.max_steps, b.default_retry)
    for x, y in zip(a.edges, b.edges, strict=True):
        assert (x.src, x.dst, x.index, dict(x.attrs), x.line, x.label, x.weight) == (
            y.src, y.dst, y.index, dict(y.attrs), y.line, y.label, y.weight,
        )  # fmt: skip
        assert (x.condition and x.condition.source) == (y.condition and y.condition.source)


def test_a_cached_graph_is_served_without_parsing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second load reads the entry, equal in every field, and never calls the reader."""
    path = tmp_path / "g.dot"
    path.write_text(DOT)
    first = load_graph(path, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").iterdir())) == 1
    clear_cache()

    def no_parse(text: str, path: str = "") -> None:
        raise AssertionError("parsed again")

    monkeypatch.setattr(engine.dot, "parse_dot", no_parse)
    second = load_graph(path, cache_dir=tmp_path / "cache")
    assert second is not first
    _same(first, second)
    assert second.nodes["work"].attrs["timeout"] == timedelta(seconds=1.5)
    assert second.nodes["work"].attrs["ratio"] == 0.5
    assert second.nodes["work"].attrs["flag"] is True
    cond = second.edges[1].condition
    assert cond is not None and cond({"outcome": "success"}) and not cond({"outcome": "x"})


def test_entries_are_keyed_by_content_and_shown_under_the_current_path(tmp_path: Path) -> None:
    """The same text under another name is one entry; messages name the file asked for."""
    for name in ("a.dot", "b.dot"):
        (tmp_path / name).write_text(DOT)
    load_graph(tmp_path / "a.dot", cache_dir=tmp_path / "cache")
    clear_cache()
    graph = load_graph(tmp_path / "b.dot", cache_dir=tmp_path / "cache")
    assert graph.path == str(tmp_path / "b.dot")
    assert len(list((tmp_path / "cache").iterdir())) == 1


BAD_ENTRIES = [
    b"",
    b"\x80\x81 not json",
    b'{"format": 1',
    b"[1, 2, 3]",
    b'{"format": 1, "digest": "x"}',
]


@pytest.mark.parametrize("content", BAD_ENTRIES)
def test_a_corrupt_entry_is_ignored_and_rewritten(tmp_path: Path, content: bytes) -> None:
    """Truncated, binary or ill-typed entries are never used; the graph is read again."""
    path = tmp_path / "g.dot"
    path.write_text(DOT)
    graph = load_graph(path, cache_dir=tmp_path)
    entry = entry_path(tmp_path, graph.source_hash)
    entry.write_bytes(content)
    assert load_entry(tmp_path, graph.source_hash, str(path)) is None
    clear_cache()
    _same(load_graph(path, cache_dir=tmp_path), graph)
    assert load_entry(tmp_path, graph.source_hash, str(path)) is not None


@pytest.mark.parametrize(
    "edit",
    [
        lambda e: e.update(digest="0" * 64),
        lambda e: e.update(start="nowhere"),
        lambda e: e["edges"][0].__setitem__(1, "ghost"),
        lambda e: e["edges"][1].__setitem__(6, "outcome=="),
        lambda e: e["nodes"][0][2].__setitem__("x", [1, 2]),
        lambda e: e.update(extra=1),
    ],
)
def test_a_well_formed_entry_that_does_not_hold_together_is_ignored(
    tmp_path: Path, edit: object
) -> None:
    """Another graph's digest, dangling names, bad conditions or values: not trusted."""
    path = tmp_path / "g.dot"
    path.write_text(DOT)
    graph = load_graph(path, cache_dir=tmp_path)
    entry = entry_path(tmp_path, graph.source_hash)
    doc = json.loads(entry.read_bytes())
    edit(doc)  # type: ignore[operator]
    entry.write_text(json.dumps(doc))
    assert load_entry(tmp_path, graph.source_hash, str(path)) is None


@pytest.mark.parametrize("days", [10**9, -(10**9)])
def test_an_entry_with_an_out_of_range_duration_is_ignored(tmp_path: Path, days: int) -> None:
    """A duration no timedelta can hold is a bad entry, not an OverflowError."""
    path = tmp_path / "g.dot"
    path.write_text(DOT)
    graph = load_graph(path, cache_dir=tmp_path)
    entry = entry_path(tmp_path, graph.source_hash)
    doc = json.loads(entry.read_bytes())
    for node in doc["nodes"]:
        if "timeout" in node[2]:
            node[2]["timeout"] = [days, 0, 0]
    entry.write_text(json.dumps(doc))
    assert load_entry(tmp_path, graph.source_hash, str(path)) is None
    clear_cache()
    _same(load_graph(path, cache_dir=tmp_path), graph)


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "symlink"])
def test_an_entry_that_is_not_a_regular_file_is_never_read(tmp_path: Path, kind: str) -> None:
    """A FIFO, a link to /dev/zero or any symlink in an entry's place is skipped at once."""
    cache = tmp_path / "cache"
    graph = load_graph(DOT, cache_dir=cache)
    entry = entry_path(cache, graph.source_hash)
    good = entry.read_bytes()
    entry.unlink()
    if kind == "fifo":
        os.mkfifo(entry)  # nobody writes to it: reading it would wait forever
    elif kind == "dev_zero":
        entry.symlink_to("/dev/zero")  # endless: reading it would fill memory
    else:
        (tmp_path / "elsewhere.json").write_bytes(good)
        entry.symlink_to(tmp_path / "elsewhere.json")
    assert load_entry(cache, graph.source_hash, "<string>") is None
    clear_cache()
    _same(load_graph(DOT, cache_dir=cache), graph)


def test_an_entry_past_the_size_limit_is_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry bigger than MAX_ENTRY_BYTES is ignored without being read into memory."""
    graph = load_graph(DOT, cache_dir=tmp_path)
    entry = entry_path(tmp_path, graph.source_hash)
    assert load_entry(tmp_path, graph.source_hash, "<string>") is not None
    monkeypatch.setattr(engine.graph_cache, "MAX_ENTRY_BYTES", entry.stat().st_size - 1)
    assert load_entry(tmp_path, graph.source_hash, "<string>") is None


def test_concurrent_writers_leave_one_whole_entry(tmp_path: Path) -> None:
    """Writers racing on one entry never expose a partial file nor leave temporaries."""
    graph = load_graph(DOT)
    seen: list[Graph | None] = []
    store_entry(tmp_path, graph)

    def write() -> None:
        for _ in range(30):
            store_entry(tmp_path, graph)

    def read() -> None:
        for _ in range(60):
            seen.append(load_entry(tmp_path, graph.source_hash, "<string>"))

    threads = [threading.Thread(target=f) for f in (write, write, write, read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(g is not None for g in seen)
    assert [p.name for p in tmp_path.iterdir()] == [entry_path(tmp_path, graph.source_hash).name]


def test_an_unwritable_cache_only_costs_time(tmp_path: Path) -> None:
    """A cache directory that cannot be created is skipped; the graph still loads."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    graph = load_graph(DOT, cache_dir=blocker / "cache")
    assert graph.start == "start"


def test_the_cache_keeps_at_most_max_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writing past MAX_ENTRIES removes the oldest entries, never the one just written."""
    monkeypatch.setattr(engine.graph_cache, "MAX_ENTRIES", 3)
    graphs = [load_graph(f"// {i}\n{DOT}", cache_dir=tmp_path) for i in range(5)]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 3
    assert entry_path(tmp_path, graphs[-1].source_hash).name in names
