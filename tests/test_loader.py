"""load_graph: files, text, the cache, handler resolution, policies, networkx output."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from engine.errors import DotSyntaxError, GraphError, GraphFileError, GraphValidationError
from engine.graph import NO_RETRY, RetryPolicy
from engine.loader import clear_cache, load_graph
from engine.registry import HandlerRegistry

TURN = """digraph turn {
    graph [max_steps=12, goal="answer"]
    node [shape=box]
    start [shape=Mdiamond]
    done [shape=Msquare]
    classify [handler=classify]
    llm_call [handler=llm, max_retries=2, timeout="30s", prompt="Hi\\nthere"]
    start -> classify -> llm_call -> done
    classify -> done [label=blocked, weight=2, condition="context.blocked=true"]
}
"""


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    """Each test starts with empty caches."""
    clear_cache()
    yield
    clear_cache()


def write(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` and return it."""
    path.write_text(text, encoding="utf-8")
    return path


def registry_of(*names: str) -> HandlerRegistry:
    """A registry whose handlers do nothing."""
    return HandlerRegistry({name: (lambda node, ctx: None) for name in names})


# --------------------------------------------------------------------------- sources


def test_loads_a_file_by_str_path_and_pathlike(tmp_path: Path) -> None:
    """A str without '{' and an os.PathLike are both paths; path is kept as given."""
    path = write(tmp_path / "turn.dot", TURN)
    by_str = load_graph(str(path))
    assert by_str.path == str(path)
    assert by_str.name == "turn"
    assert load_graph(path) is by_str


def test_text_with_a_brace_is_dot_text() -> None:
    """A str containing '{' is DOT text, shown as <string>."""
    graph = load_graph(TURN)
    assert graph.path == "<string>"
    assert list(graph.nodes) == ["start", "done", "classify", "llm_call"]


def test_source_hash_is_sha256_of_the_bytes(tmp_path: Path) -> None:
    """source_hash is the hex sha256 of the file's (or the text's UTF-8) bytes."""
    expected = hashlib.sha256(TURN.encode()).hexdigest()
    assert load_graph(TURN).source_hash == expected
    assert load_graph(write(tmp_path / "t.dot", TURN)).source_hash == expected


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (b"  \n\t\n", "empty file"),
        (b"digraph { a\x00 }", "binary file (contains NUL bytes)"),
        (b"digraph { a [x=\xff\xfe] }", "not UTF-8 text (bad byte 0xff at line 1, column 16)"),
        (
            b'digraph {\n a\n b [x="\xc3\xa9\xe9"] }',
            "not UTF-8 text (bad byte 0xe9 at line 3, column 9)",
        ),
    ],
)
def test_unusable_files(tmp_path: Path, content: bytes, reason: str) -> None:
    """Empty, binary and non-UTF-8 files are GraphFileErrors with the reason."""
    path = tmp_path / "g.dot"
    path.write_bytes(content)
    with pytest.raises(GraphFileError) as info:
        load_graph(path)
    assert info.value.reason == reason
    assert info.value.path == str(path)
    assert str(info.value) == f"{path}: error: {reason}"


def test_a_bom_is_dropped_from_a_latin1_graph_too(tmp_path: Path) -> None:
    """A UTF-8 BOM before ``charset=latin1`` text is dropped, not read as an id 'ï»¿digraph'."""
    body = 'digraph { charset=latin1; start [label="\xe9"]; start -> done }'
    for name, data in [
        ("utf8.dot", b"\xef\xbb\xbf" + body.encode("utf-8")),  # read as Latin-1: mojibake
        ("latin1.dot", b"\xef\xbb\xbf" + body.encode("latin-1")),  # not UTF-8 at all
    ]:
        (tmp_path / name).write_bytes(data)
        graph = load_graph(tmp_path / name)
        expected = "\xe9" if name == "latin1.dot" else "\xc3\xa9"
        assert graph.nodes["start"].label == expected


