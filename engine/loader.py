"""``load_graph``: DOT file or text in, frozen validated :class:`~engine.graph.Graph` out.

::

    graph = load_graph("graphs/turn.dot", registry=registry)
    graph = load_graph('digraph { start -> work -> done }')

A ``str`` containing ``{`` is DOT text (shown as ``<string>`` in messages); anything
else is a path.  Loading is a chain of small steps: read (:mod:`engine.dot`) → type
attributes → resolve handlers → compile conditions (:mod:`engine.conditions`) →
validate (:mod:`engine.validate`).  Every problem is reported at once in one
:class:`~engine.errors.GraphValidationError`; warnings land in ``Graph.warnings``.

**Handlers.** A node's handler is its ``handler=`` attribute, else its ``type=``,
else its shape (``Mdiamond`` → ``start``, ``Msquare`` → ``exit``, ``diamond`` →
``conditional``, ``parallelogram`` → ``tool``, ``hexagon`` → ``wait.human``, ``component``
→ ``parallel``, ``tripleoctagon`` → ``parallel.fan_in``; shape names
in any case), else its id.  In the ``attractor`` dialect (the ``dialect`` argument or
graph attribute) the rules are Attractor's instead (:mod:`engine.attractor`).  With a
``registry`` every handler must be registered (an unknown handler is an error naming
the node and its line); without one, any name is accepted and the engine checks later.

**Start and exits.** The start node is the one with ``shape=Mdiamond`` or whose
handler is ``start`` (so a plain node named ``start`` is it); there must be exactly
one, and no edge may enter it.  An exit is a node with ``shape=Msquare`` or whose
handler is ``exit`` or ``done`` (so plain nodes named ``exit`` or ``done`` are
exits); there must be at least one, and no edge may leave one.

**Node attributes** (typed; see :mod:`engine.validate` for the kinds):
``max_retries`` (count), ``retry.initial_delay`` (alias ``retry.delay``),
``retry.factor``, ``retry.max_delay`` (durations / number), ``retry.jitter``
(bool) → ``Node.retry``; ``timeout`` (duration) → ``Node.timeout`` in seconds;
(``0`` means none); ``retry_target`` / ``fallback_retry_target`` (existing node
ids); ``blocking``
(bool).  A node's unset retry settings come from the graph's
``default_max_retries`` and ``retry.*`` attributes, then :class:`RetryPolicy`'s
defaults.  The graph's ``max_steps`` (integer ≥ 1) bounds cycles; its
``turn_timeout`` (duration) bounds a whole run (read by :class:`~engine.Engine`).

**Edge attributes:** ``label`` (text), ``weight`` (integer, default 0),
``condition`` (see :mod:`engine.conditions`; empty means none).

**Encoding.** A file is UTF-8 (a BOM is dropped), unless its graph says
``charset=latin1`` (or ``latin-1``, ``l1``, ``iso-8859-1``): then, as in Graphviz,
its bytes are Latin-1 (a UTF-8 BOM before them is dropped too).  At most
:data:`MAX_BYTES` are read (:func:`read_dot`): a longer file, ``/dev/zero`` or an
endless pipe is refused without reading it all.

**Caching.** A file is cached by path and checked on every call by its
modification time, size, inode and change time (one ``stat``), then by content
hash; text is cached by content hash.  At most
:data:`CACHE_SIZE` graphs of each kind are kept (least recently used go first).  A
hit returns the very same ``Graph`` object.  Handlers are checked against the
registry on every call, so one cached graph serves every registry.  With
``cache_dir``, compiled graphs are also kept on disk by content hash
(:mod:`engine.graph_cache`): a new process loading a graph read before neither
imports nor runs the DOT reader.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import replace
from datetime import timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING, Generic, NamedTuple, TypeVar

from engine.attractor import ATTRACTOR, DEFAULT_DIALECT, DIALECTS
from engine.conditions import ConditionSyntaxError, compile_condition
from engine.errors import DotSyntaxError, GraphFileError, GraphValidationError, Issue
from engine.graph import NO_RETRY, Edge, Graph, Node, RetryPolicy, Value
from engine.validate import (
    EDGE_KINDS,
    GRAPH_KINDS,
    NODE_KINDS,
    Kind,
    handler_issues,
    structure_issues,
    type_attrs,
)

if TYPE_CHECKING:  # the reader is imported only when a graph must be read
    from engine.dot import RawEdge, RawGraph, RawNode

__all__ = ["CACHE_SIZE", "MAX_BYTES", "clear_cache", "load_graph", "read_dot"]

CACHE_SIZE = 128
"""Graphs kept per cache (files by path, graphs by content hash)."""
MAX_BYTES = 64 * 1024 * 1024
"""Largest graph file read; :func:`read_dot` reads at most one byte more to know."""
_CHUNK = 1024 * 1024

SHAPE_HANDLERS: Mapping[str, str] = {
    "mdiamond": "start",
    "msquare": "exit",
    "diamond": "conditional",
    "parallelogram": "tool",
    "hexagon": "wait.human",
    "component": "parallel",
    "tripleoctagon": "parallel.fan_in",
}
EXIT_HANDLERS = frozenset({"exit", "done"})

K = TypeVar("K")
V = TypeVar("V")


class _LRU(Generic[K, V]):
    """A small thread-safe least-recently-used map."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self._size:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


