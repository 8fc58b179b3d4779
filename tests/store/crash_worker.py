"""A separate process for the crash and race tests (run as a script, killed at will).

``crash_worker.py crash URL SIDE_FILE``
    Appends turns to session ``s1`` forever (saving a checkpoint mid-turn every other
    turn) and, after each commit returns, appends the turn number to ``SIDE_FILE``
    (fsynced): the parent knows those turns were reported committed.

``crash_worker.py race URL SESSION OWNER TTL``
    Prints ``ready``, then obeys stdin lines: ``acquire`` prints ``won TOKEN`` or
    ``busy``; ``write`` appends one turn with the last token and prints ``ok`` or
    ``fenced``; ``later SECONDS`` sets the worker's lease clock that far ahead of
    the real time (leases expire without sleeping); end of input exits.

The key comes from ``$TURNGRAPH_SECRET`` (set by the parent).
"""

from __future__ import annotations

import os
import sys
import time

import anyio

from sessions.errors import Fenced, SessionBusy
from sessions.store import open_store
from sessions.store.base import Checkpoint, Message, SessionMeta, Store, TurnCommit, TurnRecord


def turn_commit(turn: int, seq: int, n: int) -> TurnCommit:
    """Turn ``turn`` with ``n`` messages from ``seq``."""
    now = time.time()
    msgs = tuple(
        Message(seq + i, "user" if i % 2 == 0 else "assistant", f"t{turn} m{seq + i}", turn, now)
        for i in range(n)
    )
    record = TurnRecord(turn, "success", f"trace-{turn}", "graph", ({"id": "done"},), now)
    return TurnCommit(record, msgs, working_memory={"last_turn": turn})


async def crash(url: str, side: str) -> None:
    """Append turns until killed; log each committed turn to ``side``."""
    fd = os.open(side, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    async with open_store(url) as store:
        if not await store.exists("s1"):
            await store.create(SessionMeta(id="s1"))
        token = await store.acquire("s1", "crash-worker", 60.0)
        meta = (await store.load("s1", recent=0)).meta
        turn, seq = meta.turn_count, meta.message_count
        while True:
            turn += 1
            n = 1 + turn % 3
            if turn % 2:
                cp = Checkpoint(
                    turn,
                    "graph",
                    f"trace-{turn}",
                    "in",
                    "recall",
                    "llm_call",
                    {"turn": turn},
                    ({"id": "recall"},),
                    time.time(),
                )
                await store.save_checkpoint("s1", cp, token=token)
            await store.append_turn("s1", turn_commit(turn, seq, n), token=token)
            seq += n
            os.write(fd, f"{turn}\n".encode())
            os.fsync(fd)


async def race(url: str, sid: str, owner: str, ttl: float) -> None:
    """Obey ``acquire`` / ``write`` commands on stdin, reporting each result."""
    ahead = [0.0]  # seconds this worker's lease clock runs ahead of the real one
    async with open_store(url, clock=lambda: time.time() + ahead[0]) as store:
        say("ready")
        token = -1
        while line := await anyio.to_thread.run_sync(sys.stdin.readline):
            if line.startswith("later "):
                ahead[0] = float(line.split()[1])
            elif line.strip() == "acquire":
                token = await try_acquire(store, sid, owner, ttl)
            elif line.strip() == "write":
                say(await try_write(store, sid, token))


async def try_acquire(store: Store, sid: str, owner: str, ttl: float) -> int:
    """Acquire and report ``won TOKEN`` or ``busy``."""
    try:
        token = await store.acquire(sid, owner, ttl)
    except SessionBusy:
        say("busy")
        return -1
    say(f"won {token}")
    return token


async def try_write(store: Store, sid: str, token: int) -> str:
    """Append the next turn with ``token``: ``ok`` or ``fenced``."""
    meta = (await store.load(sid, recent=0)).meta
    try:
        await store.append_turn(
            sid, turn_commit(meta.turn_count + 1, meta.message_count, 2), token=token
        )
    except Fenced:
        return "fenced"
    return "ok"


def say(text: str) -> None:
    """One line to the parent, flushed."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> None:
    """Dispatch on the mode argument."""
    if argv[0] == "crash":
        anyio.run(crash, argv[1], argv[2])
    elif argv[0] == "race":
        anyio.run(race, argv[1], argv[2], argv[3], float(argv[4]))
    else:
        raise SystemExit(f"unknown mode {argv[0]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
