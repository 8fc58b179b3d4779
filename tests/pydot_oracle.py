"""The reference reading for tests: pydot's own grammar, flattened as turngraph's
reader did before it read DOT itself (with ``\\l`` and ``\\r`` kept, as now).

Slow (pyparsing) and exponential in subgraph nesting: for comparisons on small inputs
only.  It imports ``pydot.dot_parser``, pydot's parser module, so the tests pin the
pydot version they were written against.
"""

from __future__ import annotations

import re
import threading
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyparsing

from engine.errors import DotSyntaxError

with warnings.catch_warnings():  # pydot's grammar uses names pyparsing 3.3 deprecates
    warnings.simplefilter("ignore")
    from pydot.dot_parser import GraphParser

__all__ = ["RawEdge", "RawGraph", "RawNode", "RawSubgraph", "decode_id", "parse_dot"]

RawAttrs = dict[str, str | None]
"""Attribute name → value as written (unquoted, escapes resolved); ``None``: no value."""


@dataclass(slots=True)
class RawNode:
    """A node as read: ``declared`` is False when it is only named in edges."""

    id: str
    attrs: RawAttrs
    line: int = 0
    col: int = 0
    declared: bool = False


@dataclass(frozen=True, slots=True)
class RawEdge:
    """An edge as read, with its operator's position (``--`` recorded in ``op``)."""

    src: str
    dst: str
    attrs: RawAttrs
    line: int = 0
    col: int = 0
    op: str = "->"


@dataclass(frozen=True, slots=True)
class RawSubgraph:
    """A subgraph's own (graph-level) attributes; its nodes are flattened."""

    name: str
    attrs: RawAttrs


@dataclass(slots=True)
class RawGraph:
    """The whole file, read but not yet typed or checked."""

    name: str
    directed: bool
    strict: bool
    attrs: RawAttrs
    nodes: dict[str, RawNode] = field(default_factory=dict)
    edges: list[RawEdge] = field(default_factory=list)
    subgraphs: list[RawSubgraph] = field(default_factory=list)
    line: int = 1
    col: int = 1


# --------------------------------------------------------------------------- values

_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n"}


def _unescape(match: re.Match[str]) -> str:
    ch = match.group(1)
    return _ESCAPES.get(ch, match.group(0))


def decode_id(raw: str) -> str:
    """An id or value as pydot returns it, with quotes stripped and escapes resolved."""
    if len(raw) >= 2 and raw[0] == '"' and raw[-1] == '"':
        body = raw[1:-1].replace("\\\r\n", "").replace("\\\n", "")
        return _ESCAPE.sub(_unescape, body) if "\\" in body else body
    if len(raw) >= 2 and raw[0] == "<" and raw[-1] == ">":
        return raw[1:-1]
    return raw


_UNITS = frozenset({"ms", "s", "m", "h", "d"})
_NUMERAL = re.compile(r"-?(?:\d+\.?\d*|\.\d+)\Z")


def _decode_attrs(attrs: Mapping[str, Any]) -> RawAttrs:
    """Decode keys and values; rejoin ``timeout=2s`` that DOT's lexer splits in two.

    An unquoted ``2s`` is a number followed by a valueless attribute ``s`` to
    Graphviz and pydot alike; a valueless unit right after a bare number is put back.
    """
    out: RawAttrs = {}
    last: str | None = None
    for key, value in attrs.items():
        name = decode_id(str(key))
        if value is None and name in _UNITS and last is not None:
            prev = out[last]
            if prev is not None and _NUMERAL.match(prev):
                out[last] = prev + name
                last = None
                continue
        out[name] = None if value is None else decode_id(str(value))
        last = name
    return out


def _split_port(raw: str) -> tuple[str, str | None]:
    """``"a b":n`` → (``a b``, ``n``): a node reference without and with its port."""
    end = -1
    if raw.startswith('"'):
        i = 1
        while i < len(raw):
            if raw[i] == "\\":
                i += 2
                continue
            if raw[i] == '"':
                end = i
                break
            i += 1
    elif raw.startswith("<"):
        end = raw.rfind(">")
    head, sep, port = raw[end + 1 :].partition(":")
    node = raw[: end + 1] + head
    return decode_id(node), (decode_id(port) if sep else None)


# --------------------------------------------------------------------------- scanner


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # "id", "op", "punct", "error"
    text: str
    line: int
    col: int


