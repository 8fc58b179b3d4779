"""Tests of the session stores; helpers shared by the store test modules."""

from __future__ import annotations

from sessions.store.base import Message, SessionMeta, Store, TurnCommit, TurnRecord

__all__ = ["SECRET", "commit", "fill"]

SECRET = b"test-secret-key"


def commit(
    turn: int, seq: int, n: int = 2, *, content: str = "hello", **changes: object
) -> TurnCommit:
    """Turn ``turn`` appending ``n`` messages from ``seq`` (user, assistant, user...)."""
    msgs = tuple(
        Message(
            seq + i,
            "user" if i % 2 == 0 else "assistant",
            f"{content} {seq + i}",
            turn,
            1_700_000_000.0 + seq + i,
            {"i": i} if i == 0 else {},
        )
        for i in range(n)
    )
    record = TurnRecord(
        turn,
        "success",
        f"trace-{turn}",
        "g" * 8,
        ({"id": "llm_call", "status": "success", "attempts": 1},),
        1_700_000_000.0 + turn,
    )
    return TurnCommit(record, msgs, **changes)  # type: ignore[arg-type]


async def fill(
    store: Store, session_id: str, turns: int, *, per_turn: int = 2, owner: str = "w1"
) -> int:
    """Create ``session_id`` (if needed), append ``turns`` turns; returns the token."""
    if not await store.exists(session_id):
        await store.create(SessionMeta(id=session_id))
    token = await store.acquire(session_id, owner, 60.0)
    meta = (await store.load(session_id, recent=0)).meta
    seq = meta.message_count
    for t in range(meta.turn_count + 1, meta.turn_count + turns + 1):
        await store.append_turn(session_id, commit(t, seq, per_turn), token=token)
        seq += per_turn
    return token
