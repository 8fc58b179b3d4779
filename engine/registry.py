"""Name → handler, as an explicit object handed to the engine (never a module global).

A handler may *declare* what it uses (:class:`Declaration`): the node attributes it
reads (:class:`Attr`: name, type, default, doc), the context keys it reads and writes,
the preferred labels it returns.  Declarations are made once, at registration, and
cost nothing at run time; ``validate`` uses them to catch typos exactly
(:mod:`engine.lint`) and the reference pages are generated from them.

A new registry already knows the structural handlers ``start``, ``exit``, ``done``
and ``conditional`` (no-ops: routing happens on their edges), and the fan-out and
fan-in ``parallel`` and ``parallel.fan_in`` (the engine runs their branches) and the
human gate ``wait.human`` (the engine pauses at it), so a
custom graph needs no boilerplate; registering one of those names replaces the default without
``replace=True``.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from engine.gates import GATE_HANDLERS, human_gate
from engine.graph import Node, Value
from engine.outcome import Outcome

__all__ = [
    "STRUCTURAL",
    "Attr",
    "Declaration",
    "Handler",
    "HandlerRegistry",
    "HandlerResult",
    "HandlerSpec",
]

HandlerResult = Outcome | Mapping[str, Any] | None
"""A handler returns an Outcome, a mapping of context updates (success), or None (success)."""

Handler = Callable[[Node, Mapping[str, Any]], "HandlerResult | Awaitable[HandlerResult]"]
"""``(node, context) -> Outcome | Mapping | None``, plain or ``async``."""

H = TypeVar("H", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class Attr:
    """A node attribute a handler reads.

    ``type`` is what the value must be, as the docs show it: ``int``, ``bool``,
    ``text``, ``duration``, ``number``, or ``template`` (text whose ``{placeholders}``
    are filled from the context, which ``validate`` checks).  ``default`` is the value
    used when the attribute is absent (``None``: no default).
    """

    name: str
    type: str = "text"
    default: Value | None = None
    doc: str = ""


@dataclass(frozen=True, slots=True)
class Declaration:
    """What a handler uses, declared once when it is registered.

    * ``attrs``: the node attributes it reads; ``attr_prefixes``: families of them
      (``"arg."`` for ``arg.NAME=...``);
    * ``reads`` / ``writes``: context keys (``"llm.text"``); a key ending in ``.*``
      stands for every key under it;
    * ``labels``: the preferred labels it may return (unconditional edges route on them);
    * ``aliases``: short placeholder names its templates accept (``{text}`` →
      ``llm.text``);
    * ``summary``: one paragraph for the reference page.
    """

    summary: str = ""
    attrs: tuple[Attr, ...] = ()
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    aliases: Mapping[str, str] = field(default_factory=dict)
    attr_prefixes: tuple[str, ...] = ()

    def attr(self, name: str) -> Attr | None:
        """The declared attribute ``name``, or None."""
        return next((a for a in self.attrs if a.name == name), None)


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """A registered handler and how to call it (decided once, at registration)."""

    name: str
    fn: Handler
    is_async: bool
    blocking: bool = False
    """A sync handler that blocks (I/O, heavy CPU): run it in a worker thread."""
    declaration: Declaration | None = None
    """What the handler reads and writes; None when it declared nothing (then
    ``validate`` checks nothing about its nodes' attributes or keys)."""


def _noop(node: Node, context: Mapping[str, Any]) -> None:
    """Succeed without changing the context."""
    return None


STRUCTURAL = Declaration(
    summary="Does nothing and succeeds: marks its place in the graph (``start``: "
    "``shape=Mdiamond``; ``exit``/``done``: ``shape=Msquare``; ``conditional``: "
    "``shape=diamond``, a router whose edges carry the conditions)."
)
"""The declaration of the structural no-op handlers every registry starts with."""

_STRUCTURAL_NAMES = ("start", "exit", "done", "conditional")

PARALLEL = Declaration(
    summary="A fan-out (``shape=component``): the engine runs each outgoing edge's target "
    "as a branch, concurrently, on its own copy-on-write view of the context, until "
    "every branch reaches the one fan-in (``shape=tripleoctagon``).  A branch may hold "
    "a fan-out of its own, joined at its own fan-in inside the branch.",
    attrs=(Attr("max_parallel", "int", None, "at most this many branches at once; default all"),),
)
"""The fan-out's declaration: the engine itself runs its branches (:mod:`engine.parallel`)."""

FAN_IN = Declaration(
    summary="A fan-in (``shape=tripleoctagon``): where a fan-out's branches join.  "
    "``join`` says when the wait ends (the other branches are cancelled), ``merge`` "
    "how the branches' writes reach the context.",
    attrs=(
        Attr(
            "join",
            "text",
            "wait_all",
            "wait_all: every branch must succeed; first_success: the first to succeed "
            "wins; quorum=N: N successes",
        ),
        Attr(
            "merge",
            "text",
            None,
            "last_writer: later branches (edge order) win; list: a list per key; "
            "unset: two branches writing one key fail the join",
        ),
    ),
)
"""The fan-in's declaration (its ``timeout`` bounds the wait for the branches)."""

SUBGRAPH = Declaration(
    summary="Runs another graph as one step (a node with ``graph=``): the child sees "
    "the mapped ``inputs`` and the ``session.*`` values; the mapped ``outputs`` are the "
    "node's updates; its nodes are traced as ``node/child``.",
    attrs=(
        Attr("graph", "text", None, "the DOT file, relative to this graph's file"),
        Attr("inputs", "text", None, 'keys passed in: "a,b=c" (child b gets parent c)'),
        Attr("outputs", "text", None, 'keys passed out: "reply,x=y" (parent x gets child y)'),
    ),
)
"""A sub-graph node's declaration (the engine runs the child: :mod:`engine.subgraphs`)."""

HUMAN = Declaration(
    summary="A human gate (``shape=hexagon``): the turn pauses here until someone "
    "answers with one of its outgoing edges' labels (``session.answer``); the walk then "
    "follows that edge.",
    attrs=(
        Attr("question", "text", None, "what to ask; default: the node's label"),
        Attr(
            "default",
            "text",
            None,
            "the choice taken when ``timeout`` passes (on time in a process holding the "
            "session open; else on its next use)",
        ),
    ),
    writes=("node.*",),
)
"""A human gate's declaration (the engine pauses at it: :mod:`engine.gates`)."""

_ENGINE_HANDLERS = {"parallel": PARALLEL, "parallel.fan_in": FAN_IN, "subgraph": SUBGRAPH}


def _is_async(fn: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - callable objects with async __call__
    return call is not None and inspect.iscoroutinefunction(call)


class HandlerRegistry:
    """Maps handler names to callables.

    ::

        registry = HandlerRegistry()

        @registry.handler("recall")
        async def recall(node: Node, context: Mapping[str, Any]) -> Outcome: ...

    Registering a name twice is an error unless ``replace=True``: silently shadowing a
    built-in is how pipelines break without anyone noticing.  The structural no-ops a
    registry starts with (``start``, ``exit``, ``done``, ``conditional``) are the
    exception: they are placeholders, replaced by the first handler registered under
    their name.  ``declares`` tells ``validate`` and the docs what the handler uses.
    """

    __slots__ = ("_defaults", "_specs")

    def __init__(self, handlers: Mapping[str, Handler] | None = None) -> None:
        self._specs: dict[str, HandlerSpec] = {
            n: HandlerSpec(n, _noop, False, declaration=STRUCTURAL) for n in _STRUCTURAL_NAMES
        }
        for name, declared in _ENGINE_HANDLERS.items():
            self._specs[name] = HandlerSpec(name, _noop, False, declaration=declared)
        for name in sorted(GATE_HANDLERS):
            self._specs[name] = HandlerSpec(name, human_gate, False, declaration=HUMAN)
        self._defaults: set[str] = {*_STRUCTURAL_NAMES, *_ENGINE_HANDLERS, *GATE_HANDLERS}
        for name, fn in (handlers or {}).items():
            self.register(name, fn)

    def register(
        self,
        name: str,
        fn: Handler,
        *,
        blocking: bool = False,
        replace: bool = False,
        declares: Declaration | None = None,
    ) -> None:
        """Register ``fn`` under ``name``, with what it ``declares`` to use."""
        if not name or not isinstance(name, str):
            raise ValueError(f"handler name must be a non-empty string, not {name!r}")
        if name in self._specs and not replace and name not in self._defaults:
            raise ValueError(f"handler {name!r} is already registered (pass replace=True)")
        if not callable(fn):
            raise TypeError(f"handler {name!r} must be callable, not {type(fn).__name__}")
        self._defaults.discard(name)
        self._specs[name] = HandlerSpec(name, fn, _is_async(fn), blocking, declares)

    def handler(
        self,
        name: str | None = None,
        *,
        blocking: bool = False,
        replace: bool = False,
        declares: Declaration | None = None,
    ) -> Callable[[H], H]:
        """Decorator form of :meth:`register`; the name defaults to the function's."""

        def deco(fn: H) -> H:
            self.register(
                name or fn.__name__, fn, blocking=blocking, replace=replace, declares=declares
            )
            return fn

        return deco

    def get(self, name: str) -> HandlerSpec:
        """The spec for ``name``; ``KeyError`` if unknown."""
        return self._specs[name]

    def copy(self) -> HandlerRegistry:
        """An independent registry with the same handlers (to extend a built-in set)."""
        new = HandlerRegistry()
        new._specs = dict(self._specs)
        new._defaults = set(self._defaults)
        return new

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def names(self) -> frozenset[str]:
        """Every registered handler name."""
        return frozenset(self._specs)
