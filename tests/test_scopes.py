"""lazily_scoped: no scope for a call that never waits; the same semantics as a scope
entered up front for one that does (timeouts, shields, errors, cleanup)."""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
import anyio.lowlevel
import pytest

from engine.scopes import lazily_scoped


class Factory:
    """A scope factory that counts the scopes it made."""

    def __init__(self, **kw: float | bool) -> None:
        self.kw = kw
        self.made: list[anyio.CancelScope] = []

    def __call__(self) -> anyio.CancelScope:
        scope = anyio.CancelScope(**self.kw)  # type: ignore[arg-type]
        self.made.append(scope)
        return scope


async def test_a_call_that_never_waits_gets_no_scope() -> None:
    async def quick() -> int:
        return 42

    factory = Factory(shield=True)
    assert await lazily_scoped(quick(), factory) == (42, None)
    assert factory.made == []


async def test_a_call_that_waits_runs_under_the_scope_to_its_result() -> None:
    async def waits() -> str:
        await anyio.sleep(0.001)
        await anyio.lowlevel.checkpoint()
        return "done"

    factory = Factory(shield=True)
    value, scope = await lazily_scoped(waits(), factory)
    assert value == "done" and scope is factory.made[0]
    assert not scope.cancelled_caught


async def test_a_deadline_scope_times_the_call_out() -> None:
    async def slow() -> str:
        await anyio.sleep(10)
        return "never"

    factory = Factory(deadline=anyio.current_time() + 0.02)
    value, scope = await lazily_scoped(slow(), factory)
    assert value is None and scope is not None and scope.cancelled_caught


async def test_an_error_before_the_first_wait_propagates_without_a_scope() -> None:
    async def fails() -> None:
        raise KeyError("early")

    factory = Factory(shield=True)
    with pytest.raises(KeyError, match="early"):
        await lazily_scoped(fails(), factory)
    assert factory.made == []


async def test_an_error_after_a_wait_propagates_through_the_scope() -> None:
    async def fails_later() -> None:
        await anyio.lowlevel.checkpoint()
        raise ValueError("late")

    factory = Factory(shield=True)
    with pytest.raises(ValueError, match="late"):
        await lazily_scoped(fails_later(), factory)
    assert len(factory.made) == 1


async def _cancelled_during_commit(make_scope: Callable[[], anyio.CancelScope]) -> bool:
    """Cancel the caller 10 ms into a 50 ms call made through ``make_scope``; whether
    the call finished (the caller's cancellation is checked to win either way)."""
    finished = False

    async def commit() -> None:
        nonlocal finished
        await anyio.sleep(0.05)
        finished = True

    with anyio.CancelScope() as outer:
        outer.deadline = anyio.current_time() + 0.01
        await lazily_scoped(commit(), make_scope)
        await anyio.sleep(1)  # cancelled here at the latest
    assert outer.cancelled_caught
    return finished


async def test_a_shield_entered_at_the_first_wait_holds_off_outer_cancellation() -> None:
    """The point of the shield around a commit: cancelling the caller mid-call lets the
    call finish, and the cancellation then still wins."""
    assert await _cancelled_during_commit(Factory(shield=True))


async def test_without_the_shield_the_same_cancellation_interrupts_the_call() -> None:
    """The counter-test: the call really was cancellable at its wait."""
    assert not await _cancelled_during_commit(anyio.CancelScope)


async def test_a_failing_scope_factory_closes_the_started_coroutine() -> None:
    closed = False

    async def waits() -> None:
        nonlocal closed
        try:
            await anyio.sleep(0.001)
        finally:
            closed = True

    def broken() -> anyio.CancelScope:
        raise RuntimeError("no scope")

    with pytest.raises(RuntimeError, match="no scope"):
        await lazily_scoped(waits(), broken)
    assert closed


async def test_time_spent_before_the_first_wait_counts_against_a_deadline() -> None:
    """What the engine relies on for node timeouts: a deadline computed when the scope
    is made still fires at the first wait when the call already used its time."""
    started = time.perf_counter()

    async def busy_then_waits() -> str:
        while time.perf_counter() - started < 0.03:
            pass
        await anyio.sleep(10)
        return "never"

    def deadline() -> anyio.CancelScope:
        left = 0.02 - (time.perf_counter() - started)
        return anyio.CancelScope(deadline=anyio.current_time() + left)

    value, scope = await lazily_scoped(busy_then_waits(), deadline)
    assert value is None and scope is not None and scope.cancelled_caught
