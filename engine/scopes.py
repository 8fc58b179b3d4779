"""Cancel scopes entered only when a call actually waits.

An anyio cancel scope (a node's timeout, the shield around a session's commit) costs a
few microseconds to create, enter and leave, and a deadline scope also arms a timer.
Yet cancellation, and so a timeout or a shield, can only take effect where a coroutine
suspends.  A call that runs to completion without suspending (an offline model, a
cache hit, a store that commits in memory) cannot be cancelled, timed out or
interrupted, so it needs no scope at all.

:func:`lazily_scoped` starts the coroutine by hand.  If it finishes before its first
suspension, that is the result and no scope was made.  If it suspends, the scope is
entered *before* control goes back to the event loop (still inside the same task), and
the coroutine continues under it, exactly as if it had been awaited inside the scope
from the start.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Generator
from typing import Any, Generic, TypeVar

import anyio

__all__ = ["lazily_scoped"]

T = TypeVar("T")


async def lazily_scoped(
    coro: Coroutine[Any, Any, T], make_scope: Callable[[], anyio.CancelScope]
) -> tuple[T | None, anyio.CancelScope | None]:
    """Await ``coro``, under ``make_scope()`` from its first suspension on.

    Returns ``(value, None)`` when ``coro`` never suspended, else ``(value, scope)``;
    the value is ``None`` when the scope caught its own cancellation (check
    ``scope.cancelled_caught``).  Exceptions from ``coro`` propagate unchanged.
    """
    try:
        first = coro.send(None)
    except StopIteration as stop:
        return stop.value, None
    try:
        scope = make_scope()
        scope.__enter__()
    except BaseException:
        coro.close()  # suspended, never to be resumed: let it clean up now
        raise
    value: T | None = None
    try:
        value = await _Resumed(coro, first)
    except BaseException as exc:
        if not scope.__exit__(type(exc), exc, exc.__traceback__):
            raise
    else:
        scope.__exit__(None, None, None)
    return value, scope


class _Resumed(Generic[T]):
    """Awaitable continuing a coroutine already started by hand (what ``await`` does
    for a coroutine, from its first yielded value on)."""

    __slots__ = ("_coro", "_first")

    def __init__(self, coro: Coroutine[Any, Any, T], first: Any) -> None:
        self._coro = coro
        self._first = first

    def __await__(self) -> Generator[Any, Any, T]:
        coro, value = self._coro, self._first
        self._first = None
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # thrown in by the task: pass it on
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