_Stamp = tuple[int, int, int, int] | None  # None: not a regular file, never cached
_FILES: _LRU[tuple[str, str, str], tuple[_Stamp, Graph]] = _LRU(CACHE_SIZE)
_GRAPHS: _LRU[tuple[str, str], Graph] = _LRU(CACHE_SIZE)
_WITH_SUBS: _LRU[tuple[str, ...], Graph] = _LRU(CACHE_SIZE)


def clear_cache() -> None:
    """Forget every cached graph (the next load parses again)."""
    _FILES.clear()
    _GRAPHS.clear()
    _WITH_SUBS.clear()


def load_graph(
    source: str | os.PathLike[str],
    *,
    registry: Collection[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    dialect: str | None = None,
) -> Graph:
    """Load, validate and freeze a turn graph from a DOT file or DOT text.

    ``registry`` (a :class:`~engine.registry.HandlerRegistry`, or any collection of
    handler names) makes an unregistered handler a load-time error.  ``cache_dir``
    keeps compiled graphs on disk there (see :mod:`engine.graph_cache`).  ``dialect``
    (``"turngraph"`` or ``"attractor"``, :mod:`engine.attractor`) overrides the graph's
    own ``dialect=`` attribute; by default that attribute decides, else ``turngraph``.
    Raises :class:`~engine.errors.GraphFileError`,
    :class:`~engine.errors.DotSyntaxError` or
    :class:`~engine.errors.GraphValidationError` (all :class:`GraphError`), and
    ``ValueError`` for an unknown ``dialect``.
    """
    if dialect is not None and dialect not in DIALECTS:
        raise ValueError(f"unknown dialect {dialect!r}; known: {', '.join(DIALECTS)}")
    return _load(source, registry, cache_dir, (), dialect)


def _load(
    source: str | os.PathLike[str],
    registry: Collection[str] | None,
    cache_dir: str | os.PathLike[str] | None,
    stack: tuple[str, ...],
    dialect: str | None = None,
) -> Graph:
    """:func:`load_graph` with the files being loaded above it (sub-graph cycles)."""
    if isinstance(source, str) and "{" in source:
        data = source.encode("utf-8", "surrogatepass")
        graph = _from_data(data, "<string>", registry, cache_dir, source, dialect)
    else:
        graph = _from_file(os.fspath(source), registry, cache_dir, dialect)
    if registry is not None:
        missing = handler_issues(graph.path, graph.nodes, registry)
        if missing:
            raise GraphValidationError(graph.path, tuple(missing))
    if any("graph" in n.attrs for n in graph.nodes.values()):
        graph = _with_subgraphs(graph, stack, registry, cache_dir, dialect)
    return graph


def _with_subgraphs(
    graph: Graph,
    stack: tuple[str, ...],
    registry: Collection[str] | None,
    cache_dir: str | os.PathLike[str] | None,
    dialect: str | None,
) -> Graph:
    """``graph`` with its sub-graphs, the same object while none of the files changed."""
    from engine.subgraphs import attach_subgraphs

    # A sub-graph file is read in its own dialect= when it names one, else its parent's.
    parent = dialect or graph.attrs.get("dialect")
    inherited = _INHERIT + parent if isinstance(parent, str) and parent else None

    def load(p: str | os.PathLike[str], st: tuple[str, ...]) -> Graph:
        return _load(p, registry, cache_dir, st, inherited)

    full = attach_subgraphs(graph, stack, load)
    # Engines compile a plan per Graph object: hand back the same one for the same files.
    key = (graph.source_hash, graph.path, *(g.source_hash for g in full.subgraphs.values()))
    known = _WITH_SUBS.get(key)
    if known is not None and all(known.subgraphs[k] is v for k, v in full.subgraphs.items()):
        return known
    _WITH_SUBS.put(key, full)
    return full


# --------------------------------------------------------------------------- reading


def _stamp(shown: str) -> _Stamp:
    try:
        st = os.stat(shown)
    except FileNotFoundError:
        raise GraphFileError(shown, "no such file") from None
    except OSError as exc:
        raise GraphFileError(shown, exc.strerror or type(exc).__name__) from None
    if stat.S_ISDIR(st.st_mode):
        raise GraphFileError(shown, "is a directory")
    if not stat.S_ISREG(st.st_mode):
        return None  # a pipe or device says nothing by its stat about what it will yield
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)


