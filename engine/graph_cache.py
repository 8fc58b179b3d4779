"""Compiled graphs on disk, so a process that reads a graph seen before never parses it.

:func:`engine.load_graph` takes ``cache_dir=``; the command line passes
``<data dir>/graph-cache`` (the engine does not know where the data directory is).
An entry is the compiled :class:`~engine.graph.Graph` as JSON, named by a hash of
the DOT text's SHA-256 and of the reader's own source (a new reader never serves an
old reading).  Nothing but typed data is stored: no pickle, no code.  Conditions are
stored as the text written and compiled again on load.

An entry is never trusted blindly: it is decoded against a strict schema
(:mod:`msgspec`), must name the digest it was asked for, and must hold together
(the start, exits and every edge's ends are nodes; every condition compiles).  An
entry that fails any check is ignored; the graph is built from the text again and
the entry rewritten.  Writers put a whole file in place with a unique temporary file
and :func:`os.replace`, so concurrent writers and readers only ever see whole
entries.  A cache that cannot be written (read-only, full disk) is skipped silently:
it only saves time.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from datetime import timedelta
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Literal

import msgspec

from engine.conditions import ConditionSyntaxError, compile_condition
from engine.errors import Issue
from engine.graph import NO_RETRY, Condition, Edge, Graph, Node, RetryPolicy, Value

__all__ = ["FORMAT", "MAX_ENTRIES", "MAX_ENTRY_BYTES", "entry_path", "load_entry", "store_entry"]

FORMAT = 1
"""Bumped whenever the entry layout changes."""
MAX_ENTRIES = 256
"""Entries kept; writing one more removes the least recently written."""
MAX_ENTRY_BYTES = 256 * 1024 * 1024
"""Largest entry read; a bigger file is ignored unread."""

_READER_MODULES = (
    "dot.py",
    "dot_lexer.py",
    "loader.py",
    "validate.py",
    "conditions.py",
    "attractor.py",
    "stylesheet.py",
)
_Val = str | int | float | bool | list[int]  # a timedelta is [days, seconds, microseconds]


class _Retry(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    max_retries: int
    initial_delay: float
    factor: float
    max_delay: float
    jitter: bool


class _Node(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    id: str
    handler: str
    attrs: dict[str, _Val]
    line: int
    col: int
    label: str
    shape: str
    retry: _Retry
    timeout: float | None
    retry_target: str | None
    fallback_retry_target: str | None
    blocking: bool


class _Edge(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    src: str
    dst: str
    attrs: dict[str, _Val]
    line: int
    label: str
    weight: int | float
    condition: str | None


class _Issue(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    severity: Literal["error", "warning"]
    message: str
    line: int
    col: int
    node: str | None
    edge: tuple[str, str] | None


class _Entry(msgspec.Struct, forbid_unknown_fields=True):
    format: int
    digest: str
    name: str
    attrs: dict[str, _Val]
    nodes: list[_Node]
    edges: list[_Edge]
    start: str
    exits: list[str]
    warnings: list[_Issue]
    max_steps: int | None
    default_retry: _Retry


_DECODER = msgspec.json.Decoder(_Entry)
_ENCODER = msgspec.json.Encoder()


@cache
def _reader_hash() -> str:
    """A hash of the modules that decide what a graph compiles to."""
    here = Path(__file__).parent
    h = hashlib.sha256(str(FORMAT).encode())
    for name in _READER_MODULES:
        h.update((here / name).read_bytes())
    return h.hexdigest()[:16]


def entry_path(directory: str | os.PathLike[str], digest: str) -> Path:
    """Where the entry for DOT text with SHA-256 ``digest`` lives."""
    return Path(directory) / f"{_reader_hash()}-{digest}.json"


# --------------------------------------------------------------------------- reading


def load_entry(directory: str | os.PathLike[str], digest: str, path: str) -> Graph | None:
    """The cached graph for ``digest``, shown as ``path``; None if absent or bad."""
    try:
        data = _read_regular(entry_path(directory, digest))
        if data is None:
            return None
        entry = _DECODER.decode(data)
        return _graph(entry, digest, path)
    except (OSError, OverflowError, msgspec.ValidationError, msgspec.DecodeError, _BadEntry):
        return None


def _read_regular(entry: Path) -> bytes | None:
    """The bytes of ``entry`` if it is a regular file no bigger than :data:`MAX_ENTRY_BYTES`.

    Only :func:`store_entry` writes here, and only regular files: a symlink, FIFO or
    device put in its place (``/dev/zero``, a pipe nobody writes to) is ignored
    instead of read forever or waited on.
    """
    fd = os.open(entry, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_ENTRY_BYTES:
            return None
        return f.read(MAX_ENTRY_BYTES + 1)


class _BadEntry(Exception):
    """An entry that decodes but does not hold together."""


def _value(v: _Val) -> Value:
    if isinstance(v, list):
        if len(v) != 3:
            raise _BadEntry("timedelta")
        return timedelta(days=v[0], seconds=v[1], microseconds=v[2])
    return v


def _attrs(raw: dict[str, _Val]) -> MappingProxyType[str, Value]:
    return MappingProxyType({k: _value(v) for k, v in raw.items()})


def _retry(r: _Retry) -> RetryPolicy:
    policy = RetryPolicy(r.max_retries, r.initial_delay, r.factor, r.max_delay, r.jitter)
    return NO_RETRY if policy == NO_RETRY else policy


def _condition(source: str | None, extended: bool) -> Condition | None:
    try:
        return compile_condition(source, extended=extended) if source else None
    except ConditionSyntaxError:
        raise _BadEntry("condition") from None


def _graph(entry: _Entry, digest: str, path: str) -> Graph:
    if entry.format != FORMAT or entry.digest != digest:
        raise _BadEntry("not this graph")
    nodes = {
        n.id: Node(
            n.id, n.handler, _attrs(n.attrs), n.line, n.col, n.label, n.shape, _retry(n.retry),
            n.timeout, n.retry_target, n.fallback_retry_target, n.blocking,
        )
        for n in entry.nodes
    }  # fmt: skip
    # The attractor dialect's conditions also take its word operators (contains...).
    extended = entry.attrs.get("dialect") == "attractor"
    edges = tuple(
        Edge(
            e.src, e.dst, i, _attrs(e.attrs), e.line, e.label, e.weight,
            _condition(e.condition, extended),
        )
        for i, e in enumerate(entry.edges)
    )  # fmt: skip
    ends = {e.src for e in edges} | {e.dst for e in edges} | {entry.start, *entry.exits}
    if len(nodes) != len(entry.nodes) or not ends <= nodes.keys():
        raise _BadEntry("dangling")
    return Graph(
        name=entry.name,
        path=path,
        source_hash=digest,
        attrs=_attrs(entry.attrs),
        nodes=MappingProxyType(nodes),
        edges=edges,
        start=entry.start,
        exits=frozenset(entry.exits),
        warnings=tuple(
            Issue(i.severity, i.message, path, i.line, i.col, i.node, i.edge)
            for i in entry.warnings
        ),
        max_steps=entry.max_steps,
        default_retry=_retry(entry.default_retry),
    )


# --------------------------------------------------------------------------- writing


def _raw(v: Value) -> _Val:
    if isinstance(v, timedelta):
        return [v.days, v.seconds, v.microseconds]
    return v


def _raw_retry(r: RetryPolicy) -> _Retry:
    return _Retry(r.max_retries, r.initial_delay, r.factor, r.max_delay, r.jitter)


def _entry(graph: Graph) -> _Entry:
    return _Entry(
        format=FORMAT,
        digest=graph.source_hash,
        name=graph.name,
        attrs={k: _raw(v) for k, v in graph.attrs.items()},
        nodes=[
            _Node(
                n.id, n.handler, {k: _raw(v) for k, v in n.attrs.items()}, n.line, n.col,
                n.label, n.shape, _raw_retry(n.retry), n.timeout, n.retry_target,
                n.fallback_retry_target, n.blocking,
            )
            for n in graph.nodes.values()
        ],
        edges=[
            _Edge(
                e.src, e.dst, {k: _raw(v) for k, v in e.attrs.items()}, e.line, e.label,
                e.weight, e.condition.source if e.condition else None,
            )
            for e in graph.edges
        ],
        start=graph.start,
        exits=sorted(graph.exits),
        warnings=[
            _Issue(i.severity, i.message, i.line, i.col, i.node, i.edge) for i in graph.warnings
        ],
        max_steps=graph.max_steps,
        default_retry=_raw_retry(graph.default_retry),
    )  # fmt: skip


def store_entry(directory: str | os.PathLike[str], graph: Graph) -> None:
    """Write ``graph``'s entry atomically (a unique temporary file, then a rename)."""
    try:
        data = _ENCODER.encode(_entry(graph))
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target := entry_path(directory, graph.source_hash))
        except BaseException:
            os.unlink(tmp)
            raise
        _prune(Path(directory), target)
    except (OSError, TypeError, ValueError, msgspec.EncodeError):
        return  # the cache only saves time; a graph it cannot hold is read next time


def _prune(directory: Path, keep: Path) -> None:
    """Keep the newest :data:`MAX_ENTRIES` entries, ``keep`` (just written) among them."""
    entries = [p for p in directory.iterdir() if p.suffix == ".json" and p.name[0] != "."]
    if len(entries) <= MAX_ENTRIES:
        return
    others = sorted((p for p in entries if p != keep), key=lambda p: p.stat().st_mtime_ns)
    for stale in others[: len(entries) - MAX_ENTRIES]:
        stale.unlink(missing_ok=True)