_KEYWORDS = frozenset({"strict", "graph", "digraph", "subgraph", "node", "edge"})


class _Scanner:
    """A small DOT lexer used only to find line/column positions (pydot keeps none).

    It mirrors pydot's grammar for comments, strings and HTML ids; it never raises:
    an unterminated string, comment or HTML id becomes an ``error`` token.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.line_start = 0

    def _advance_to(self, end: int) -> None:
        chunk = self.text[self.pos : end]
        newlines = chunk.count("\n")
        if newlines:
            self.line += newlines
            self.line_start = self.pos + chunk.rindex("\n") + 1
        self.pos = end

    def tokens(self) -> Iterator[_Tok]:
        """Every token in order, comments and whitespace skipped."""
        text = self.text
        while self.pos < len(text):
            ch = text[self.pos]
            if ch.isspace():
                self._advance_to(self.pos + 1)
                continue
            end, kind = self._lex_one(ch)
            tok = _Tok(kind, text[self.pos : end], self.line, self.pos - self.line_start + 1)
            self._advance_to(end)
            if kind != "comment":
                yield tok
            if kind == "error":
                return

    def _lex_one(self, ch: str) -> tuple[int, str]:
        text, pos = self.text, self.pos
        two = text[pos : pos + 2]
        if two in ("//", "#") or ch == "#":
            nl = text.find("\n", pos)
            return (len(text) if nl < 0 else nl), "comment"
        if two == "/*":
            close = text.find("*/", pos + 2)
            return (len(text), "error") if close < 0 else (close + 2, "comment")
        if two in ("->", "--"):
            return pos + 2, "op"
        if ch == '"':
            return self._lex_string()
        if ch == "<":
            return self._lex_html()
        if ch.isalnum() or ch in "_.-":
            end = pos + 1
            while end < len(text) and (text[end].isalnum() or text[end] in "_."):
                end += 1
            return end, "id"
        return pos + 1, "punct"

    def _lex_string(self) -> tuple[int, str]:
        text, i = self.text, self.pos + 1
        while i < len(text):
            if text[i] == "\\":
                i += 2
            elif text[i] == '"':
                return i + 1, "id"
            else:
                i += 1
        return len(text), "error"

    def _lex_html(self) -> tuple[int, str]:
        depth, i = 0, self.pos
        while i < len(self.text):
            depth += {"<": 1, ">": -1}.get(self.text[i], 0)
            i += 1
            if depth == 0:
                return i, "id"
        return len(self.text), "error"


@dataclass(slots=True)
class _Positions:
    """Where things are: node statements, first edge mentions, edge operators."""

    declared: dict[str, tuple[int, int]] = field(default_factory=dict)
    mentioned: dict[str, tuple[int, int]] = field(default_factory=dict)
    ops: list[_Tok] = field(default_factory=list)
    graphs: list[_Tok] = field(default_factory=list)
    """The first token of each top-level graph (more than one is an error)."""


def _node_refs(toks: list[_Tok]) -> Iterator[tuple[int, int, str]]:
    """(start, end, node id) of each node reference outside ``[...]`` lists.

    A reference is an id (or ``"a" + "b"`` concatenation) with optional ``:port``
    parts; keywords and the names that follow ``subgraph`` / ``digraph`` are skipped.
    """
    i, n = 0, len(toks)
    while i < n:
        tok = toks[i]
        if tok.kind == "punct" and tok.text == "[":
            while i < n and toks[i].text != "]":
                i += 1
        elif tok.kind == "id" and tok.text.lower() in _KEYWORDS:
            if tok.text.lower() in ("subgraph", "digraph", "graph") and i + 1 < n:
                i += 1 if toks[i + 1].kind == "id" else 0
        elif tok.kind == "id":
            start, value = i, tok.text
            while i + 2 < n and toks[i + 1].text == "+" and toks[i + 2].kind == "id":
                value = '"' + value[1:-1] + toks[i + 2].text[1:-1] + '"'
                i += 2
            while i + 2 < n and toks[i + 1].text == ":" and toks[i + 2].kind == "id":
                i += 2
            yield start, i, decode_id(value)
        i += 1


def _scan(text: str) -> _Positions:
    toks = list(_Scanner(text).tokens())
    found = _Positions()
    depth = 0
    for tok in toks:
        if tok.kind == "op":
            found.ops.append(tok)
        elif tok.text in ("{", "}"):
            depth += 1 if tok.text == "{" else -1
        elif depth == 0 and tok.kind == "id" and tok.text.lower() in ("digraph", "graph"):
            found.graphs.append(tok)
    for start, end, node_id in _node_refs(toks):
        before = toks[start - 1] if start > 0 else None
        after = toks[end + 1] if end + 1 < len(toks) else None
        where = (toks[start].line, toks[start].col)
        if after is not None and after.text == "=":
            continue  # an assignment's key
        if before is not None and before.text == "=":
            continue  # an assignment's value
        if (before is not None and before.kind == "op") or (
            after is not None and after.kind == "op"
        ):
            found.mentioned.setdefault(node_id, where)
        else:
            found.declared.setdefault(node_id, where)
    return found


# --------------------------------------------------------------------------- parsing

_PARSE_LOCK = threading.Lock()
"""pyparsing's grammar objects are not thread-safe."""


