"""Cheap anyio primitives: a node timeout whose timer is armed only when the handler
actually waits, and :func:`cancel_scope` / :func:`sleep`, which skip anyio's backend
lookup on a known asyncio loop.

A deadline cancel scope arms a timer on the event loop when it is entered, and cancels
it when it exits.  Yet a timeout can only take effect where a coroutine suspends: a
handler that runs to completion without suspending (an offline model, a cache hit)
cannot be timed out.  :func:`call_with_deadline` therefore enters a plain cancel scope
(no timer), starts the coroutine by hand inside it, and sets the scope's deadline only
if the coroutine suspends, before control goes back to the event loop.

The scope is entered *before* the coroutine starts, so any scope the handler opens
itself (``fail_after``, a task group) nests inside it, as it must.

``anyio.CancelScope()`` first asks sniffio which event loop is running (a couple of
microseconds, paid per scope, two scopes a turn).  :func:`cancel_scope` asks once per
asyncio event loop and then builds the asyncio backend's scope class directly.
"""

from __future__ import annotations

import asyncio
import importlib
import time
import weakref
from asyncio import AbstractEventLoop, get_running_loop
from collections.abc import Awaitable, Coroutine, Generator
from typing import Any, Generic, TypeVar

import anyio

__all__ = ["call_with_deadline", "cancel_scope", "sleep"]

T = TypeVar("T")

_perf = time.perf_counter


async def call_with_deadline(
    coro: Coroutine[Any, Any, T], seconds: float, started: float
) -> tuple[T | None, bool]:
    """Await ``coro``, cancelled ``seconds`` after ``started`` (a
    ``time.perf_counter()`` reading) if it is still waiting then.

    Returns ``(value, False)``, or ``(None, True)`` when the deadline cancelled it.
    Exceptions from ``coro`` propagate unchanged.
    """
    with cancel_scope() as scope:
        try:
            first = coro.send(None)
        except StopIteration as stop:
            return stop.value, False
        # It waits: arm the deadline, counting the time it already ran.
        scope.deadline = anyio.current_time() + seconds - (_perf() - started)
        return await _Resumed(coro, first), False
    return None, scope.cancelled_caught


_loop_ref: weakref.ref[AbstractEventLoop] | None = None
_scope_class: type[anyio.CancelScope] = anyio.CancelScope


def cancel_scope(*, shield: bool = False) -> anyio.CancelScope:
    """``anyio.CancelScope(shield=shield)``, built directly on a known asyncio loop.

    The first scope made on an asyncio event loop is made by anyio, and its class kept
    with a weak reference to the loop once sniffio confirms the loop is asyncio's; later
    scopes on that loop are that class called directly (exactly what anyio builds).
    Anywhere else (another loop, trio) it is anyio's constructor every time.
    """
    global _loop_ref, _scope_class
    try:
        loop = get_running_loop()
    except RuntimeError:  # not on asyncio (trio): anyio knows what to build
        return anyio.CancelScope(shield=shield)
    if _loop_ref is not None and _loop_ref() is loop:
        return _scope_class(shield=shield)
    scope = anyio.CancelScope(shield=shield)
    if _anyio_runs_asyncio():
        _loop_ref, _scope_class = weakref.ref(loop), type(scope)
    return scope


def sleep(seconds: float) -> Awaitable[None]:
    """``anyio.sleep(seconds)``; on an asyncio loop :func:`cancel_scope` already
    confirmed, ``asyncio.sleep`` directly (what anyio's asyncio backend awaits)."""
    ref = _loop_ref
    if ref is not None:
        try:
            if ref() is get_running_loop():
                return asyncio.sleep(seconds)
        except RuntimeError:
            pass
    return anyio.sleep(seconds)


def _anyio_runs_asyncio() -> bool:
    """Whether anyio's backend here is asyncio, by anyio's own rule: sniffio's answer
    when sniffio is installed, else "an asyncio loop is running" (the caller knows)."""
    try:
        sniffio = importlib.import_module("sniffio")
    except ImportError:
        return True
    try:
        return bool(sniffio.current_async_library() == "asyncio")
    except sniffio.AsyncLibraryNotFoundError:
        return False


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
