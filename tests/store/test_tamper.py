"""Tamper evidence: edits behind the store's back are caught, named, and never loaded."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from sessions.errors import SessionTampered, StoreVersionUnsupported
from sessions.store import OpenStore, open_store
from sessions.store.codec import CODEC_VERSION, canonical_json_v1
from sessions.store.signing import GENESIS, Signer, load_key, verify_span

from . import SECRET, commit, fill
from .conftest import Raw

Check = Callable[[OpenStore], Awaitable[object]]


def _rseq(raw: Raw, kind: str, key: int) -> int:
    [(rseq,)] = raw.execute(
        "SELECT rseq FROM records WHERE session_id='s1' AND kind=? AND key=?", (kind, key)
    )
    return int(rseq)


async def _tampered(store: OpenStore, call: Check, record: int | None = None) -> SessionTampered:
    with pytest.raises(SessionTampered) as info:
        await call(store)
    assert info.value.session_id == "s1"
    if record is not None:
        assert info.value.record == record
    return info.value


async def test_untouched_session_verifies(durable: OpenStore) -> None:
    """The baseline: an honest session loads and verifies."""
    await fill(durable, "s1", 5)
    assert await durable.verify("s1") == 15
    assert len((await durable.load("s1", recent=4)).recent) == 4


async def test_byte_flip_in_message_content(durable: OpenStore, raw: Raw) -> None:
    """One changed character in a stored message fails its MAC, on every read path."""
    await fill(durable, "s1", 5)
    r = _rseq(raw, "message", 8)
    raw.execute(
        "UPDATE records SET body=replace(body, 'hello 8', 'hellO 8') "
        "WHERE session_id='s1' AND rseq=?",
        (r,),
    )
    err = await _tampered(durable, lambda s: s.load("s1", recent=3), r)
    assert "MAC mismatch" in err.reason and "'s1'" in str(err)
    await _tampered(durable, lambda s: s.messages("s1", 7, 2), r)
    await _tampered(durable, lambda s: s.verify("s1"), r)
    await _tampered(durable, lambda s: s.export("s1"), r)


async def test_old_edit_outside_the_window_is_found_by_paging_and_verify(
    durable: OpenStore, raw: Raw
) -> None:
    """An edit older than the loaded window is caught when that page or verify() reads it."""
    await fill(durable, "s1", 10)
    r = _rseq(raw, "message", 1)
    raw.execute(
        "UPDATE records SET body=replace(body, 'hello 1', 'HELLO 1') "
        "WHERE session_id='s1' AND rseq=?",
        (r,),
    )
    assert len((await durable.load("s1", recent=4)).recent) == 4
    await _tampered(durable, lambda s: s.messages("s1", 0, 5), r)
    await _tampered(durable, lambda s: s.verify("s1"), r)


async def test_deleted_record(durable: OpenStore, raw: Raw) -> None:
    """A deleted message leaves a gap in the chain."""
    await fill(durable, "s1", 5)
    r = _rseq(raw, "message", 6)
    raw.execute("DELETE FROM records WHERE session_id='s1' AND rseq=?", (r,))
    await _tampered(durable, lambda s: s.verify("s1"), r)
    await _tampered(durable, lambda s: s.load("s1", recent=10))
    await _tampered(durable, lambda s: s.messages("s1", 5, 3))


async def test_swapped_records(durable: OpenStore, raw: Raw) -> None:
    """Two messages swapped in place (content, MACs and all) break the chain."""
    await fill(durable, "s1", 5)
    a, b = _rseq(raw, "message", 2), _rseq(raw, "message", 3)
    [ra] = raw.execute(
        "SELECT body, prev_mac, mac FROM records WHERE session_id='s1' AND rseq=?", (a,)
    )
    [rb] = raw.execute(
        "SELECT body, prev_mac, mac FROM records WHERE session_id='s1' AND rseq=?", (b,)
    )
    for rseq, row in ((a, rb), (b, ra)):
        raw.execute(
            "UPDATE records SET body=?, prev_mac=?, mac=? WHERE session_id='s1' AND rseq=?",
            (*row, rseq),
        )
    await _tampered(durable, lambda s: s.verify("s1"), a)
    await _tampered(durable, lambda s: s.messages("s1", 0, 10), a)


async def test_truncated_head(durable: OpenStore, raw: Raw) -> None:
    """Dropping the newest records is caught: the session head no longer matches."""
    await fill(durable, "s1", 5)
    raw.execute("DELETE FROM records WHERE session_id='s1' AND rseq>=12")
    err = await _tampered(durable, lambda s: s.load("s1", recent=2))
    assert "truncated" in err.reason or "missing" in err.reason
    await _tampered(durable, lambda s: s.verify("s1"), 12)


async def test_session_row_rolled_back_to_match_a_truncation(durable: OpenStore, raw: Raw) -> None:
    """Rewinding the counters and head to hide a truncation fails the state MAC."""
    await fill(durable, "s1", 5)
    [(head,)] = raw.execute("SELECT mac FROM records WHERE session_id='s1' AND rseq=11")
    raw.execute("DELETE FROM records WHERE session_id='s1' AND rseq>=12")
    raw.execute(
        "UPDATE sessions SET record_count=12, turn_count=4, message_count=8, head_mac=? "
        "WHERE id='s1'",
        (head,),
    )
    err = await _tampered(durable, lambda s: s.load("s1"))
    assert "state" in err.reason


async def test_edited_working_memory(durable: OpenStore, raw: Raw) -> None:
    """The session row's memory and counters are signed too."""
    token = await fill(durable, "s1", 0)
    await durable.append_turn("s1", commit(1, 0, working_memory={"role": "user"}), token=token)
    raw.execute("UPDATE sessions SET working_memory='{\"role\":\"admin\"}' WHERE id='s1'")
    await _tampered(durable, lambda s: s.load("s1"))


