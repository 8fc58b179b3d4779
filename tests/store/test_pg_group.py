"""The PostgreSQL group commit: concurrent turns of different sessions in one statement,
each still fenced and checked on its own, none able to fail or hold up another."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import anyio.lowlevel
import psycopg
import pytest

from sessions.errors import Fenced, SessionTampered
from sessions.store.pg_group import GroupTurn
from sessions.store.postgres import PostgresStore

from . import SECRET, commit, fill

pytestmark = pytest.mark.postgres

SIDS = ("s0", "s1", "s2", "s3")


@pytest.fixture
async def grouped(pg_url: str) -> AsyncIterator[PostgresStore]:
    """A store running one group at a time, so concurrent turns queue into one group."""
    async with PostgresStore(pg_url, secret=SECRET, group_commits=1) as s:
        yield s


def _row(url: str, sid: str) -> tuple[str, int, int]:
    """(xmin, turn_count, record_count) of the session row: one xmin, one transaction."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT xmin::text, turn_count, record_count FROM sessions WHERE id=%s", (sid,)
        ).fetchone()
    assert row is not None
    return row


async def _turn_each(store: PostgresStore, tokens: dict[str, int], turn: int) -> dict[str, object]:
    """Turn ``turn`` of every session, all at once; what each raised (None: committed)."""
    out: dict[str, object] = {}

    async def one(sid: str) -> None:
        try:
            await store.append_turn(sid, commit(turn, 2 * (turn - 1)), token=tokens[sid])
            out[sid] = None
        except Exception as exc:
            out[sid] = exc

    async with anyio.create_task_group() as tg:
        for sid in tokens:
            tg.start_soon(one, sid)
    return out


def _record_groups(store: PostgresStore) -> list[list[str]]:
    """Record which sessions each group statement carried."""
    groups: list[list[str]] = []
    run: Callable[[list[GroupTurn]], Awaitable[None]] = store._group.group._run

    async def recording(group: list[GroupTurn]) -> None:
        groups.append([t.state.id for t in group])
        await run(group)

    store._group.group._run = recording
    return groups


async def test_concurrent_turns_share_one_transaction(grouped: PostgresStore, pg_url: str) -> None:
    """Turns of several sessions queued together are written by one statement (their
    session rows carry one transaction id), and every session still verifies."""
    tokens = {sid: await fill(grouped, sid, 1) for sid in SIDS}
    assert set((await _turn_each(grouped, tokens, 2)).values()) == {None}
    rows = [_row(pg_url, sid) for sid in SIDS]
    assert [r[1:] for r in rows] == [(2, 6)] * 4
    assert len({xmin for xmin, _, _ in rows}) < len(SIDS)
    for sid in SIDS:
        assert await grouped.verify(sid) == 6


async def test_a_fenced_session_in_a_group_writes_nothing_and_the_others_commit(
    grouped: PostgresStore, pg_url: str
) -> None:
    """One session taken over by another owner is refused inside the group: it gets
    Fenced and no row, the other turns of the same group commit."""
    tokens = {sid: await fill(grouped, sid, 1) for sid in SIDS}
    with psycopg.connect(pg_url, autocommit=True) as conn:  # s2's lease runs out
        conn.execute("UPDATE sessions SET lease_expires=0 WHERE id='s2'")
    async with PostgresStore(pg_url, secret=SECRET) as other:
        await other.acquire("s2", "w2", 30.0)
    before = _row(pg_url, "s2")
    groups = _record_groups(grouped)
    raised = await _turn_each(grouped, tokens, 2)
    assert any("s2" in g and len(g) > 1 for g in groups)  # s2 was grouped with others
    assert isinstance(raised.pop("s2"), Fenced)
    assert set(raised.values()) == {None}
    assert _row(pg_url, "s2") == before
    assert [_row(pg_url, sid)[1] for sid in ("s0", "s1", "s3")] == [2, 2, 2]
    assert await grouped.verify("s2") == 3


async def test_a_row_edited_between_turns_is_refused_not_overwritten(
    grouped: PostgresStore, pg_url: str
) -> None:
    """The next turn after a hand edit of the session row is not laid over it: the
    group refuses the changed row and the locked path reports the tampering."""
    token = await fill(grouped, "s1", 1)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE sessions SET working_memory='{\"role\":\"admin\"}' WHERE id='s1'")
    before = _row(pg_url, "s1")
    with pytest.raises(SessionTampered):
        await grouped.append_turn("s1", commit(2, 2), token=token)
    assert _row(pg_url, "s1") == before


async def test_a_locked_row_does_not_hold_up_the_group(grouped: PostgresStore, pg_url: str) -> None:
    """While another connection holds one session's row lock, the other sessions' turns
    still commit; the locked one commits once the lock is gone."""
    tokens = {sid: await fill(grouped, sid, 1) for sid in ("s1", "s2")}
    with anyio.fail_after(60):  # a hang guard only: the assertions are about order
        async with anyio.create_task_group() as tg:
            with psycopg.connect(pg_url) as other:
                other.execute("SELECT 1 FROM sessions WHERE id='s1' FOR UPDATE")
                s1_turn = functools.partial(grouped.append_turn, token=tokens["s1"])
                tg.start_soon(s1_turn, "s1", commit(2, 2))
                await anyio.lowlevel.checkpoint()  # s1's turn leads the first group
                await grouped.append_turn("s2", commit(2, 2), token=tokens["s2"])
                assert (_row(pg_url, "s1")[1], _row(pg_url, "s2")[1]) == (1, 2)
    assert _row(pg_url, "s1")[1] == 2
    assert await grouped.verify("s1") == 6


async def test_a_group_whose_answer_is_lost_is_not_written_twice(grouped: PostgresStore) -> None:
    """If a group committed but its callers never heard (a cancelled leader, a dropped
    connection), each retry on the locked path finds its turn already written."""
    tokens = {sid: await fill(grouped, sid, 1) for sid in SIDS}
    write = grouped._group._write

    async def lose_answer(group: list[GroupTurn]) -> None:
        await write(group)
        for turn in group:
            turn.done = None

    grouped._group.group._run = lose_answer
    assert set((await _turn_each(grouped, tokens, 2)).values()) == {None}
    grouped._group.group._run = write
    assert set((await _turn_each(grouped, tokens, 3)).values()) == {None}
    for sid in SIDS:
        assert await grouped.verify(sid) == 9


async def test_without_groups_every_turn_takes_its_own_transaction(pg_url: str) -> None:
    """group_commits=0 turns the group commit off: concurrent turns commit one by one."""
    async with PostgresStore(pg_url, secret=SECRET, group_commits=0) as s:
        tokens = {sid: await fill(s, sid, 1) for sid in SIDS}
        assert set((await _turn_each(s, tokens, 2)).values()) == {None}
    assert len({_row(pg_url, sid)[0] for sid in SIDS}) == len(SIDS)
