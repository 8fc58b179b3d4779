"""The Store contract, run against every backend (memory, SQLite, PostgreSQL)."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

import anyio
import msgspec
import pytest

from sessions.errors import (
    Fenced,
    ImportRejected,
    InvalidSessionId,
    SessionBusy,
    SessionExists,
    SessionNotFound,
    StoreError,
)
from sessions.store import ManualClock, OpenStore
from sessions.store.base import Checkpoint, Message, SessionMeta

from . import commit, fill

BAD_IDS = ["../etc", "", "a\x00b", ".hidden", "x" * 129, "a/b", "white space", "ümlaut"]


def checkpoint(turn: int, node: str = "recall") -> Checkpoint:
    return Checkpoint(
        turn,
        "g" * 8,
        f"trace-{turn}",
        "hi",
        node,
        "llm_call",
        {"k": [1, 2]},
        ({"id": node, "status": "success"},),
        1_700_000_500.0,
    )


async def test_create_returns_a_fresh_session(store: OpenStore) -> None:
    """A created session starts empty at version 0, keeps its settings, and loads back."""
    meta = await store.create(
        SessionMeta(
            id="alice",
            agent_id="bot",
            type="background",
            config={"model": "x"},
            goals=("help",),
            working_memory={"name": "A"},
            turn_count=7,
        )
    )
    assert (meta.turn_count, meta.message_count, meta.version, meta.summary_upto) == (0, 0, 0, -1)
    loaded = await store.load("alice")
    assert loaded.meta == meta
    assert (loaded.recent, loaded.summary, loaded.checkpoint) == ((), None, None)
    assert loaded.meta.agent_id == "bot" and loaded.meta.type == "background"
    assert dict(loaded.meta.config) == {"model": "x"} and loaded.meta.goals == ("help",)
    assert await store.exists("alice") and not await store.exists("bob")


async def test_unserialisable_values_are_refused(durable: OpenStore) -> None:
    """Values that cannot be stored as JSON raise StoreError on the durable stores
    (``memory:`` keeps Python objects as they are)."""
    store = durable
    with pytest.raises(StoreError, match="JSON"):
        await store.create(SessionMeta(id="alice", config={"x": object()}))
    token = await fill(store, "s1", 0)
    with pytest.raises(StoreError, match="JSON"):
        await store.append_turn("s1", commit(1, 0, working_memory={"x": {1, 2}}), token=token)
    with pytest.raises(StoreError, match="JSON"):
        await store.update_state("s1", working_memory={"x": {1, 2}}, token=token)
    assert not await store.exists("alice")
    assert (await store.load("s1")).meta.turn_count == 0


async def test_create_twice_is_refused(store: OpenStore) -> None:
    """A taken id raises SessionExists."""
    await store.create(SessionMeta(id="alice"))
    with pytest.raises(SessionExists):
        await store.create(SessionMeta(id="alice"))


async def test_missing_session_is_not_found(store: OpenStore) -> None:
    """Reads and leases of an unknown session raise SessionNotFound."""
    for call in (store.load("nobody"), store.messages("nobody"), store.acquire("nobody", "o", 1)):
        with pytest.raises(SessionNotFound):
            await call


async def test_turns_append_and_load_recent_window(store: OpenStore) -> None:
    """load() returns counters and exactly the last ``recent`` messages, in order."""
    await fill(store, "s1", 10, per_turn=3)
    loaded = await store.load("s1", recent=4)
    assert (loaded.meta.turn_count, loaded.meta.message_count) == (10, 30)
    assert [m.seq for m in loaded.recent] == [26, 27, 28, 29]
    assert loaded.recent[0].content == "hello 26" and loaded.recent[-1].turn == 10
    assert [m.seq for m in (await store.load("s1", recent=100)).recent] == list(range(30))
    assert (await store.load("s1", recent=0)).recent == ()


async def test_messages_roundtrip_exactly(store: OpenStore) -> None:
    """What is appended is what is read: roles, content, turn, ts and meta."""
    c = commit(1, 0, 2, content='ünïcode ✓ "quotes" \n newline')
    token = await fill(store, "s1", 0)
    await store.append_turn("s1", c, token=token)
    got = await store.messages("s1")
    assert [(m.seq, m.role, m.content, m.turn, m.ts, dict(m.meta)) for m in got] == [
        (m.seq, m.role, m.content, m.turn, m.ts, dict(m.meta)) for m in c.messages
    ]
    [rec] = await store.turns("s1")
    assert (rec.turn, rec.status, rec.trace_id, rec.graph_hash, rec.error) == (
        1,
        "success",
        "trace-1",
        "g" * 8,
        None,
    )
    assert [dict(step) for step in rec.trace] == [dict(step) for step in c.record.trace]


async def test_messages_and_turns_page(store: OpenStore) -> None:
    """messages(offset, limit) and turns(offset, limit) page through the history."""
    await fill(store, "s1", 6)
    assert [m.seq for m in await store.messages("s1", 3, 4)] == [3, 4, 5, 6]
    assert [m.seq for m in await store.messages("s1", 10, 50)] == [10, 11]
    assert await store.messages("s1", 12, 5) == () and await store.messages("s1", 0, 0) == ()
    assert [t.turn for t in await store.turns("s1", 2, 2)] == [3, 4]
    assert [t.turn for t in await store.turns("s1")] == [1, 2, 3, 4, 5, 6]
    assert await store.turns("s1", 6) == ()


async def test_read_only_mappings_are_stored_as_objects(store: OpenStore) -> None:
    """Nested read-only views (as a context snapshot holds) are stored as plain objects."""
    token = await fill(store, "s1", 0)
    view = MappingProxyType({"b": MappingProxyType({"c": 1})})
    await store.append_turn("s1", commit(1, 0, working_memory={"a": view}), token=token)
    cp = replace(checkpoint(2), context={"session.memory": view})
    await store.save_checkpoint("s1", cp, token=token)
    loaded = await store.load("s1")
    assert dict(loaded.meta.working_memory) == {"a": {"b": {"c": 1}}}
    assert loaded.checkpoint is not None
    assert dict(loaded.checkpoint.context) == {"session.memory": {"b": {"c": 1}}}


async def test_memory_goals_and_mode_change_only_when_given(store: OpenStore) -> None:
    """working_memory, goals and cognitive_mode change only when a commit sets them."""
    token = await fill(store, "s1", 0)
    await store.append_turn(
        "s1",
        commit(1, 0, working_memory={"a": 1}, goals=("g1",), cognitive_mode="focused"),
        token=token,
    )
    await store.append_turn("s1", commit(2, 2), token=token)
    meta = (await store.load("s1")).meta
    assert (dict(meta.working_memory), meta.goals, meta.cognitive_mode) == (
        {"a": 1},
        ("g1",),
        "focused",
    )
    assert meta.updated_at >= meta.created_at


async def test_update_state_writes_the_session_state_alone(store: OpenStore) -> None:
    """update_state replaces memory, goals and mode (``None``: unchanged), appends no
    record, and later turns continue the history as before."""
    token = await fill(store, "s1", 2)
    records = await store.verify("s1")
    await store.update_state(
        "s1", working_memory={"beat": 110}, goals=("g",), cognitive_mode="reflect", token=token
    )
    loaded = await store.load("s1")
    meta = loaded.meta
    assert (dict(meta.working_memory), meta.goals, meta.cognitive_mode) == (
        {"beat": 110},
        ("g",),
        "reflect",
    )
    assert (meta.turn_count, meta.message_count, len(loaded.recent)) == (2, 4, 4)
    await store.update_state("s1", cognitive_mode="calm", token=token)
    meta = (await store.load("s1")).meta
    assert (dict(meta.working_memory), meta.goals, meta.cognitive_mode) == (
        {"beat": 110},
        ("g",),
        "calm",
    )
    assert await store.verify("s1") == records
    await store.append_turn("s1", commit(3, 4), token=token)
    meta = (await store.load("s1")).meta
    assert (meta.turn_count, dict(meta.working_memory)) == (3, {"beat": 110})
    assert (await store.export("s1"))["meta"]["working_memory"] == {"beat": 110}


async def test_update_state_is_fenced(store: OpenStore) -> None:
    """A stale token raises Fenced and writes nothing; a missing session is not found."""
    token = await fill(store, "s1", 1)
    await store.update_state("s1", working_memory={"beat": 1}, token=token)
    await store.release("s1", "w1", token)
    with pytest.raises(Fenced):
        await store.update_state("s1", working_memory={"beat": 2}, goals=("x",), token=token)
    meta = (await store.load("s1")).meta
    assert (dict(meta.working_memory), meta.goals) == ({"beat": 1}, ())
    with pytest.raises(SessionNotFound):
        await store.update_state("ghost", working_memory={}, token=0)


async def test_a_turn_must_continue_the_history(store: OpenStore) -> None:
    """A skipped turn number or a gap in seq is refused and writes nothing."""
    token = await fill(store, "s1", 1)
    with pytest.raises(StoreError, match="turn 3"):
        await store.append_turn("s1", commit(3, 2), token=token)
    with pytest.raises(StoreError, match="seq 3"):
        await store.append_turn("s1", commit(2, 3), token=token)
    meta = (await store.load("s1")).meta
    assert (meta.turn_count, meta.message_count) == (1, 2)
    assert len(await store.messages("s1")) == 2


async def test_lease_same_owner_keeps_token(store: OpenStore) -> None:
    """Re-acquiring a live lease as its owner renews it and keeps the token."""
    await store.create(SessionMeta(id="s1"))
    token = await store.acquire("s1", "w1", 30)
    assert token == 1
    assert await store.acquire("s1", "w1", 30) == token
    await store.renew("s1", "w1", token, 30)
    assert (await store.load("s1")).meta.version == token


async def test_lease_held_by_another_owner_is_busy(store: OpenStore) -> None:
    """A live lease held by another owner makes acquire raise SessionBusy."""
    await store.create(SessionMeta(id="s1"))
    await store.acquire("s1", "w1", 30)
    with pytest.raises(SessionBusy) as info:
        await store.acquire("s1", "w2", 30)
    assert not isinstance(info.value, Fenced)


async def test_expired_lease_is_taken_over_and_old_token_fenced(
    store: OpenStore, clock: ManualClock
) -> None:
    """After expiry another owner takes over; every write with the old token is Fenced."""
    old = await fill(store, "s1", 2, owner="w1")
    await store.acquire("s1", "w1", 0.05)
    clock.advance(0.1)
    new = await store.acquire("s1", "w2", 30)
    assert new > old
    before = await store.load("s1", recent=100)
    writes = [
        store.append_turn("s1", commit(3, 4), token=old),
        store.append_summary("s1", Message(0, "summary", "s", 0, 1.0), 1, token=old),
        store.save_checkpoint("s1", checkpoint(3), token=old),
        store.clear_checkpoint("s1", token=old),
        store.renew("s1", "w1", old, 30),
    ]
    for write in writes:
        with pytest.raises(Fenced) as info:
            await write
        assert (info.value.expected, info.value.actual, info.value.session_id) == (old, new, "s1")
    after = await store.load("s1", recent=100)
    assert after.recent == before.recent and after.meta.turn_count == 2
    assert after.checkpoint is None and after.summary is None
    await store.append_turn("s1", commit(3, 4), token=new)
    assert (await store.load("s1")).meta.turn_count == 3


async def test_a_lease_is_live_until_its_ttl_has_passed(
    store: OpenStore, clock: ManualClock
) -> None:
    """Just before its expiry another owner is still busy; just after, it takes over
    with a new token, and renewing moves the expiry on from the clock's time."""
    await store.create(SessionMeta(id="s1"))
    token = await store.acquire("s1", "w1", 30)
    clock.advance(29.9)
    with pytest.raises(SessionBusy, match=r"for 0\.1s more"):
        await store.acquire("s1", "w2", 30)
    await store.renew("s1", "w1", token, 30)
    clock.advance(29.9)
    with pytest.raises(SessionBusy):
        await store.acquire("s1", "w2", 30)
    clock.advance(0.2)
    assert await store.acquire("s1", "w2", 30) == token + 1


