"""Structural handlers: ``start``, ``exit``/``done`` and ``conditional`` do nothing but
mark their place in the graph; routing happens on their edges."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.graph import Node
from engine.registry import HandlerResult

__all__ = ["Passthrough"]


class Passthrough:
    """A no-op node: succeeds without changing the context.

    Used for ``start`` (``shape=Mdiamond``), ``exit``/``done`` (``shape=Msquare``) and
    ``conditional`` (``shape=diamond``) routers whose edges carry the conditions.
    """

    __slots__ = ()

    def __call__(self, node: Node, context: Mapping[str, Any]) -> HandlerResult:
        return None
