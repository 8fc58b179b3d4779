"""Name → handler, as an explicit object handed to the engine (never a module global)."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from engine.graph import Node
from engine.outcome import Outcome

__all__ = ["Handler", "HandlerRegistry", "HandlerResult", "HandlerSpec"]

HandlerResult = Outcome | Mapping[str, Any] | None
"""A handler returns an Outcome, a mapping of context updates (success), or None (success)."""

Handler = Callable[[Node, Mapping[str, Any]], "HandlerResult | Awaitable[HandlerResult]"]
"""``(node, context) -> Outcome | Mapping | None``, plain or ``async``."""

H = TypeVar("H", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """A registered handler and how to call it (decided once, at registration)."""

    name: str
    fn: Handler
    is_async: bool
    blocking: bool = False
    """A sync handler that blocks (I/O, heavy CPU): run it in a worker thread."""


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
    built-in is how pipelines break without anyone noticing.
    """

    __slots__ = ("_specs",)

    def __init__(self, handlers: Mapping[str, Handler] | None = None) -> None:
        self._specs: dict[str, HandlerSpec] = {}
        for name, fn in (handlers or {}).items():
            self.register(name, fn)

    def register(
        self, name: str, fn: Handler, *, blocking: bool = False, replace: bool = False
    ) -> None:
        """Register ``fn`` under ``name``."""
        if not name or not isinstance(name, str):
            raise ValueError(f"handler name must be a non-empty string, not {name!r}")
        if name in self._specs and not replace:
            raise ValueError(f"handler {name!r} is already registered (pass replace=True)")
        if not callable(fn):
            raise TypeError(f"handler {name!r} must be callable, not {type(fn).__name__}")
        self._specs[name] = HandlerSpec(name, fn, _is_async(fn), blocking)

    def handler(
        self, name: str | None = None, *, blocking: bool = False, replace: bool = False
    ) -> Callable[[H], H]:
        """Decorator form of :meth:`register`; the name defaults to the function's."""

        def deco(fn: H) -> H:
            self.register(name or fn.__name__, fn, blocking=blocking, replace=replace)
            return fn

        return deco

    def get(self, name: str) -> HandlerSpec:
        """The spec for ``name``; ``KeyError`` if unknown."""
        return self._specs[name]

    def copy(self) -> HandlerRegistry:
        """An independent registry with the same handlers (to extend a built-in set)."""
        new = HandlerRegistry()
        new._specs.update(self._specs)
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
