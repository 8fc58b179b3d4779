"""The fsync floor (bench/fsync_floor.py) measures what it claims: every turn waits for a
real fsync of a real file, turns ready together share one, and otherwise it is the
memory store."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from bench.fsync_floor import FsyncFloorStore
from bench.throughput import _mock_manager


def test_turns_wait_for_a_shared_fsync_and_are_kept_as_in_memory(tmp_path: Path) -> None:
    """20 sessions × 3 turns at once: each turn's bytes reach the file before its send
    returns; fewer batches than turns; every turn is kept as the memory store keeps it."""
    log = tmp_path / "floor.log"
    store = FsyncFloorStore(log)
    seen: list[int] = []

    async def main() -> None:
        async with _mock_manager(store) as m:
            assert store.is_open
            sessions = [await m.get_or_create(f"s{i}") for i in range(20)]

            async def three(i: int) -> None:
                for k in range(3):
                    result = await sessions[i].send(f"hello {k}")
                    assert result.ok, result.error
                    seen.append(log.stat().st_size)  # this turn's fsync has ended

            async with anyio.create_task_group() as tg:
                for i in range(20):
                    tg.start_soon(three, i)
            for i in range(20):
                loaded = await store.load(f"s{i}")
                assert loaded.meta.turn_count == 3
        assert not store.is_open

    anyio.run(main)
    turns = 60
    assert log.stat().st_size == 64 * turns
    # Each acknowledged turn found at least its own batch on disk: the n-th acknowledged
    # turn saw n turns' bytes or more.
    assert all(size >= 64 * (n + 1) for n, size in enumerate(sorted(seen)))
    assert store._group.batches < turns  # shared fsyncs, not one a turn


def test_a_failed_fsync_reaches_the_waiting_turn(tmp_path: Path) -> None:
    """The write failing (here: the file closed under the thread) fails the turn waiting
    for it with that error, instead of leaving it waiting."""
    store = FsyncFloorStore(tmp_path / "floor.log")

    async def main() -> None:
        async with _mock_manager(store) as m:
            session = await m.get_or_create("s")
            os.close(store._fd)  # the thread's next write gets EBADF
            try:
                with pytest.raises(OSError, match="Bad file descriptor"):
                    await session.send("hello")
            finally:
                store._fd = os.open(tmp_path / "other.log", os.O_WRONLY | os.O_CREAT)

    anyio.run(main)


def test_it_is_a_side_by_side_row_of_the_throughput_bench() -> None:
    """The bench measures it in the same rounds as the targets' rows."""
    from bench import throughput

    assert throughput.FLOOR in throughput.SIDE_BY_SIDE
    assert throughput.FLOOR in throughput.implementations("postgresql://unused")