async def test_list_flags_a_tampered_session_and_lists_the_others(
    durable: OpenStore, raw: Raw
) -> None:
    """One edited session row does not hide the store: list_sessions still lists every
    session, the tampered one flagged and reduced to its id (its values are unverified)."""
    for sid in ("s0", "s1", "s2"):
        await fill(durable, sid, 1)
    raw.execute("UPDATE sessions SET turn_count=9 WHERE id='s1'")
    listed = await durable.list_sessions()
    assert [(m.id, m.tampered) for m in listed] == [("s0", False), ("s1", True), ("s2", False)]
    assert listed[0].turn_count == 1 and listed[1].turn_count == 0
    await _tampered(durable, lambda s: s.load("s1"))


async def test_update_state_neither_launders_nor_hides_tampering(
    durable: OpenStore, raw: Raw
) -> None:
    """update_state refuses an edited row (it must not re-sign it), and a row it wrote
    is signed like any other."""
    token = await fill(durable, "s1", 1)
    await durable.update_state("s1", working_memory={"role": "user"}, token=token)
    assert dict((await durable.load("s1")).meta.working_memory) == {"role": "user"}
    raw.execute("UPDATE sessions SET working_memory='{\"role\":\"admin\"}' WHERE id='s1'")
    await _tampered(durable, lambda s: s.load("s1"))
    await _tampered(durable, lambda s: s.update_state("s1", goals=("g",), token=token))
    await _tampered(durable, lambda s: s.load("s1"))


async def test_unsigned_record_is_refused(durable: OpenStore, raw: Raw) -> None:
    """A record with its MAC stripped is refused, not re-signed."""
    await fill(durable, "s1", 3)
    raw.execute("UPDATE records SET mac=? WHERE session_id='s1' AND rseq=4", (b"",))
    err = await _tampered(durable, lambda s: s.verify("s1"), 4)
    assert "unsigned" in err.reason
    await _tampered(durable, lambda s: s.verify("s1"), 4)  # still refused: nothing re-signed


async def test_data_under_another_key(durable_url: str) -> None:
    """Opening the data with a different key: every session is refused."""
    async with open_store(durable_url, secret=SECRET) as s:
        await fill(s, "s1", 2)
    async with open_store(durable_url, secret=b"another key") as other:
        await _tampered(other, lambda s: s.load("s1"))
        await _tampered(other, lambda s: s.verify("s1"))


