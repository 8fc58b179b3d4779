"""Warnings for names that silently break routing: what nothing reads, sets or fills.

A graph can load cleanly and still not do what its author meant: ``max_retires=3``
retries nothing, ``condition="context.input.blockd=true"`` never holds, a template's
``{nosuchkey}`` is printed as written.  :func:`lint_graph` finds these with the
handlers' declarations (:class:`~engine.registry.Declaration`), so each check is
exact rather than a guess:

* **attributes**: a node attribute that no registered handler declares and the engine
  does not read (:data:`ENGINE_NODE_ATTRS`) is reported; so is an edge attribute that
  is neither the engine's (:data:`ENGINE_EDGE_ATTRS`) nor Graphviz's.  Graphviz's own
  attributes (:data:`GRAPHVIZ_ATTRS`: ``label``, ``shape``, ``color``, ``rankdir``...)
  never are.  A graph attribute is reported only when it is close to one the engine
  reads (``max_step``): graph attributes are also where files keep metadata
  (``goal``, ``version``), which no rule should nag about.
* **condition keys**: a key that no node of this graph can set: not ``outcome``,
  ``preferred_label``, ``node.ID.status`` of an existing node, a ``session.*`` key
  (a session's input), nor a key a handler used in this graph declares it writes.
* **template placeholders**: a ``{name}`` in an attribute a handler declares as a
  ``template`` that is neither one of its aliases nor a key something sets.

An attribute read by any registered handler is accepted on every node, because
``node [...]`` defaults put attributes on nodes that do not use them.  Nodes whose
handler declared nothing are not checked, and while one is in a graph the key and
placeholder checks are skipped: such a handler may read or write anything.  Each
warning names the nearest known name when one is close ("did you mean").
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Iterator
from fnmatch import fnmatchcase

from engine.attractor import ATTRACTOR, ATTRS
from engine.conditions import ConditionSyntaxError, condition_keys
from engine.errors import Issue
from engine.graph import Edge, Graph, Node
from engine.registry import Attr, Declaration, HandlerRegistry
from engine.validate import closest

__all__ = [
    "ENGINE_EDGE_ATTRS",
    "ENGINE_GRAPH_ATTRS",
    "ENGINE_KEYS",
    "ENGINE_NODE_ATTRS",
    "GRAPHVIZ_ATTRS",
    "lint_graph",
]

_RETRY_ATTRS = (
    Attr("retry.initial_delay", "duration", "200ms", "wait before the first retry"),
    Attr("retry.delay", "duration", None, "alias of retry.initial_delay"),
    Attr("retry.factor", "number", 2.0, "each further wait is this many times longer"),
    Attr("retry.max_delay", "duration", "30s", "the longest wait"),
    Attr("retry.jitter", "bool", True, "wait a random 50-100% of the delay"),
)

ENGINE_NODE_ATTRS: tuple[Attr, ...] = (
    Attr("handler", "text", None, "the handler's name (else type=, else the shape's, else the id)"),
    Attr("type", "text", None, "the handler's name, when handler= is not set"),
    Attr("shape", "text", "box", "Mdiamond: start, Msquare: exit, diamond: conditional, ..."),
    Attr("label", "text", None, "shown in drawings and traces (default: the id)"),
    Attr(
        "max_retries",
        "int",
        0,
        "retries after a retryable failure (graph default: default_max_retries)",
    ),
    *_RETRY_ATTRS,
    Attr(
        "timeout",
        "duration",
        None,
        "the handler's time limit per attempt (a sync handler then runs in a worker thread,"
        " abandoned past it); 0: none",
    ),
    Attr("retry_target", "text", None, "node to go to when this one fails"),
    Attr("fallback_retry_target", "text", None, "node to go to when retry_target is unset"),
    Attr("blocking", "bool", False, "run a sync handler in a worker thread"),
    Attr(
        "goal_gate",
        "bool",
        False,
        "must have succeeded before the run may exit; else go to retry_target "
        "(at most max_retries times, 3 when unset), else the run fails",
    ),
)
"""Node attributes the engine itself reads (every node may carry them)."""

ENGINE_EDGE_ATTRS: tuple[Attr, ...] = (
    Attr("condition", "text", None, "taken only when it holds (see engine.conditions)"),
    Attr("label", "text", None, "matched against the handler's preferred label"),
    Attr("weight", "int", 0, "higher first among edges that qualify"),
)
"""Edge attributes the engine reads."""

ENGINE_GRAPH_ATTRS: tuple[Attr, ...] = (
    Attr(
        "max_steps",
        "int",
        None,
        "most nodes one run may visit (bounds cycles); a session turn's runs share it",
    ),
    Attr(
        "turn_timeout",
        "duration",
        None,
        "time limit of a whole run (TurnTimeout past it); may only tighten the caller's",
    ),
    Attr("default_max_retries", "int", 0, "max_retries of nodes that do not set it"),
    Attr("retry_target", "text", None, "where an unmet goal gate without its own goes"),
    Attr("dialect", "text", "turngraph", "attractor: read as an Attractor pipeline"),
    *_RETRY_ATTRS,
)
"""Graph attributes the engine reads (``retry.*`` are defaults for every node)."""

ENGINE_KEYS = ("outcome", "preferred_label", "node.*.status", "session.*")
"""Context keys set outside handlers: by the runner after each node (``outcome``,
``preferred_label``, ``node.ID.status``) and by the session before the run
(``session.*``)."""

_GRAPHVIZ_NAMES = """
    _background area arrowhead aspect arrowsize arrowtail bb beautify bgcolor center charset
    class cluster clusterrank color colorscheme comment compound concentrate constraint
    Damping decorate defaultdist dim dimen dir diredgeconstraints distortion dpi
    edgehref edgetarget edgetooltip edgeURL epsilon esep fillcolor fixedsize fontcolor
    fontname fontnames fontpath fontsize forcelabels gradientangle group head_lp
    headclip headhref headlabel headport headtarget headtooltip headURL height href id
    image imagepath imagepos imagescale inputscale K label label_scheme labelangle
    labeldistance labelfloat labelfontcolor labelfontname labelfontsize labelhref
    labeljust labelloc labeltarget labeltooltip labelURL landscape layer layerlistsep
    layers layerselect layersep layout len levels levelsgap lhead lheight linelength lp
    ltail lwidth margin maxiter mclimit mindist minlen mode model mosek newrank nodesep
    nojustify normalize notranslate nslimit nslimit1 oneblock ordering orientation
    outputorder overlap overlap_scaling overlap_shrink pack packmode pad page pagedir
    pencolor penwidth peripheries pin pos quadtree quantum radius rank rankdir ranksep
    ratio rects regular remincross repulsiveforce resolution root rotate rotation
    samehead sametail samplepoints scale searchsize sep shape shapefile showboxes sides
    size skew smoothing sortv splines start style stylesheet tail_lp tailclip tailhref
    taillabel tailport tailtarget tailtooltip tailURL target TBbalance texlbl texmode tooltip
    truecolor URL vertices viewport voro_margin weight width xdotversion xlabel xlp z
    """
GRAPHVIZ_ATTRS = frozenset(_GRAPHVIZ_NAMES.split())
"""Every attribute Graphviz itself knows (graphs, nodes, edges, clusters alike)."""

_GRAPHVIZ_FOLDED = frozenset(a.lower() for a in GRAPHVIZ_ATTRS)
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][\w.]*)\}")


def _did_you_mean(word: str, *pools: Iterable[str], wrap: str = "'{}'") -> str:
    """``"; did you mean 'x'?"`` from the first pool with a close match, else ``""``."""
    for pool in pools:
        match = closest(word, pool)
        if match is not None and match != word:
            return f"; did you mean {wrap.format(match)}?"
    return ""


def _graphviz(name: str) -> bool:
    return name in GRAPHVIZ_ATTRS or name.lower() in _GRAPHVIZ_FOLDED


class _Known:
    """What the registry and the graph make known, gathered once per lint."""

    def __init__(self, graph: Graph, registry: HandlerRegistry) -> None:
        declared = [registry.get(n).declaration for n in registry]
        self.decls: dict[str, Declaration | None] = {
            n: registry.get(n).declaration for n in registry
        }
        self.attr_names = {a.name for d in declared if d for a in d.attrs}
        self.attr_names.update(a.name for a in ENGINE_NODE_ATTRS)
        self.attractor = graph.attrs.get("dialect") == ATTRACTOR
        """Read in the attractor dialect: the spec's attributes are known (each is used
        or deliberately ignored, :data:`engine.attractor.ATTRS`), conditions extended."""
        self.edge_names = frozenset(ATTRS) if self.attractor else frozenset()
        if self.attractor:
            self.attr_names.update(ATTRS)
        self.prefixes = tuple(p for d in declared if d for p in d.attr_prefixes)
        used = [self.decls.get(n.handler) for n in graph.nodes.values()]
        self.open_world = any(d is None for d in used)
        """Some node's handler declared nothing (or is unknown): it may set anything."""
        for node in graph.nodes.values():
            if self.decls.get(node.handler) is None:
                self.attr_names.update(node.attrs)
        self.writes = {*ENGINE_KEYS, *(k for d in used if d for k in d.writes)}
        self.node_ids = set(graph.nodes)

    def sets(self, key: str) -> bool:
        """Whether something in this graph (or the engine, or a session) sets ``key``."""
        if key.startswith("node.") and key.endswith(".status"):
            return key[len("node.") : -len(".status")] in self.node_ids
        return any(fnmatchcase(key, pattern) for pattern in self.writes)

    def set_keys(self) -> list[str]:
        """The keys set in this graph, for suggestions (patterns left out)."""
        return sorted(k for k in self.writes if "*" not in k)