def read_dot(path: str, limit: int | None = None) -> bytes:
    """The bytes of the graph file ``path``, reading at most ``limit + 1`` of them.

    ``limit`` defaults to :data:`MAX_BYTES`.  A longer file, ``/dev/zero`` or a pipe
    that never ends is a :class:`~engine.errors.GraphFileError` naming ``path``, as
    are an empty, binary or unreadable file.  A FIFO nobody writes to reads as empty
    instead of blocking (it is opened non-blocking, then read blocking).
    """
    limit = MAX_BYTES if limit is None else limit
    chunks: list[bytes] = []
    left = limit + 1
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            os.set_blocking(fd, True)
            while left > 0 and (chunk := os.read(fd, min(left, _CHUNK))):
                chunks.append(chunk)
                left -= len(chunk)
        finally:
            os.close(fd)
    except OSError as exc:
        raise GraphFileError(path, exc.strerror or type(exc).__name__) from None
    if left <= 0:
        raise GraphFileError(path, f"larger than {_size(limit)}: not read")
    data = b"".join(chunks)
    if not data.strip():
        raise GraphFileError(path, "empty file")
    if b"\0" in data:
        raise GraphFileError(path, "binary file (contains NUL bytes)")
    return data


def _size(n: int) -> str:
    return f"{n // 2**20} MiB" if n >= 2**20 and n % 2**20 == 0 else f"{n} bytes"


def _parse(data: bytes, path: str) -> RawGraph:
    """Decode (UTF-8, or Latin-1 where the graph says ``charset=latin1``) and read."""
    from engine.dot import is_latin1, parse_dot

    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad = GraphFileError(path, _not_utf8(data, exc.start))
        try:
            raw = parse_dot(_latin1(data), path)
        except DotSyntaxError:
            raise bad from None
        if not is_latin1(raw.attrs):
            raise bad from None
        return raw
    raw = parse_dot(text, path)
    if is_latin1(raw.attrs) and not text.isascii():
        return parse_dot(_latin1(data), path)
    return raw


