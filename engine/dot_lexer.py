"""The DOT reader's lexer: tokens, values, limits.

:func:`engine.dot.parse_dot` is the public face; this module holds what its
recursive-descent reader stands on.  The grammar is pydot's (``pydot.dot_parser``),
which is Graphviz's with a few liberties (see :mod:`engine.dot`); it is read here
with one token of lookahead, so every byte is looked at a bounded number of times
whatever the shape of the input.  pydot's pyparsing grammar tries its statement
alternatives in turn and, for a subgraph that is not an edge's endpoint, reads the
whole body once as a would-be endpoint and once more as a statement: twice per
level, so ``2**depth`` reads of the innermost body.  Reading the subgraph once and
then looking at the next token for ``->`` is the same grammar without that cost.

"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass, field

from engine.errors import DotSyntaxError

RawAttrs = dict[str, str | None]

MAX_DEPTH = 64
"""Deepest nesting of subgraphs read; past it :class:`DotLimitError`."""
MAX_CHARS = 64 * 1024 * 1024
"""Longest DOT text read, in characters."""
MAX_EDGES = 2_000_000
"""Most edges one graph may expand to (``{a b} -> {c d}`` is four)."""
MAX_ATTRS = 8_000_000
"""Most attribute values the ``node [...]`` / ``edge [...]`` defaults may be copied into.

Each new node, each edge and each subgraph's scope gets its own copy of the defaults
in force, so a long default list before many nodes grows as their product, not with
the text (``node [a0=1 ... a99999=1]`` then 100,000 nodes is ten billion values)."""


class DotLimitError(DotSyntaxError):
    """The graph is past a size limit (nesting, length, edges); ``line`` says where."""


# --------------------------------------------------------------------------- values

_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n"}


def _unescape(match: re.Match[str]) -> str:
    return _ESCAPES.get(match.group(1), match.group(0))


def decode_id(raw: str) -> str:
    """An id or value as written, with quotes stripped and escapes resolved.

    ``\\"``, ``\\\\`` and ``\\n`` resolve; every other escape, ``\\l`` and ``\\r`` (left- and
    right-justified line ends) included, is kept as written for renderers.
    """
    if raw[:1] not in ('"', "<"):
        return raw
    if len(raw) >= 2 and raw[0] == '"' and raw[-1] == '"':
        body = raw[1:-1].replace("\\\r\n", "").replace("\\\n", "")
        return _ESCAPE.sub(_unescape, body) if "\\" in body else body
    if len(raw) >= 2 and raw[0] == "<" and raw[-1] == ">":
        return raw[1:-1]
    return raw


_UNITS = frozenset({"ms", "s", "m", "h", "d"})
_NUMERAL = re.compile(r"-?(?:\d+\.?\d*|\.\d+)\Z")


def decode_attrs(items: list[tuple[str, str | None]]) -> RawAttrs:
    """Decode ``(key, value)`` pairs in order; rejoin ``timeout=2s`` split in two.

    An unquoted ``2s`` is a number followed by a valueless attribute ``s`` to pydot
    (and Graphviz rejects it): a valueless unit right after a number is put back.
    """
    out: RawAttrs = {}
    last: str | None = None
    for key, value in items:
        name = decode_id(key)
        if value is None and name in _UNITS and last is not None:
            prev = out[last]
            if prev is not None and _NUMERAL.match(prev):
                out[last] = prev + name
                last = None
                continue
        out[name] = None if value is None else decode_id(value)
        last = name
    return out


# --------------------------------------------------------------------------- lexer

# Possessive: a token that fails after a run of blanks must not retry every split of it.
_SPACE = r"(?:[ \t\r\n]++|//[^\n]*+|#[^\n]*+|/\*[^*]*+(?:\*(?!/)[^*]*+)*+\*/)*+"
_SKIP = re.compile(_SPACE)
# Blanks and comments, then one token of any kind (one match per token); a quoted
# string is matched a run of plain characters at a time, not one alternation per
# character (about 20 times faster on long strings); ``id``
# characters are pydot's (letters, digits, ``_``, ``.``) widened to every non-ASCII
# character, as Graphviz's lexer takes any byte >= 0x80.
_TOKEN = re.compile(
    _SPACE + r'(?:(?P<q>"[^"\\]*+(?:\\[\s\S][^"\\]*+)*+")'
    r"|(?P<op>->|--)"
    r"|(?P<neg>-(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?))"
    r"|(?P<id>[A-Za-z0-9_.\x80-\U0010ffff]+)"
    r"|(?P<p>[{}\[\]=;,:+<])"
    r"|(?P<eof>\Z))"
)
_VALUE_NUMBER = re.compile(r"-?[0-9.]+")  # pydot's float_number: tried before an id
_KEYWORDS = frozenset({"strict", "graph", "digraph", "subgraph", "node", "edge"})
_LATIN1 = frozenset({"latin1", "latin-1", "l1", "iso-8859-1", "iso_8859-1", "iso8859-1"})


@dataclass(slots=True)
class Tok:
    kind: str  # q (quoted), op, neg, id, p (punctuation), html, kw, eof
    text: str
    pos: int


@dataclass(slots=True)
class Scope:
    """The ``node [...]`` / ``edge [...]`` defaults in force, and what a subgraph names."""

    node: RawAttrs
    edge: RawAttrs
    own: RawAttrs
    members: dict[str, None] = field(default_factory=dict)

    def child(self) -> Scope:
        """A nested subgraph's scope: the defaults copied, its own attributes empty."""
        return Scope(dict(self.node), dict(self.edge), {})