def test_missing_file_and_directory(tmp_path: Path) -> None:
    """A missing path and a directory are GraphFileErrors, not OSErrors."""
    with pytest.raises(GraphFileError, match="no such file"):
        load_graph(tmp_path / "nope.dot")
    with pytest.raises(GraphFileError, match="is a directory"):
        load_graph(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read anything")
def test_unreadable_file(tmp_path: Path) -> None:
    """A file without read permission is a GraphFileError."""
    path = write(tmp_path / "g.dot", TURN)
    path.chmod(0)
    with pytest.raises(GraphFileError, match="ermission"):
        load_graph(path)


def test_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    """A UTF-8 BOM (some editors add one) does not break parsing."""
    path = tmp_path / "g.dot"
    path.write_bytes(b"\xef\xbb\xbf" + TURN.encode())
    assert load_graph(path).start == "start"


def test_every_error_is_a_graph_error(tmp_path: Path) -> None:
    """File, syntax and validation problems share the GraphError base."""
    for source in (tmp_path / "missing.dot", "digraph {", "digraph { a }"):
        with pytest.raises(GraphError):
            load_graph(source)
    assert issubclass(DotSyntaxError, GraphError)
    assert issubclass(GraphValidationError, GraphError)


# --------------------------------------------------------------------------- cache


def test_unchanged_file_is_a_cache_hit(tmp_path: Path) -> None:
    """Loading an unchanged file again returns the very same Graph object."""
    path = write(tmp_path / "turn.dot", TURN)
    first = load_graph(path)
    assert load_graph(path) is first
    assert load_graph(str(path)) is first


def test_modified_file_is_reloaded(tmp_path: Path) -> None:
    """A changed file (even same size, same second) is parsed again."""
    path = write(tmp_path / "turn.dot", TURN)
    first = load_graph(path)
    write(path, TURN.replace("max_steps=12", "max_steps=13"))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    second = load_graph(path)
    assert second is not first
    assert second.max_steps == 13


def test_same_content_in_two_files_keeps_each_path(tmp_path: Path) -> None:
    """The content cache is per path, so messages always name the right file."""
    a = load_graph(write(tmp_path / "a.dot", TURN))
    b = load_graph(write(tmp_path / "b.dot", TURN))
    assert (a.path, b.path) == (str(tmp_path / "a.dot"), str(tmp_path / "b.dot"))
    assert a.source_hash == b.source_hash


def test_text_is_cached_by_content() -> None:
    """Equal text gives the same Graph object; clear_cache forgets it."""
    first = load_graph(TURN)
    assert load_graph("".join(list(TURN))) is first
    clear_cache()
    assert load_graph(TURN) is not first


def test_registry_is_checked_on_every_call() -> None:
    """A cached graph is still checked against each registry passed in."""
    graph = load_graph(TURN)
    good = registry_of("start", "exit", "classify", "llm")
    assert load_graph(TURN, registry=good) is graph
    with pytest.raises(GraphValidationError) as info:
        load_graph(TURN, registry=registry_of("start", "exit", "classify"))
    assert [str(i) for i in info.value.issues] == [
        "<string>:7:5: error: node 'llm_call': unknown handler 'llm'; "
        "registered: classify, conditional, done, exit, parallel, parallel.fan_in, start, "
        "subgraph, wait.human"
    ]


def test_failed_load_is_not_cached(tmp_path: Path) -> None:
    """A broken file raises each time, and loads once fixed."""
    path = write(tmp_path / "g.dot", "digraph { a }")
    for _ in range(2):
        with pytest.raises(GraphValidationError):
            load_graph(path)
    write(path, TURN)
    assert load_graph(path).start == "start"


# --------------------------------------------------------------------------- nodes


@pytest.mark.parametrize(
    ("attrs", "handler"),
    [
        ("handler=h, type=t, shape=diamond", "h"),
        ("type=t, shape=diamond", "t"),
        ("shape=diamond", "conditional"),
        ("shape=parallelogram", "tool"),
        ("shape=hexagon", "wait.human"),
        ("shape=box", "n"),
        ("", "n"),
    ],
)
def test_handler_resolution_order(attrs: str, handler: str) -> None:
    """handler=, then type=, then shape, then the node id."""
    graph = load_graph(f"digraph {{ start -> n -> done; n [{attrs}] }}")
    assert graph.nodes["n"].handler == handler


def test_start_and_exit_handlers_from_shapes() -> None:
    """Mdiamond resolves to handler start and Msquare to exit."""
    graph = load_graph(TURN)
    assert graph.nodes["start"].handler == "start"
    assert graph.nodes["done"].handler == "exit"
    assert graph.exits == frozenset({"done"})


def test_node_fields_are_lifted_and_typed() -> None:
    """label, shape, timeout (seconds), retry, blocking and targets become fields."""
    graph = load_graph(
        "digraph { start -> a -> b -> done\n"
        ' a [label="Step A", max_retries=3, retry.delay="100ms", retry.factor=3,'
        ' retry.max_delay="2s", retry.jitter=false, timeout="1m", blocking=yes,'
        " retry_target=b, fallback_retry_target=start] }"
    )
    a = graph.nodes["a"]
    assert (a.label, a.shape, a.timeout, a.blocking) == ("Step A", "box", 60.0, True)
    assert a.retry == RetryPolicy(3, 0.1, 3.0, 2.0, False)
    assert (a.retry_target, a.fallback_retry_target) == ("b", "start")
    assert a.attrs["timeout"] == timedelta(minutes=1)
    b = graph.nodes["b"]
    assert (b.label, b.timeout, b.blocking, b.retry) == ("b", None, False, NO_RETRY)


def test_graph_retry_defaults_apply_to_nodes() -> None:
    """default_max_retries and graph-level retry.* fill what a node leaves unset."""
    graph = load_graph(
        'digraph { default_max_retries=2; retry.initial_delay="1s"; retry.jitter=false\n'
        " start -> a -> b -> done; b [max_retries=0, retry.factor=1.5] }"
    )
    assert graph.default_retry == RetryPolicy(2, 1.0, 2.0, 30.0, False)
    assert graph.nodes["a"].retry == graph.default_retry
    assert graph.nodes["b"].retry == RetryPolicy(0, 1.0, 1.5, 30.0, False)


def test_zero_timeout_means_none() -> None:
    """timeout=0 disables the timeout."""
    graph = load_graph('digraph { start -> a -> done; a [timeout="0s"] }')
    assert graph.nodes["a"].timeout is None


def test_nodes_are_read_only() -> None:
    """The graph's mappings cannot be changed after load."""
    graph = load_graph(TURN)
    with pytest.raises(TypeError):
        graph.nodes["x"] = graph.nodes["start"]  # type: ignore[index]
    with pytest.raises(TypeError):
        graph.nodes["start"].attrs["shape"] = "box"  # type: ignore[index]


# --------------------------------------------------------------------------- edges


def test_edge_fields() -> None:
    """label, weight (default 0), compiled condition, line and source-order index."""
    graph = load_graph(TURN)
    assert [(e.src, e.dst, e.index, e.line) for e in graph.edges] == [
        ("start", "classify", 0, 8),
        ("classify", "llm_call", 1, 8),
        ("llm_call", "done", 2, 8),
        ("classify", "done", 3, 9),
    ]
    blocked = graph.edges[3]
    assert (blocked.label, blocked.weight) == ("blocked", 2)
    assert blocked.condition is not None
    assert blocked.condition({"blocked": True})
    assert not blocked.condition({"blocked": False})
    assert graph.edges[0].weight == 0 and graph.edges[0].condition is None


def test_empty_condition_is_unconditional() -> None:
    """condition="" leaves the edge unconditional (and no warning)."""
    graph = load_graph('digraph { start -> done [condition=""] }')
    assert graph.edges[0].condition is None
    assert graph.warnings == ()


# --------------------------------------------------------------------------- networkx


def test_to_networkx_holds_the_normalised_graph() -> None:
    """Graph attrs in .graph, typed node/edge attrs, edges keyed by index in order."""
    graph = load_graph(TURN)
    g = graph.to_networkx()
    assert g.graph == {"max_steps": 12, "goal": "answer"}
    assert list(g.nodes) == ["start", "done", "classify", "llm_call"]
    assert g.nodes["llm_call"]["max_retries"] == 2
    assert g.nodes["llm_call"]["timeout"] == timedelta(seconds=30)
    assert g.nodes["llm_call"]["prompt"] == "Hi\nthere"
    assert list(g.edges(keys=True)) == [
        ("start", "classify", 0),
        ("classify", "llm_call", 1),
        ("classify", "done", 3),
        ("llm_call", "done", 2),
    ]
    assert g.edges["classify", "done", 3] == {
        "label": "blocked",
        "weight": 2,
        "condition": "context.blocked=true",
    }


def test_to_networkx_keeps_parallel_edges_and_is_a_copy() -> None:
    """Parallel edges stay separate; changing the copy leaves the Graph alone."""
    graph = load_graph("digraph { start -> r; r -> done [label=a]; r -> done [label=b] }")
    g = graph.to_networkx()
    assert g.number_of_edges("r", "done") == 2
    g.add_node("extra")
    g.nodes["r"]["changed"] = True
    assert "extra" not in graph.to_networkx()
    assert "changed" not in graph.to_networkx().nodes["r"]