async def test_release_makes_the_token_stale(store: OpenStore) -> None:
    """After release the old token is fenced and anyone may acquire at once."""
    token = await fill(store, "s1", 1)
    await store.release("s1", "w1", token)
    await store.release("s1", "w1", token)  # already released: no error
    with pytest.raises(Fenced):
        await store.append_turn("s1", commit(2, 2), token=token)
    assert await store.acquire("s1", "w2", 30) > token


async def test_checkpoint_save_replace_clear(store: OpenStore) -> None:
    """The checkpoint is saved, replaced, loaded and cleared; a commit deletes it."""
    token = await fill(store, "s1", 1)
    await store.save_checkpoint("s1", checkpoint(2, "classify"), token=token)
    await store.save_checkpoint("s1", checkpoint(2, "recall"), token=token)
    cp = (await store.load("s1")).checkpoint
    assert cp is not None and cp.last_node == "recall" and dict(cp.context) == {"k": [1, 2]}
    assert cp == replace(checkpoint(2, "recall"), context=cp.context, trace=cp.trace)
    await store.clear_checkpoint("s1", token=token)
    assert (await store.load("s1")).checkpoint is None
    await store.save_checkpoint("s1", checkpoint(2), token=token)
    await store.append_turn("s1", commit(2, 2), token=token)
    assert (await store.load("s1")).checkpoint is None