def _latin1(data: bytes) -> str:
    """``data`` as Latin-1 text, a UTF-8 BOM dropped (as it is from UTF-8 text)."""
    return data.removeprefix(b"\xef\xbb\xbf").decode("latin-1")


def _not_utf8(data: bytes, offset: int) -> str:
    """The reason for a file that is not UTF-8: the first bad byte, by line and column."""
    line = data.count(b"\n", 0, offset) + 1
    # Everything before the first bad byte is UTF-8: count characters, as DOT errors do.
    col = len(data[data.rfind(b"\n", 0, offset) + 1 : offset].decode()) + 1
    return f"not UTF-8 text (bad byte 0x{data[offset]:02x} at line {line}, column {col})"


def _from_file(
    shown: str,
    registry: Collection[str] | None,
    cache_dir: str | os.PathLike[str] | None,
    dialect: str | None,
) -> Graph:
    # The cwd is part of a relative path's key; abspath() would cost more than the stat.
    key = (shown, "" if os.path.isabs(shown) else os.getcwd(), dialect or "")
    stamp = _stamp(shown)
    hit = _FILES.get(key) if stamp is not None else None
    if hit is not None and hit[0] == stamp:
        return hit[1]
    graph = _from_data(read_dot(shown), shown, registry, cache_dir, None, dialect)
    if stamp is not None:
        _FILES.put(key, (stamp, graph))
    return graph


def _from_data(
    data: bytes,
    path: str,
    registry: Collection[str] | None,
    cache_dir: str | os.PathLike[str] | None,
    text: str | None = None,
    dialect: str | None = None,
) -> Graph:
    """The graph for ``data`` (``text`` when it came as a string): memory, disk, or built."""
    digest = hashlib.sha256(data).hexdigest()
    if dialect is not None:  # one text read in another dialect is another graph
        digest += f"-{dialect}"
    graph = _GRAPHS.get((digest, path))
    if graph is not None:
        return graph
    if cache_dir is not None:
        from engine.graph_cache import load_entry

        graph = load_entry(cache_dir, digest, path)
    if graph is None:
        if text is not None:
            from engine.dot import parse_dot

            raw = parse_dot(text, path)
        else:
            raw = _parse(data, path)
        graph = _build(raw, path, digest, registry, dialect)
        if cache_dir is not None:
            from engine.graph_cache import store_entry

            store_entry(cache_dir, graph)
    _GRAPHS.put((digest, path), graph)
    return graph


# --------------------------------------------------------------------------- building


def _build(
    raw: RawGraph,
    path: str,
    digest: str,
    registry: Collection[str] | None,
    dialect: str | None = None,
) -> Graph:
    """Compile ``raw``; raise every problem at once, or return the Graph.

    ``registry`` only adds its issues to a graph already in error; a good graph is
    checked against each caller's registry by :func:`load_graph`.  ``dialect`` (else
    the graph's ``dialect`` attribute) picks the reading rules (:class:`_Rules`).
    """
    if not raw.directed:
        # The wrong kind of file, like a syntax error: every rule below would only add
        # noise (no start, unknown handlers...), so this error stands alone.
        kind = Issue(
            "error", "an undirected 'graph': turn graphs are 'digraph'", path, raw.line, raw.col
        )
        raise GraphValidationError(path, (kind,))
    issues: list[Issue] = []
    raw, rules = _dialect(raw, path, dialect, issues)
    attrs = _graph_attrs(raw, path, issues, rules)
    default_retry = _retry(attrs, RetryPolicy(), "default_max_retries")
    nodes = {n.id: _node(n, path, default_retry, issues, rules) for n in raw.nodes.values()}
    edges = tuple(_edge(e, i, path, issues, rules) for i, e in enumerate(raw.edges))
    starts = [i for i, n in nodes.items() if n.shape.lower() == "mdiamond" or n.handler == "start"]
    exits = frozenset(
        i for i, n in nodes.items() if n.shape.lower() == "msquare" or n.handler in EXIT_HANDLERS
    )
    if rules.dead_ends_exit:
        from engine.attractor import dead_ends

        exits |= dead_ends(nodes, {e.src for e in edges}, starts[0] if starts else None)
    cols = [e.col for e in raw.edges]
    issues += [
        # Whole-graph problems (no start, no exit) point at the graph's own line.
        i if i.line else replace(i, line=raw.line, col=raw.col)
        for i in structure_issues(path, nodes, edges, starts, exits, cols)
    ]
    if any(i.severity == "error" for i in issues):
        if registry is not None:
            issues += handler_issues(path, nodes, registry)
        raise GraphValidationError(path, _sorted(issues))
    max_steps = attrs.get("max_steps")
    return Graph(
        name=raw.name,
        path=path,
        source_hash=digest,
        attrs=MappingProxyType(attrs),
        nodes=MappingProxyType(nodes),
        edges=edges,
        start=starts[0],
        exits=exits,
        warnings=_sorted(issues),
        default_retry=default_retry,
        max_steps=max_steps if isinstance(max_steps, int) else None,
    )


