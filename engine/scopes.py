"""Node deadlines, on anyio's public API only.

:func:`call_with_deadline` awaits a handler's call inside ``anyio.move_on_after``: the
scope is entered before the call starts, so any scope the handler opens itself
(``fail_after``, a task group) nests inside it, and time the handler spends before its
first wait counts against the deadline.  A timeout takes effect where the handler
suspends; a handler that runs to completion without suspending (an offline model, a
cache hit) finishes with its value, as it would under any anyio deadline.

:func:`cancel_scope` and :func:`sleep` are anyio's ``CancelScope`` and ``sleep``,
kept under these names for the modules that import them from here.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import anyio

__all__ = ["call_with_deadline", "cancel_scope", "sleep"]

T = TypeVar("T")

sleep = anyio.sleep


async def call_with_deadline(call: Awaitable[T], seconds: float) -> tuple[T | None, bool]:
    """Await ``call``, cancelled if it is still waiting ``seconds`` from now.

    Returns ``(value, False)``, or ``(None, True)`` when the deadline cancelled it.
    Exceptions from ``call`` propagate unchanged, and so does a cancellation from an
    enclosing scope: only this deadline's own cancellation is caught.
    """
    with anyio.move_on_after(seconds):
        return await call, False
    return None, True


def cancel_scope(*, shield: bool = False) -> anyio.CancelScope:
    """``anyio.CancelScope(shield=shield)``."""
    return anyio.CancelScope(shield=shield)