class Lexer:
    """Tokens on demand from ``text``, with one token of lookahead (``tok``)."""

    def __init__(self, text: str, path: str) -> None:
        self.text = text
        self.path = path
        self.end = len(text)
        self._newlines: list[int] | None = None
        self.next = 0  # where the token after ``tok`` may start
        self.tok = Tok("eof", "", 0)
        self.advance()

    # ------------------------------------------------------------ positions
    def where(self, pos: int) -> tuple[int, int]:
        """1-based (line, column) of offset ``pos``."""
        if self._newlines is None:
            self._newlines = [m.start() for m in re.finditer("\n", self.text)]
        line = bisect_right(self._newlines, pos - 1)
        start = self._newlines[line - 1] + 1 if line else 0
        return line + 1, pos - start + 1

    def error(
        self, pos: int, reason: str, kind: type[DotSyntaxError] = DotSyntaxError
    ) -> DotSyntaxError:
        """A syntax error at offset ``pos``, with its source line."""
        line, col = self.where(pos)
        start = self.text.rfind("\n", 0, pos) + 1
        stop = self.text.find("\n", pos)
        source = self.text[start : stop if stop >= 0 else self.end].rstrip("\r")
        return kind(self.path, line, col, reason, source)

    def unexpected(self) -> DotSyntaxError:
        """The error for the current token, whatever the reader expected."""
        if self.tok.kind == "eof":
            return self.error(self.tok.pos, "unexpected end of text (missing '}'?)")
        return self.error(self.tok.pos, f"unexpected {self.tok.text[:20]!r}")

    # ------------------------------------------------------------ tokens
    def advance(self) -> Tok:
        """Move to the next token; return the one just left."""
        prev = self.tok
        m = _TOKEN.match(self.text, self.next)
        if m is None:
            raise self._lex_error()
        kind = m.lastgroup or "eof"
        word = m.group(kind)
        end = m.end()
        pos = end - len(word)
        if kind == "id":
            if len(word) <= 8 and word.lower() in _KEYWORDS:
                kind = "kw"
        elif word == "<" and kind == "p":
            word = self._html(pos)
            kind = "html"
            end = pos + len(word)
        self.tok = Tok(kind, word, pos)
        self.next = end
        return prev

    def _lex_error(self) -> DotSyntaxError:
        skipped = _SKIP.match(self.text, self.next)
        pos = skipped.end() if skipped else self.next
        if self.text.startswith("/*", pos):
            return self.error(pos, "unterminated comment")
        if self.text[pos] == '"':
            return self.error(pos, "unterminated string")
        return self.error(pos, f"unexpected {self.text[pos]!r}")

    def _html(self, pos: int) -> str:
        depth, i, text = 0, pos, self.text
        while i < self.end:
            ch = text[i]
            depth += 1 if ch == "<" else -1 if ch == ">" else 0
            i += 1
            if depth == 0:
                return text[pos:i]
        raise self.error(pos, "unterminated HTML string")

    def punct(self, char: str) -> bool:
        """Consume ``char`` if it is the current token."""
        if self.tok.text == char and self.tok.kind == "p":
            self.advance()
            return True
        return False

    def expect(self, char: str) -> None:
        """Consume ``char`` or fail."""
        if not self.punct(char):
            raise self.unexpected()

    def keyword(self) -> str | None:
        """The current token's keyword (lower case), if it is one."""
        return self.tok.text.lower() if self.tok.kind == "kw" else None

    def ident(self) -> str | None:
        """An id as pydot returns it (quotes kept; ``"a" + "b"`` joined), or None."""
        tok = self.tok
        if tok.kind in ("id", "neg", "html"):
            self.advance()
            return tok.text
        if tok.kind != "q":
            return None
        self.advance()
        if not (self.tok.kind == "p" and self.tok.text == "+"):
            return _joined(tok.text)
        parts = [_joined(tok.text)[1:-1]]
        while self.punct("+"):
            if self.tok.kind != "q":
                raise self.unexpected()
            parts.append(_joined(self.advance().text)[1:-1])
        return '"' + "".join(parts) + '"'

    def value(self) -> str:
        """The right-hand side of ``=``: pydot's number first, else an id."""
        if self.tok.kind in ("id", "neg") and self.tok.text[:1] in "-.0123456789":
            m = _VALUE_NUMBER.match(self.text, self.tok.pos)
            if m is not None:
                return self._split_token(m.end())
        if self.tok.kind == "kw":
            return self.advance().text
        found = self.ident()
        if found is None:
            raise self.unexpected()
        return found

    def _split_token(self, end: int) -> str:
        """Consume the text up to ``end`` (inside or across the current token)."""
        start = self.tok.pos
        self.next = end
        self.advance()
        return self.text[start:end]


def _joined(quoted: str) -> str:
    """A quoted string with backslash-newline continuations removed (as pydot does)."""
    if "\\" in quoted:
        return quoted.replace("\\\r\n", "").replace("\\\n", "")
    return quoted


def is_latin1(attrs: RawAttrs) -> bool:
    """Whether graph attributes declare ``charset=latin1`` (any of its names)."""
    charset = attrs.get("charset")
    return charset is not None and charset.lower() in _LATIN1