async def test_summary_is_appended_and_loaded(store: OpenStore) -> None:
    """append_summary records the latest summary and summary_upto; originals stay."""
    token = await fill(store, "s1", 3)
    await store.append_summary("s1", Message(0, "summary", "first", 0, 1.0), 1, token=token)
    await store.append_summary("s1", Message(1, "summary", "second", 0, 2.0), 3, token=token)
    loaded = await store.load("s1", recent=2)
    assert loaded.summary is not None and loaded.summary.content == "second"
    assert loaded.meta.summary_upto == 3
    assert len(await store.messages("s1")) == 6
    with pytest.raises(StoreError):
        await store.append_summary("s1", Message(2, "summary", "x", 0, 3.0), 6, token=token)


async def test_list_and_delete(store: OpenStore) -> None:
    """list_sessions pages by id; delete removes everything and reports whether it did."""
    for sid in ("c", "a", "b"):
        await fill(store, sid, 1)
    assert [m.id for m in await store.list_sessions()] == ["a", "b", "c"]
    assert [m.id for m in await store.list_sessions(1, 1)] == ["b"]
    assert await store.delete("b") is True
    assert await store.delete("b") is False
    assert [m.id for m in await store.list_sessions()] == ["a", "c"]
    with pytest.raises(SessionNotFound):
        await store.load("b")
    await store.create(SessionMeta(id="b"))  # the id is free again, with no history
    assert (await store.load("b")).meta.message_count == 0