def _sorted(issues: list[Issue]) -> tuple[Issue, ...]:
    return tuple(sorted(issues, key=lambda i: (i.line, i.col)))


def _handler(node_id: str, attrs: Mapping[str, Value]) -> str:
    for key in ("handler", "type"):
        name = _text(attrs, key)
        if name and name.strip():
            return name.strip()
    if _text(attrs, "graph"):
        return "subgraph"
    shape = (_text(attrs, "shape") or "").lower()
    return SHAPE_HANDLERS.get(shape, node_id)


class _Rules(NamedTuple):
    """What a dialect changes in reading: attribute kinds, handlers, conditions, exits."""

    graph_kinds: Mapping[str, Kind] = GRAPH_KINDS
    node_kinds: Mapping[str, Kind] = NODE_KINDS
    edge_kinds: Mapping[str, Kind] = EDGE_KINDS
    handler: Callable[[str, Mapping[str, Value]], str] = _handler
    extended_conditions: bool = False
    dead_ends_exit: bool = False


_DEFAULT_RULES = _Rules()
_INHERIT = "inherit:"  # a sub-graph's dialect: its parent's, unless it names its own


def _dialect(
    raw: RawGraph, path: str, dialect: str | None, issues: list[Issue]
) -> tuple[RawGraph, _Rules]:
    """``raw`` and the rules of its dialect (transformed for ``attractor``).

    ``dialect`` overrides the graph's ``dialect=``; ``"inherit:NAME"`` (a sub-graph's)
    is only the default when the graph names none.
    """
    own = raw.attrs.get("dialect")
    if dialect is not None and dialect.startswith(_INHERIT):
        dialect = own or dialect[len(_INHERIT) :]
    chosen = dialect or own or DEFAULT_DIALECT
    if chosen == DEFAULT_DIALECT:
        if own is not None and own != chosen:  # the graph says what it was read as
            raw = replace(raw, attrs={**raw.attrs, "dialect": chosen})
        return raw, _DEFAULT_RULES
    if chosen != ATTRACTOR:
        known = ", ".join(DIALECTS)
        message = f"graph: unknown dialect {chosen!r} (known: {known})"
        issues.append(Issue("error", message, path, raw.line, raw.col))
        return raw, _DEFAULT_RULES
    from engine import attractor as a

    raw, found = a.prepare(raw, path)
    issues += found
    return raw, _Rules(a.GRAPH_KINDS_A, a.NODE_KINDS_A, a.EDGE_KINDS_A, a.handler, True, True)