class _Locator:
    """Finds where a name is written in the source, for line:col in warnings.

    A ``Graph`` keeps the line and column of each node and edge, not of each
    attribute; the source text tells the rest.  Without it (or when the name is not
    found) a warning points at its node or edge.
    """

    def __init__(self, source: str | None) -> None:
        self.text = source or ""
        self.starts = [0, *(m.end() for m in re.finditer("\n", self.text))]

    def offset(self, line: int, col: int) -> int:
        if not 0 < line <= len(self.starts):
            return 0
        return self.starts[line - 1] + max(col - 1, 0)

    def position(self, offset: int) -> tuple[int, int]:
        line = bisect.bisect_right(self.starts, offset)
        return line, offset - self.starts[line - 1] + 1

    def attr(self, name: str, line: int, col: int) -> tuple[int, int]:
        """Where ``name=`` is set for the statement at ``line:col``: in the statement's
        own brackets, else in the last default statement before it."""
        if not self.text:
            return line, col
        pattern = re.compile(r'(?<![\w."])"?' + re.escape(name) + r'"?\s*=')
        here = self.offset(line, col)
        found = [m.start() for m in pattern.finditer(self.text)]
        after = next((o for o in found if o >= here), None)
        if after is not None and "]" not in self.text[here:after]:
            return self.position(after)
        before = [o for o in found if o < here]
        return self.position(before[-1]) if before else (line, col)

    def first(self, name: str) -> tuple[int, int]:
        """Where ``name=`` is first set anywhere (``1:1`` when not found): a graph
        attribute may be set in a ``graph [...]`` or a bare ``name=value`` statement
        after any node, so no statement's place bounds the search."""
        pattern = re.compile(r'(?<![\w."])"?' + re.escape(name) + r'"?\s*=')
        found = pattern.search(self.text)
        return (1, 1) if found is None else self.position(found.start())

    def text_after(self, needle: str, line: int, col: int) -> tuple[int, int]:
        """Where ``needle`` is first written at or after ``line:col``."""
        found = self.text.find(needle, self.offset(line, col)) if self.text else -1
        return (line, col) if found < 0 else self.position(found)