def _syntax_error(text: str, path: str, line: int, col: int, reason: str) -> DotSyntaxError:
    lines = text.splitlines()
    source_line = lines[line - 1] if 0 < line <= len(lines) else ""
    return DotSyntaxError(path, line, col, reason, source_line)


def _lex_check(text: str, path: str) -> None:
    """Report unterminated strings, comments and HTML ids where they start."""
    for tok in _Scanner(text).tokens():
        if tok.kind == "error":
            what = {'"': "string", "<": "HTML string"}.get(tok.text[:1], "comment")
            raise _syntax_error(text, path, tok.line, tok.col, f"unterminated {what}")


def _reason(exc: pyparsing.ParseBaseException) -> str:
    found = getattr(exc, "found", None)
    if exc.loc >= len(exc.pstr) or not found:
        return "unexpected end of text (missing '}'?)"
    if "end of text" in exc.msg:
        return f"unexpected {found} after the end of the graph"
    if exc.loc == 0 or "DIGRAPH" in exc.msg:
        return f"expected 'digraph', found {found}"
    return f"unexpected {found}"


def _parse_tree(text: str, path: str) -> list[Any]:
    """pydot's grammar, called so that errors raise instead of printing."""
    _lex_check(text, path)
    try:
        with _PARSE_LOCK:
            return list(GraphParser.parser.parse_string(text, parse_all=True))
    except pyparsing.ParseBaseException as exc:
        raise _syntax_error(text, path, exc.lineno, exc.col, _reason(exc)) from None
    except RecursionError:
        raise _syntax_error(text, path, 1, 1, "nesting too deep") from None
    except Exception as exc:  # a pydot parse action tripping on odd input
        reason = f"cannot read this graph ({type(exc).__name__})"
        raise _syntax_error(text, path, 1, 1, reason) from exc


def parse_dot(text: str, path: str = "<string>") -> RawGraph:
    """Read DOT ``text`` (from ``path``, used in messages) into a :class:`RawGraph`.

    Raises :class:`~engine.errors.DotSyntaxError` if it does not parse or holds
    more than one graph.
    """
    graphs = _parse_tree(text, path)
    where = _scan(text)
    if len(graphs) != 1 or len(where.graphs) > 1:
        tok = where.graphs[1] if len(where.graphs) > 1 else _Tok("id", "", 1, 1)
        raise _syntax_error(text, path, tok.line, tok.col, "only one graph per file")
    return _Flattener(graphs[0], where).run()


# --------------------------------------------------------------------------- flattening


@dataclass(slots=True)
class _Scope:
    node: RawAttrs
    edge: RawAttrs

    def child(self) -> _Scope:
        return _Scope(dict(self.node), dict(self.edge))


def _children(od: Mapping[str, Any]) -> list[tuple[int, str, Mapping[str, Any]]]:
    """A graph's statements in source order (pydot keeps it only in ``sequence``)."""
    items: list[tuple[int, str, Mapping[str, Any]]] = []
    for kind in ("nodes", "edges", "subgraphs"):
        for group in od.get(kind, {}).values():
            items.extend((int(child.get("sequence") or 0), kind, child) for child in group)
    items.sort(key=lambda item: item[0])
    return items


