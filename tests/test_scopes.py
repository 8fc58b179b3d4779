"""call_with_deadline: a deadline scope entered before the call starts (timeouts, nesting,
errors, cleanup, a call that never suspends); cancel_scope and sleep are anyio's."""

from __future__ import annotations

import time

import anyio
import anyio.lowlevel
import pytest

from engine.scopes import call_with_deadline, cancel_scope, sleep


async def test_a_call_that_never_waits_returns_its_value() -> None:
    async def quick() -> int:
        return 42

    assert await call_with_deadline(quick(), 0.01) == (42, False)


async def test_a_call_that_waits_less_than_its_deadline_returns_its_value() -> None:
    async def waits() -> str:
        await anyio.sleep(0.001)
        await anyio.lowlevel.checkpoint()
        return "done"

    assert await call_with_deadline(waits(), 5.0) == ("done", False)


async def test_a_call_waiting_past_its_deadline_is_cancelled() -> None:
    cleaned = False

    async def slow() -> str:
        nonlocal cleaned
        try:
            await anyio.sleep(10)
        finally:
            cleaned = True
        return "never"

    assert await call_with_deadline(slow(), 0.02) == (None, True)
    assert cleaned


async def test_time_spent_before_the_first_wait_counts_against_the_deadline() -> None:
    """The deadline runs from the call, not from its first wait: a call that used its
    time before waiting is cancelled at that first wait."""

    async def busy_then_waits() -> str:
        started = time.perf_counter()
        while time.perf_counter() - started < 0.03:
            pass
        await anyio.sleep(10)
        return "never"

    assert await call_with_deadline(busy_then_waits(), 0.02) == (None, True)


async def test_a_call_that_never_suspends_keeps_its_value_past_the_deadline() -> None:
    """A deadline takes effect where the call suspends: one that never does returns."""

    async def busy() -> str:
        started = time.perf_counter()
        while time.perf_counter() - started < 0.03:
            pass
        return "done"

    assert await call_with_deadline(busy(), 0.01) == ("done", False)


async def test_scopes_the_call_opens_itself_nest_inside_the_deadline() -> None:
    """A handler's own fail_after and task group, opened before its first wait, exit in
    order (a scope entered only at the first wait would sit inside them and break)."""

    async def handler() -> str:
        with anyio.fail_after(5):
            await anyio.sleep(0.001)
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.sleep, 0.001)
        with anyio.move_on_after(5):
            await anyio.sleep(0.001)
        return "ok"

    assert await call_with_deadline(handler(), 5.0) == ("ok", False)


async def test_the_deadline_cancels_inside_the_calls_own_scopes() -> None:
    async def handler() -> str:
        with anyio.fail_after(5):
            await anyio.sleep(10)
        return "never"

    assert await call_with_deadline(handler(), 0.02) == (None, True)


@pytest.mark.parametrize("wait_first", [False, True])
async def test_errors_propagate_unchanged(wait_first: bool) -> None:
    async def fails() -> None:
        if wait_first:
            await anyio.lowlevel.checkpoint()
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        await call_with_deadline(fails(), 5.0)


async def test_an_outer_cancellation_still_wins() -> None:
    """The deadline scope only catches its own cancellation."""
    finished = False

    async def slow() -> None:
        nonlocal finished
        await anyio.sleep(1)
        finished = True

    with anyio.CancelScope() as outer:
        outer.deadline = anyio.current_time() + 0.01
        await call_with_deadline(slow(), 5.0)
        pytest.fail("the outer cancellation did not propagate")
    assert outer.cancelled_caught and not finished


async def test_cancel_scope_shields_and_cancels_like_anyios() -> None:
    first, second = cancel_scope(), cancel_scope(shield=True)
    assert type(first) is type(second) is type(anyio.CancelScope())
    assert second.shield and not first.shield
    finished = False

    async def shielded() -> None:
        nonlocal finished
        with cancel_scope(shield=True):
            await anyio.sleep(0.03)
            finished = True

    with cancel_scope() as outer:
        outer.deadline = anyio.current_time() + 0.01
        await shielded()
        await anyio.sleep(1)
    assert finished and outer.cancelled_caught


async def test_sleep_sleeps_like_anyio() -> None:
    t0 = anyio.current_time()
    await sleep(0.02)
    assert anyio.current_time() - t0 >= 0.019
    with anyio.move_on_after(0.01) as scope:
        await sleep(10)
    assert scope.cancelled_caught