def lint_graph(graph: Graph, registry: HandlerRegistry, source: str | None = None) -> list[Issue]:
    """Every warning about names nothing reads, sets or fills, in source order.

    ``source`` is the graph's DOT text; with it each warning points at the name itself
    (else at its node or edge).  Nothing here raises or changes ``graph``.
    """
    known = _Known(graph, registry)
    loc = _Locator(source)
    issues = [*_graph_attr_issues(graph, loc)]
    for node in graph.nodes.values():
        decl = known.decls.get(node.handler)
        if decl is not None:
            issues += _node_attr_issues(graph.path, node, decl, known, loc)
            if not known.open_world:
                issues += _placeholder_issues(graph.path, node, decl, known, loc)
    for edge in graph.edges:
        issues += _edge_attr_issues(graph.path, edge, loc, known.edge_names)
        if not known.open_world:
            issues += _condition_issues(graph.path, edge, known, loc)
    return sorted(issues, key=lambda i: (i.line, i.col))


def _warn_node(path: str, node: Node, message: str, where: tuple[int, int]) -> Issue:
    return Issue("warning", f"node {node.id!r}: {message}", path, *where, node=node.id)


def _warn_edge(path: str, edge: Edge, message: str, where: tuple[int, int]) -> Issue:
    text = f"edge {edge.src} -> {edge.dst}: {message}"
    return Issue("warning", text, path, *where, edge=(edge.src, edge.dst))