def _graph_attrs(
    raw: RawGraph, path: str, issues: list[Issue], rules: _Rules = _DEFAULT_RULES
) -> dict[str, Value]:
    attrs, problems = type_attrs(raw.attrs, rules.graph_kinds)
    where = (path, raw.line, raw.col)
    issues.extend(Issue("error", f"graph: {p}", *where) for p in problems)
    if raw.strict:
        issues.append(Issue("warning", "'strict' is ignored: parallel edges are kept", *where))
    return attrs


def _node(
    raw: RawNode,
    path: str,
    default_retry: RetryPolicy,
    issues: list[Issue],
    rules: _Rules = _DEFAULT_RULES,
) -> Node:
    attrs, problems = type_attrs(raw.attrs, rules.node_kinds)
    where = (path, raw.line, raw.col)
    issues.extend(Issue("error", f"node {raw.id!r}: {p}", *where, node=raw.id) for p in problems)
    timeout = attrs.get("timeout")
    return Node(
        id=raw.id,
        handler=rules.handler(raw.id, attrs),
        attrs=MappingProxyType(attrs),
        line=raw.line,
        col=raw.col,
        label=_text(attrs, "label") or raw.id,
        shape=_text(attrs, "shape") or "box",
        retry=_retry(attrs, default_retry, "max_retries"),
        timeout=timeout.total_seconds() or None if isinstance(timeout, timedelta) else None,
        retry_target=_text(attrs, "retry_target"),
        fallback_retry_target=_text(attrs, "fallback_retry_target"),
        blocking=attrs.get("blocking") is True,
    )


def _edge(
    raw: RawEdge, index: int, path: str, issues: list[Issue], rules: _Rules = _DEFAULT_RULES
) -> Edge:
    attrs, problems = type_attrs(raw.attrs, rules.edge_kinds)
    name = f"edge {raw.src} -> {raw.dst}"
    where = (path, raw.line, raw.col)
    if raw.op == "--":
        problems.append("undirected '--' edge (turn graphs use '->')")
    condition = None
    try:
        text = _text(attrs, "condition") or ""
        condition = compile_condition(text, extended=rules.extended_conditions)
    except ConditionSyntaxError as exc:
        problems.append(f"condition {exc.text!r}: {exc.reason} at column {exc.pos + 1}")
    issues.extend(Issue("error", f"{name}: {p}", *where, edge=(raw.src, raw.dst)) for p in problems)
    weight = attrs.get("weight", 0)
    weight = weight if isinstance(weight, int | float) and not isinstance(weight, bool) else 0
    return Edge(
        src=raw.src,
        dst=raw.dst,
        index=index,
        attrs=MappingProxyType(attrs),
        line=raw.line,
        label=_text(attrs, "label") or "",
        condition=condition,
        weight=weight,
    )


def _text(attrs: Mapping[str, Value], key: str) -> str | None:
    value = attrs.get(key)
    return value if isinstance(value, str) else None


def _seconds(attrs: Mapping[str, Value], *keys: str) -> float | None:
    for key in keys:
        value = attrs.get(key)
        if isinstance(value, timedelta):
            return value.total_seconds()
    return None


def _retry(attrs: Mapping[str, Value], base: RetryPolicy, count_key: str) -> RetryPolicy:
    """A retry policy from ``attrs`` (node or graph), unset fields taken from ``base``."""
    count = attrs.get(count_key)
    factor = attrs.get("retry.factor")
    jitter = attrs.get("retry.jitter")
    initial = _seconds(attrs, "retry.initial_delay", "retry.delay")
    max_delay = _seconds(attrs, "retry.max_delay")
    policy = RetryPolicy(
        max_retries=count if isinstance(count, int) else base.max_retries,
        initial_delay=base.initial_delay if initial is None else initial,
        factor=float(factor) if isinstance(factor, float) else base.factor,
        max_delay=base.max_delay if max_delay is None else max_delay,
        jitter=jitter if isinstance(jitter, bool) else base.jitter,
    )
    return NO_RETRY if policy == NO_RETRY else policy
