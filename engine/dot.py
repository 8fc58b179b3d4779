"""Reading DOT: one linear pass, no backtracking, nothing imported but the stdlib.

:func:`parse_dot` turns DOT text into a :class:`RawGraph`: plain data, every value
still a string (``None`` for a valueless attribute such as ``[flag]``), every node
and edge located in the source by line and column.  Typing values, resolving
handlers and checking rules happen later (:mod:`engine.loader`,
:mod:`engine.validate`); this module only reads.

The grammar is pydot's (which reads what Graphviz reads, with the liberties below),
read by :mod:`engine.dot_lexer` with one token of lookahead: time grows linearly with
the text whatever its shape (pydot's pyparsing grammar re-reads a subgraph body
twice per level of nesting, and pays hundreds of microseconds per token).  The
tests hold the reader to pydot's own reading and to Graphviz's on 400+ real files.

The dialect is Graphviz's, read faithfully:

* **Quoting.** ``"quoted ids"`` lose their quotes; ``"a" + "b"`` concatenates;
  ``<html>`` ids lose their outer angle brackets and are kept verbatim.  An unquoted
  number followed by a unit (``timeout=2s``, which DOT's lexer splits into ``2`` and
  a valueless ``s``) is read back as one value, ``2s``.  In quoted
  strings ``\\"`` is ``"``, ``\\\\`` is a backslash, ``\\n`` is a newline, a backslash
  before a line break joins the lines, and any other escape is kept as written:
  ``\\l`` and ``\\r`` (left- and right-justified line ends) for renderers, ``\\N``,
  ``\\G``...  Unquoted ids are taken as written; ``-1`` and ``-.5`` are ids too.
* **Attribute lists.** ``[a=1, b=2]``, ``[a=1; b=2]`` or ``[a=1 b=2]``; a valueless
  ``[flag]`` is read (pydot reads it; Graphviz refuses it).
* **Comments.** ``// ...``, ``# ...`` (to the end of the line) and ``/* ... */``.
* **Default statements.** ``node [...]`` and ``edge [...]`` apply to the nodes and
  edges created *after* them in the same scope (a subgraph and anything nested in
  it); a later ``node [...]`` does not change nodes that already exist, exactly as
  Graphviz.  ``graph [...]`` and ``key=value`` statements at the top level are the
  graph's attributes (the later statement wins, as in Graphviz); inside a
  subgraph they belong to that subgraph (:attr:`RawGraph.subgraphs`) and do not
  flow into its nodes.
* **Subgraphs** (named, ``cluster_*`` or anonymous ``{ ... }``, nested to any depth)
  are flattened: their nodes and edges join the graph, with the defaults in force
  where they were written.
* **Nodes.** A node's attributes are the ``node [...]`` defaults in force where it
  first appears, updated by every later statement that names it.  A node named only
  in an edge exists (it is "implied") with those defaults.  Ports (``a:out``) are
  not part of a node's id; on edges they become ``tailport`` / ``headport``.
* **Edges.** ``a -> b -> c [x=1]`` is two edges, each with ``x=1``;
  ``a -> {b c}`` is an edge to each node of the subgraph.  Several edges between the
  same two nodes stay distinct.  An edge's attributes are the ``edge [...]`` defaults
  in force, then its own.  Edges keep source order.
* **Graph kind.** Only ``digraph`` graphs are turn graphs; ``graph`` (undirected)
  and ``--`` edges are reported by validation, not here.  ``strict`` is recorded.

* **Keywords** (``graph``, ``node``, ``edge``, ``subgraph``, ``strict``, ``digraph``,
  any case) are keywords, not node names, as in Graphviz (pydot takes them as ids).

A syntax error raises :class:`~engine.errors.DotSyntaxError` with the line, column
and source line; nothing is ever printed.  Past :data:`MAX_DEPTH` nested subgraphs,
:data:`MAX_CHARS` characters, :data:`MAX_EDGES` edges or :data:`MAX_ATTRS` copied
default values, :class:`DotLimitError` (a ``DotSyntaxError``) names where, before
building what is past the limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.dot_lexer import (
    MAX_ATTRS,
    MAX_CHARS,
    MAX_DEPTH,
    MAX_EDGES,
    DotLimitError,
    Lexer,
    Scope,
    Tok,
    decode_attrs,
    decode_id,
    is_latin1,
)

__all__ = [
    "MAX_ATTRS",
    "MAX_CHARS",
    "MAX_DEPTH",
    "MAX_EDGES",
    "DotLimitError",
    "RawEdge",
    "RawGraph",
    "RawNode",
    "RawSubgraph",
    "decode_id",
    "is_latin1",
    "parse_dot",
]

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


@dataclass(slots=True)
class RawEdge:
    """An edge as read, with its operator's position (``--`` recorded in ``op``).

    Not frozen: a graph may hold millions, and a frozen dataclass is slower to make.
    """

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


# --------------------------------------------------------------------------- reading


def parse_dot(text: str, path: str = "<string>") -> RawGraph:
    """Read DOT ``text`` (from ``path``, used in messages) into a :class:`RawGraph`.

    Raises :class:`~engine.errors.DotSyntaxError` if it does not parse or holds more
    than one graph, and :class:`DotLimitError` (a subclass) past :data:`MAX_DEPTH`,
    :data:`MAX_CHARS` or :data:`MAX_EDGES`.
    """
    if len(text) > MAX_CHARS:
        raise DotLimitError(path, 1, 1, f"graph text longer than {MAX_CHARS} characters")
    if text.startswith("\ufeff"):
        text = text[1:]
    return _Reader(Lexer(text, path)).graph()


_DEFAULTS = frozenset({"node", "edge", "graph"})


class _Reader:
    """Recursive descent over :class:`Lexer` tokens, flattening as it goes."""

    def __init__(self, lex: Lexer) -> None:
        self.lex = lex
        self.raw = RawGraph("", True, False, {})
        self.edges: list[tuple[int, RawEdge]] = []
        self.ops = 0
        self.copied = 0  # attribute values copied from defaults, bounded by MAX_ATTRS
        self.depth = 0
        self.sorted = True

    def graph(self) -> RawGraph:
        """``[strict] (graph|digraph) [ID] { stmts }``, then nothing but another graph."""
        lex, raw = self.lex, self.raw
        if lex.keyword() == "strict":
            lex.advance()
            raw.strict = True
        kind = lex.keyword()
        if kind not in ("graph", "digraph"):
            found = repr(lex.tok.text[:20]) if lex.tok.kind != "eof" else "end of text"
            raise lex.error(lex.tok.pos, f"expected 'digraph', found {found}")
        raw.line, raw.col = lex.where(lex.tok.pos)
        raw.directed = kind == "digraph"
        lex.advance()
        name = lex.ident()
        raw.name = decode_id(name) if name is not None else ""
        scope = Scope({}, {}, raw.attrs)
        self.body(scope)
        lex.punct(";")
        if lex.tok.kind != "eof":
            if lex.keyword() in ("strict", "graph", "digraph"):
                raise lex.error(lex.tok.pos, "only one graph per file")
            raise lex.error(
                lex.tok.pos, f"unexpected {lex.tok.text[:20]!r} after the end of the graph"
            )
        if not self.sorted:
            self.edges.sort(key=lambda pair: pair[0])
        raw.edges = [edge for _, edge in self.edges]
        return raw

    def body(self, scope: Scope) -> None:
        """``{ stmt [;] ... }``: the statements of a graph or subgraph."""
        lex = self.lex
        open_at = lex.tok.pos
        lex.expect("{")
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise lex.error(open_at, f"subgraphs nested deeper than {MAX_DEPTH}", DotLimitError)
        while not lex.punct("}"):
            if lex.tok.kind == "eof":
                raise lex.unexpected()
            self.statement(scope)
            lex.punct(";")
        self.depth -= 1

    def statement(self, scope: Scope) -> None:
        """One statement: default, assignment, subgraph, node or edge."""
        lex = self.lex
        kw = lex.keyword()
        if kw in _DEFAULTS:
            lex.advance()
            if not (lex.tok.kind == "p" and lex.tok.text == "["):
                raise lex.unexpected()
            target = {"node": scope.node, "edge": scope.edge}.get(kw or "", scope.own)
            target.update(self.attr_lists())
            return
        if kw == "subgraph" or (lex.tok.kind == "p" and lex.tok.text == "{"):
            members = self.subgraph(scope)
            self.after_endpoint(scope, [(m, None) for m in members])
            return
        start = lex.tok.pos
        first = lex.ident()
        if first is None:
            raise lex.unexpected()
        if lex.punct("="):
            scope.own[decode_id(first)] = decode_id(lex.value())
            return
        node_id, port = self.port(first)
        if lex.tok.kind == "op":
            self.ensure(node_id, start, scope)
            self.after_endpoint(scope, [(node_id, port)])
            return
        node = self.ensure(node_id, start, scope)
        if not node.declared:
            node.declared = True
            node.line, node.col = lex.where(start)
        if lex.tok.kind == "p" and lex.tok.text == "[":
            node.attrs.update(self.attr_lists())

    def subgraph(self, scope: Scope) -> list[str]:
        """``[subgraph [ID]] { ... }``: read in a child scope; return the nodes it names."""
        lex = self.lex
        name = None
        if lex.keyword() == "subgraph":
            lex.advance()
            name = lex.ident()
        self.copy(len(scope.node) + len(scope.edge), lex.tok.pos)
        inner = scope.child()
        self.body(inner)
        self.raw.subgraphs.append(RawSubgraph(decode_id(name or ""), inner.own))
        scope.members.update(inner.members)
        return list(inner.members)

    def port(self, first: str) -> tuple[str, str | None]:
        """``id[:port[:compass]]`` after its first id: (node id, port or None)."""
        lex = self.lex
        if lex.tok.text != ":":
            return decode_id(first), None
        parts = [first]
        while len(parts) < 3 and lex.punct(":"):
            part = lex.ident()
            if part is None:
                raise lex.unexpected()
            parts.append(part)
        return decode_id(first), (decode_id(":".join(parts[1:])) if len(parts) > 1 else None)

    def endpoint(self, scope: Scope, op: Tok) -> list[tuple[str, str | None]]:
        """The end of an edge after ``op``: a node reference or a subgraph."""
        lex = self.lex
        if lex.keyword() == "subgraph" or (lex.tok.kind == "p" and lex.tok.text == "{"):
            return [(m, None) for m in self.subgraph(scope)]
        start = lex.tok.pos
        first = lex.ident()
        if first is None:
            found = repr(lex.tok.text[:20]) if lex.tok.kind != "eof" else "the end of the text"
            raise lex.error(op.pos, f"expected a node or subgraph after {op.text!r}, found {found}")
        node_id, port = self.port(first)
        self.ensure(node_id, start, scope)
        return [(node_id, port)]

    def after_endpoint(self, scope: Scope, first: list[tuple[str, str | None]]) -> None:
        """Whatever follows a first endpoint: ``-> ...`` makes it an edge statement."""
        lex = self.lex
        ends = [first]
        ops = []
        while lex.tok.kind == "op":
            ops.append(lex.advance())
            ends.append(self.endpoint(scope, ops[-1]))
        if not ops:
            return
        own = self.attr_lists() if lex.tok.kind == "p" and lex.tok.text == "[" else {}
        base = {**scope.edge, **own}
        for i, op in enumerate(ops):
            index = self.ops
            self.ops += 1
            if self.edges and self.edges[-1][0] > index:
                self.sorted = False
            pairs = len(ends[i]) * len(ends[i + 1])
            # Checked before expanding: one `{...} -> {...}` can be a product of millions.
            if len(self.edges) + pairs > MAX_EDGES:
                raise lex.error(op.pos, f"more than {MAX_EDGES} edges", DotLimitError)
            self.copy(pairs * len(base), op.pos)
            line, col = lex.where(op.pos)
            for src, tail in ends[i]:
                for dst, head in ends[i + 1]:
                    attrs = dict(base)
                    if tail is not None:
                        attrs.setdefault("tailport", tail)
                    if head is not None:
                        attrs.setdefault("headport", head)
                    self.edges.append((index, RawEdge(src, dst, attrs, line, col, op.text)))

    def ensure(self, node_id: str, start: int, scope: Scope) -> RawNode:
        """The node named ``node_id``, created with the defaults in force if new."""
        scope.members[node_id] = None
        node = self.raw.nodes.get(node_id)
        if node is None:
            self.copy(len(scope.node), start)
            line, col = self.lex.where(start)
            node = RawNode(node_id, dict(scope.node), line, col)
            self.raw.nodes[node_id] = node
        return node

    def copy(self, values: int, pos: int) -> None:
        """Count ``values`` default values about to be copied (at ``pos``) against MAX_ATTRS."""
        self.copied += values
        if self.copied > MAX_ATTRS:
            reason = f"defaults copied into more than {MAX_ATTRS} attribute values"
            raise self.lex.error(pos, reason, DotLimitError)

    def attr_lists(self) -> RawAttrs:
        """``[k=v, k2; flag] [...]``: every list's items, decoded, in order."""
        lex = self.lex
        items: list[tuple[str, str | None]] = []
        while lex.punct("["):
            while not lex.punct("]"):
                key = lex.ident() if lex.tok.kind != "kw" else lex.advance().text
                if key is None:
                    raise lex.unexpected()
                items.append((key, lex.value() if lex.punct("=") else None))
                if not lex.punct(","):
                    lex.punct(";")
        return decode_attrs(items)