def _graph_attr_issues(graph: Graph, loc: _Locator) -> Iterator[Issue]:
    engine = [a.name for a in ENGINE_GRAPH_ATTRS]
    for name in graph.attrs:
        if name in engine or _graphviz(name):
            continue
        hint = _did_you_mean(name, engine)
        if hint:
            message = f"graph: the engine reads no attribute {name!r}{hint}"
            yield Issue("warning", message, graph.path, *loc.first(name))


def _node_attr_issues(
    path: str, node: Node, decl: Declaration, known: _Known, loc: _Locator
) -> Iterator[Issue]:
    own = [a.name for a in (*decl.attrs, *ENGINE_NODE_ATTRS)]
    for name in node.attrs:
        if name in known.attr_names or _graphviz(name) or name.startswith(known.prefixes):
            continue
        hint = _did_you_mean(name, own, known.attr_names, GRAPHVIZ_ATTRS)
        message = f"neither a handler nor the engine reads attribute {name!r}{hint}"
        yield _warn_node(path, node, message, loc.attr(name, node.line, node.col))


def _edge_attr_issues(
    path: str, edge: Edge, loc: _Locator, dialect_names: frozenset[str]
) -> Iterator[Issue]:
    engine = [a.name for a in ENGINE_EDGE_ATTRS]
    for name in edge.attrs:
        if name in engine or name in dialect_names or _graphviz(name):
            continue
        hint = _did_you_mean(name, engine, GRAPHVIZ_ATTRS)
        message = f"attribute {name!r} is read by neither the engine nor Graphviz{hint}"
        yield _warn_edge(path, edge, message, loc.attr(name, edge.line, 1))


def _condition_issues(path: str, edge: Edge, known: _Known, loc: _Locator) -> Iterator[Issue]:
    if edge.condition is None:
        return
    try:
        keys = condition_keys(edge.condition.source, extended=known.attractor)
    except ConditionSyntaxError:  # pragma: no cover - the loader compiled it already
        return
    for key, _ in keys:
        short = key[len("context.") :] if key.startswith("context.") else key
        if known.sets(short) or known.sets(key):
            continue
        prefix = "context." if short != key else ""
        hint = _did_you_mean(short, known.set_keys(), wrap=f"'{prefix}{{}}'")
        message = f"condition reads {key!r}, which nothing sets{hint}"
        yield _warn_edge(path, edge, message, loc.text_after(key, edge.line, 1))


def _placeholder_issues(
    path: str, node: Node, decl: Declaration, known: _Known, loc: _Locator
) -> Iterator[Issue]:
    for attr in decl.attrs:
        value = node.attrs.get(attr.name)
        if attr.type != "template" or not isinstance(value, str):
            continue
        for name in dict.fromkeys(_PLACEHOLDER.findall(value)):
            if name in decl.aliases or known.sets(name):
                continue
            hint = _did_you_mean(name, [*decl.aliases, *known.set_keys()], wrap="'{{{}}}'")
            message = (
                f"{attr.name}: placeholder {{{name}}} is filled by no key "
                f"(it stays as written){hint}"
            )
            where = loc.text_after(f"{{{name}}}", node.line, node.col)
            yield _warn_node(path, node, message, where)