async def test_records_resigned_with_another_key(
    durable_url: str, raw: Raw, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records forged with another key (consistent among themselves) are caught."""
    async with open_store(durable_url, secret=SECRET) as s:
        await fill(s, "s1", 2)
    raw.execute("DELETE FROM records WHERE session_id='s1'")
    raw.execute("DELETE FROM sessions WHERE id='s1'")
    with monkeypatch.context() as env:
        env.setenv("TURNGRAPH_WITNESS", "off")  # the forger does not share our witness
        async with open_store(durable_url, secret=b"forger") as forger:
            await fill(forger, "s1", 2)
    [(state,)] = raw.execute("SELECT state_mac FROM sessions WHERE id='s1'")
    async with open_store(durable_url, secret=SECRET) as s:
        await _tampered(s, lambda st: st.load("s1"))
        raw.execute("UPDATE sessions SET state_mac=? WHERE id='s1'", (state,))
        await _tampered(s, lambda st: st.verify("s1"))


async def test_record_moved_from_another_session(durable: OpenStore, raw: Raw) -> None:
    """A validly signed record copied from another session does not fit this chain."""
    await fill(durable, "s1", 2)
    await fill(durable, "s2", 2)
    [row] = raw.execute("SELECT body, prev_mac, mac FROM records WHERE session_id='s2' AND rseq=0")
    raw.execute(
        "UPDATE records SET body=?, prev_mac=?, mac=? WHERE session_id='s1' AND rseq=0", row
    )
    err = await _tampered(durable, lambda s: s.verify("s1"), 0)
    assert "another session" in err.reason


async def test_edited_checkpoint(durable: OpenStore, raw: Raw) -> None:
    """A checkpoint edited in place is refused on load."""
    from .test_store_suite import checkpoint

    token = await fill(durable, "s1", 1)
    await durable.save_checkpoint("s1", checkpoint(2), token=token)
    raw.execute("UPDATE checkpoints SET body=replace(body, 'llm_call', 'tool_exec')")
    err = await _tampered(durable, lambda s: s.load("s1"))
    assert "checkpoint" in err.reason


async def test_a_checkpoints_step_count_is_signed(durable: OpenStore, raw: Raw) -> None:
    """The visits a paused or failed turn has made (``steps``: what bounds the runs that
    go on) cannot be lowered or dropped in the database: either is a MAC mismatch."""
    import dataclasses

    from .test_store_suite import checkpoint

    token = await fill(durable, "s1", 1)
    counted = dataclasses.replace(checkpoint(2), steps=9)
    await durable.save_checkpoint("s1", counted, token=token)
    assert (await durable.load("s1")).checkpoint == counted
    for edit in (
        "replace(body, '\"steps\":9', '\"steps\":0')",
        "replace(body, '\"steps\":9,', '')",
    ):
        await durable.save_checkpoint("s1", counted, token=token)
        raw.execute(f"UPDATE checkpoints SET body={edit}")
        assert '"steps":9' not in raw.execute("SELECT body FROM checkpoints")[0][0]
        err = await _tampered(durable, lambda s: s.load("s1"))
        assert "checkpoint MAC mismatch" in err.reason


async def test_record_in_a_newer_format_is_refused_as_such(durable: OpenStore, raw: Raw) -> None:
    """A body signed with the right key but naming a format this code does not know
    (written by newer code) is refused as an unsupported version, not read."""
    await fill(durable, "s1", 3)
    [(body, prev)] = raw.execute(
        "SELECT body, prev_mac FROM records WHERE session_id='s1' AND rseq=8"
    )
    newer = body.replace(f',"v":{CODEC_VERSION}}}', f',"v":{CODEC_VERSION + 1}}}')
    assert newer != body
    mac = Signer(load_key(SECRET)).mac(bytes(prev), newer)
    raw.execute("UPDATE records SET body=?, mac=? WHERE session_id='s1' AND rseq=8", (newer, mac))
    with pytest.raises(StoreVersionUnsupported, match=f"format {CODEC_VERSION + 1}"):
        await durable.verify("s1")


def test_format_1_records_verify_only_where_they_were_signed() -> None:
    """Bodies without ``"v"`` (format 1) verify, by the fast path and record by record;
    one signed for another position is refused, named."""
    signer = Signer(load_key(SECRET))
    bodies = [canonical_json_v1({"data": {"i": i}, "kind": "message", "rseq": i, "session": "s1"})
              for i in range(3)]  # fmt: skip
    prev, rows = GENESIS, []
    for rseq, body in enumerate(bodies):
        mac = signer.mac(prev, body)
        rows.append((rseq, "message", rseq, body, prev, mac))
        prev = mac
    assert len(verify_span(signer, "u", "s1", rows, first=0, head=(3, prev))) == 3
    moved = canonical_json_v1({"data": {"i": 1}, "kind": "message", "rseq": 9, "session": "s1"})
    rows[1] = (1, "message", 1, moved, rows[0][5], signer.mac(rows[0][5], moved))
    with pytest.raises(SessionTampered, match="another session or position"):
        verify_span(signer, "u", "s1", rows[:2], first=0)