@pytest.mark.parametrize("bad", BAD_IDS)
async def test_bad_session_ids_are_refused(store: OpenStore, bad: str) -> None:
    """Path traversal, empty, NUL, hidden, overlong and odd ids raise InvalidSessionId."""
    with pytest.raises(InvalidSessionId):
        await store.create(SessionMeta(id=bad))
    for call in (
        store.load(bad),
        store.exists(bad),
        store.acquire(bad, "o", 1),
        store.delete(bad),
        store.messages(bad),
        store.export(bad),
    ):
        with pytest.raises(InvalidSessionId):
            await call


async def test_verify_counts_every_record(store: OpenStore) -> None:
    """verify() checks messages, turn records and summaries: it returns their number."""
    token = await fill(store, "s1", 4, per_turn=3)
    await store.append_summary("s1", Message(0, "summary", "s", 0, 1.0), 5, token=token)
    assert await store.verify("s1") == 4 * 3 + 4 + 1


async def test_traces_with_and_without_changed_keys_verify_and_travel(store: OpenStore) -> None:
    """A turn recorded before visits named their changed keys (no ``changed``) and one
    after (a list of key names) sit in one chain: both read back exactly, the chain
    verifies, and an export imports whole."""
    token = await fill(store, "s1", 1)  # the older shape of step
    step = {"id": "classify", "handler": "classify", "status": "success", "attempts": 1}
    new = commit(2, 2)
    record = msgspec.structs.replace(
        new.record, trace=({**step, "changed": ["intent", "input.text"]},)
    )
    await store.append_turn("s1", msgspec.structs.replace(new, record=record), token=token)
    turns = await store.turns("s1")
    assert "changed" not in turns[0].trace[0]
    assert dict(turns[1].trace[0])["changed"] == ["intent", "input.text"]
    assert await store.verify("s1") == 4 + 2
    doc = await store.export("s1")
    assert await store.delete("s1")
    await store.import_(doc)
    assert await store.turns("s1") == turns and await store.verify("s1") == 6