class _Flattener:
    """Walks pydot's nested objects in source order, applying scoped defaults."""

    def __init__(self, dot: Any, where: _Positions) -> None:
        root = dot.obj_dict
        self.root = root
        self.where = where
        self.graph = RawGraph(
            name=decode_id(str(root.get("name") or "")),
            directed=root.get("type") == "digraph",
            strict=bool(root.get("strict")),
            attrs=_decode_attrs(root.get("attributes", {})),
        )
        if where.graphs:
            self.graph.line, self.graph.col = where.graphs[0].line, where.graphs[0].col
        self.ops = 0
        self.ordered: list[tuple[int, RawEdge]] = []
        self.walked: set[int] = set()

    def run(self) -> RawGraph:
        """Flatten the whole graph and return it."""
        self.walk(self.root, _Scope({}, {}), top=True)
        self.graph.edges = [edge for _, edge in sorted(self.ordered, key=lambda p: p[0])]
        return self.graph

    def walk(self, od: Mapping[str, Any], scope: _Scope, *, top: bool = False) -> None:
        """Apply ``od``'s statements in order within ``scope``."""
        own = self.graph.attrs if top else _decode_attrs(od.get("attributes", {}))
        for _, kind, child in _children(od):
            if kind == "subgraphs":
                self.walk(child, scope.child())
            elif kind == "edges":
                self.edge(child, scope)
            elif child.get("name") in ("node", "edge", "graph"):
                target = {"node": scope.node, "edge": scope.edge}.get(child["name"], own)
                target.update(_decode_attrs(child.get("attributes", {})))
            else:
                self.node(child, scope)
        if not top:
            self.graph.subgraphs.append(RawSubgraph(decode_id(str(od.get("name") or "")), own))

    def node(self, od: Mapping[str, Any], scope: _Scope) -> None:
        """A node statement: create the node if new, then apply its attributes."""
        node_id, _ = _split_port(str(od["name"]))
        node = self.ensure(node_id, scope)
        node.declared = True
        if node_id in self.where.declared:
            node.line, node.col = self.where.declared[node_id]
        node.attrs.update(_decode_attrs(od.get("attributes", {})))

    def ensure(self, node_id: str, scope: _Scope) -> RawNode:
        """The node named ``node_id``, created with the defaults in force if new."""
        node = self.graph.nodes.get(node_id)
        if node is None:
            line, col = self.where.declared.get(node_id) or self.where.mentioned.get(
                node_id, (0, 0)
            )
            node = RawNode(node_id, dict(scope.node), line, col)
            self.graph.nodes[node_id] = node
        return node

    def endpoint(self, point: Any, scope: _Scope) -> list[tuple[str, str | None]]:
        """Node ids (with ports) an edge endpoint stands for; walks a subgraph once."""
        if isinstance(point, Mapping):
            if id(point) not in self.walked:
                self.walked.add(id(point))
                self.walk(point, scope.child())
            return [(n, None) for n in _members(point)]
        node_id, port = _split_port(str(point))
        self.ensure(node_id, scope)
        return [(node_id, port)]

    def edge(self, od: Mapping[str, Any], scope: _Scope) -> None:
        """One pydot edge (one ``->`` in the source): one RawEdge per endpoint pair."""
        src_point, dst_point = od["points"]
        sources = self.endpoint(src_point, scope)
        index = self.ops
        self.ops += 1
        op = self.where.ops[index] if index < len(self.where.ops) else _Tok("op", "->", 0, 0)
        targets = self.endpoint(dst_point, scope)
        own = _decode_attrs(od.get("attributes", {}))
        for src, tail in sources:
            for dst, head in targets:
                attrs = {**scope.edge, **own}
                if tail is not None:
                    attrs.setdefault("tailport", tail)
                if head is not None:
                    attrs.setdefault("headport", head)
                edge = RawEdge(src, dst, attrs, op.line, op.col, op.text)
                self.ordered.append((index, edge))


def _members(od: Mapping[str, Any]) -> list[str]:
    """Every node a subgraph names (statements, edge ends, nested subgraphs), in order."""
    seen: dict[str, None] = {}
    for _, kind, child in _children(od):
        if kind == "nodes" and child.get("name") not in ("node", "edge", "graph"):
            seen.setdefault(_split_port(str(child["name"]))[0], None)
        elif kind == "edges":
            for point in child["points"]:
                names = (
                    _members(point) if isinstance(point, Mapping) else [_split_port(str(point))[0]]
                )
                for name in names:
                    seen.setdefault(name, None)
        elif kind == "subgraphs":
            for name in _members(child):
                seen.setdefault(name, None)
    return list(seen)
