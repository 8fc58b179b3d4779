"""A worker process for the group commit crash test (run as a script, SIGKILLed at will).

``group_worker.py URL PREFIX COUNT``
    Drives sessions ``PREFIX0`` ... ``PREFIX{COUNT-1}`` at once, each appending turns
    one after another (resuming after what is stored), and prints ``SESSION TURN`` to
    stdout, flushed, as soon as each ``append_turn`` has returned: the parent records
    those turns as acknowledged.

The key comes from ``$TURNGRAPH_SECRET`` (set by the parent).
"""

from __future__ import annotations

import sys

import anyio

from sessions.store import open_store
from sessions.store.base import SessionMeta, Store

from .crash_worker import turn_commit


async def drive(store: Store, sid: str) -> None:
    """Append turns to ``sid`` forever, reporting each acknowledged one."""
    if not await store.exists(sid):
        await store.create(SessionMeta(id=sid))
    token = await store.acquire(sid, "group-worker", 600.0)
    meta = (await store.load(sid, recent=0)).meta
    turn, seq = meta.turn_count, meta.message_count
    while True:
        turn += 1
        n = 1 + turn % 3
        await store.append_turn(sid, turn_commit(turn, seq, n), token=token)
        seq += n
        sys.stdout.write(f"{sid} {turn}\n")
        sys.stdout.flush()


async def main(url: str, prefix: str, count: int) -> None:
    """Drive ``count`` sessions concurrently until killed."""
    async with open_store(url) as store, anyio.create_task_group() as tg:
        for i in range(count):
            tg.start_soon(drive, store, f"{prefix}{i}")


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