async def test_export_import_roundtrip(store: OpenStore) -> None:
    """An export imported elsewhere (here: after delete) gives back the same session."""
    token = await fill(store, "s1", 3)
    await store.append_summary("s1", Message(0, "summary", "s", 0, 1.0), 3, token=token)
    await store.save_checkpoint("s1", checkpoint(4), token=token)
    before = await store.load("s1", recent=100)
    turns = await store.turns("s1")
    doc = await store.export("s1")
    assert doc["format"] == "turngraph.session" and doc["schema"] == 2
    assert await store.delete("s1")
    meta = await store.import_(doc)
    after = await store.load("s1", recent=100)
    assert after.recent == before.recent and after.summary == before.summary
    assert after.checkpoint == before.checkpoint and await store.turns("s1") == turns
    assert (
        replace(meta, version=0)
        == replace(before.meta, version=0)
        == replace(after.meta, version=0)
    )
    assert await store.verify("s1") == 6 + 3 + 1


async def test_import_over_existing_needs_replace_and_fences(store: OpenStore) -> None:
    """Importing onto an existing id needs replace=True, which fences its old owner."""
    token = await fill(store, "s1", 2)
    doc = await store.export("s1")
    with pytest.raises(ImportRejected, match="already exists") as info:
        await store.import_(doc)
    assert "--replace" in str(info.value)  # the CLI flag, not only the keyword argument
    meta = await store.import_(doc, replace=True)
    assert meta.version > token
    with pytest.raises(Fenced):
        await store.append_turn("s1", commit(3, 4), token=token)


async def test_sessions_commit_concurrently(store: OpenStore) -> None:
    """Turns of different sessions may be committed concurrently."""

    async def worker(sid: str) -> None:
        await fill(store, sid, 5)

    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(worker, f"c{i}")
    for i in range(5):
        assert (await store.load(f"c{i}")).meta.turn_count == 5
        assert await store.verify(f"c{i}") == 15


@pytest.mark.parametrize("again", ["create", "import"])
async def test_a_session_made_again_never_reissues_a_token(store: OpenStore, again: str) -> None:
    """Delete a session and make it again under its id (new, or from its export): the
    new lease's token is past every token of the old one, so the old owner, whose
    lease expired meanwhile, is fenced out instead of writing into the new session."""
    stale = await fill(store, "s1", 1, owner="old")
    doc = await store.export("s1")
    assert await store.delete("s1")
    if again == "create":
        await store.create(SessionMeta(id="s1"))
    else:
        await store.import_(doc)
    token = await store.acquire("s1", "new", 60.0)
    assert token > stale
    with pytest.raises(Fenced):
        await store.append_turn("s1", commit(2, 2), token=stale)
    turns = 0 if again == "create" else 1
    assert (await store.load("s1")).meta.turn_count == turns
    await store.append_turn("s1", commit(turns + 1, 2 * turns), token=token)
