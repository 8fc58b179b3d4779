"""A store and an export written by format-1 code verify and read back whole today.

The fixtures were made by commit 72ad571 (see ``fixtures/make_format1.py``), whose
canonical JSON was the standard library's: each test first checks they really hold
format-1 text, so none of them could pass on data written by today's encoder.
"""

from __future__ import annotations

import copy
import json
import shutil
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sessions.errors import ImportRejected
from sessions.store import OpenStore, open_store, read_export
from sessions.store.base import Message, TurnCommit, TurnRecord
from sessions.store.codec import canonical_json, canonical_json_v1, record_version
from sessions.store.durable import STATE_COLUMNS, StateRow
from sessions.store.signing import Signer, load_key

from .fixtures.make_format1 import EXPORT, EXPORTED, STORE, Spec, secret, sessions

FIXTURES = Path(__file__).parent / "fixtures"
SECRET = secret(FIXTURES)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A copy of the format-1 store (opening a store may write to its file)."""
    path = tmp_path / "format1.db"
    shutil.copy(FIXTURES / STORE, path)
    return path


@pytest.fixture
async def old(db: Path) -> AsyncIterator[OpenStore]:
    """The copy, open with today's code."""
    async with open_store(f"sqlite:///{db}", secret=SECRET) as store:
        yield store


@pytest.fixture
async def target(store_url: str) -> AsyncIterator[OpenStore]:
    """An empty store of each backend under the fixtures' key (an export is checked
    with the importing store's key)."""
    async with open_store(store_url, secret=SECRET) as store:
        yield store


def _bodies(db: Path, sid: str) -> list[str]:
    with sqlite3.connect(db) as c:
        rows = c.execute("SELECT body FROM records WHERE session_id=? ORDER BY rseq", (sid,))
        return [body for (body,) in rows]


def _plain(value: Any) -> Any:
    """``value`` as format 1 stored it: JSON's view (integer keys became strings)."""
    return json.loads(canonical_json_v1(value))


def _messages(spec: Spec) -> tuple[Message, ...]:
    return tuple(m for c in spec.commits + spec.after_summary for m in c.messages)


def _turns(spec: Spec) -> tuple[TurnRecord, ...]:
    return tuple(c.record for c in spec.commits + spec.after_summary)


def test_the_fixtures_hold_format_1_text(db: Path) -> None:
    """Every record names no format (format 1), and the floats format 2 writes another
    way are there in format 1's form, in records, in a session row and in the export."""
    bodies = [b for spec in sessions() for b in _bodies(db, spec.meta.id)]
    assert len(bodies) == 25 and {record_version(b) for b in bodies} == {1}
    assert sum("1e-05" in b for b in bodies) >= 6 and any("1e+16" in b for b in bodies)
    with sqlite3.connect(db) as c:
        [(created,)] = c.execute("SELECT created_at FROM sessions WHERE id='tiny-created'")
    assert created == 1e-05
    text = (FIXTURES / EXPORT).read_text(encoding="utf-8")
    assert '"schema":1,' in text and "1e-05" in text and "1e+16" in text


async def test_every_session_verifies_and_reads_back(old: OpenStore) -> None:
    """Each chain verifies record for record; metadata, messages, turns, the summary
    and the pending checkpoint read back as they were written."""
    specs = sessions()
    listed = await old.list_sessions()
    assert [m.id for m in listed] == sorted(s.meta.id for s in specs)
    assert not any(m.tampered for m in listed)
    for spec in specs:
        sid, messages, turns = spec.meta.id, _messages(spec), _turns(spec)
        records = len(messages) + len(turns) + (spec.summary is not None)
        assert await old.verify(sid) == records
        assert await old.messages(sid, 0, 100) == messages
        assert await old.turns(sid, 0, 100) == turns
        loaded = await old.load(sid, recent=100)
        meta, state = loaded.meta, spec.state or {}
        assert meta.created_at == spec.meta.created_at and meta.agent_id == spec.meta.agent_id
        assert meta.config == _plain(spec.meta.config)
        assert meta.working_memory == _plain(state.get("working_memory", spec.meta.working_memory))
        assert meta.goals == state.get("goals", spec.meta.goals)
        assert meta.cognitive_mode == state.get("cognitive_mode", "default")
        assert (meta.turn_count, meta.message_count) == (len(turns), len(messages))
        assert loaded.recent == messages[len(messages) - len(loaded.recent) :]
        assert loaded.summary == (spec.summary[1] if spec.summary else None)
        assert loaded.checkpoint == spec.checkpoint


def _state_row(db: Path, sid: str) -> StateRow:
    with sqlite3.connect(db) as c:
        [row] = c.execute(f"SELECT {STATE_COLUMNS} FROM sessions WHERE id=?", (sid,))
    return StateRow.of(row, "u")


async def test_a_row_signed_over_format_1_text_verifies_until_its_next_write(
    db: Path, old: OpenStore
) -> None:
    """``tiny-created`` (created at 1e-05) has a row whose format-2 text differs from
    the format-1 text its MAC signs; it loads, and its next write seals format 2."""
    signer = Signer(load_key(SECRET))
    row = _state_row(db, "tiny-created")
    assert signer.tagged(b"state", row.text()) != row.state_mac  # format 2 alone would refuse
    assert (await old.load("tiny-created")).meta.created_at == 1e-05
    token = await old.acquire("tiny-created", "today", 60.0)
    await old.update_state("tiny-created", cognitive_mode="resealed", token=token)
    row = _state_row(db, "tiny-created")
    assert signer.tagged(b"state", row.text()) == row.state_mac
    assert (await old.load("tiny-created")).meta.cognitive_mode == "resealed"


async def test_a_format_1_chain_continues_in_format_2(db: Path, old: OpenStore) -> None:
    """A turn appended today chains onto the format-1 records; the whole chain, old
    and new, verifies, and the new records name format 2."""
    spec = sessions()[0]
    messages, turns = _messages(spec), _turns(spec)
    token = await old.acquire(EXPORTED, "today", 60.0)
    record = TurnRecord(5, "success", "t5", "g", ({"id": "done", "ms": 1e-05},), 1.5e-05)
    new = (Message(len(messages), "user", "today ☕ 1e-05", 5, 1e16),)
    await old.append_turn(EXPORTED, TurnCommit(record, new), token=token)
    assert await old.verify(EXPORTED) == len(messages) + len(turns) + 1 + 2
    assert await old.messages(EXPORTED, 0, 100) == messages + new
    assert (await old.turns(EXPORTED, 0, 100))[-1] == record
    *_, message_body, turn_body = _bodies(db, EXPORTED)
    assert record_version(message_body) == record_version(turn_body) == 2
    assert '"ts":1e16' in message_body and '"ms":0.00001' in turn_body


async def test_a_format_1_session_exports_and_imports_today(
    old: OpenStore, target: OpenStore
) -> None:
    """Today's export of a format-1 session is schema 2 and imports into every backend."""
    spec = sessions()[0]
    doc = await old.export(EXPORTED)
    assert doc["schema"] == 2
    meta = await target.import_(doc)
    assert meta.working_memory == _plain(spec.state and spec.state["working_memory"])
    assert await target.messages(EXPORTED, 0, 100) == _messages(spec)
    assert await target.turns(EXPORTED, 0, 100) == _turns(spec)
    assert (await target.load(EXPORTED)).checkpoint == spec.checkpoint


async def test_the_format_1_export_imports_into_every_backend(target: OpenStore) -> None:
    """The schema-1 file's signature is checked over format-1 text (format 2's differs)
    and the session it holds arrives whole, re-signed in format 2."""
    spec = sessions()[0]
    doc = read_export(FIXTURES / EXPORT)
    rest = {k: v for k, v in doc.items() if k != "signature"}
    assert canonical_json(rest) != canonical_json_v1(rest)
    meta = await target.import_(doc)
    assert meta.id == EXPORTED and meta.created_at == spec.meta.created_at
    assert await target.verify(EXPORTED) == 13
    assert await target.messages(EXPORTED, 0, 100) == _messages(spec)
    assert await target.turns(EXPORTED, 0, 100) == _turns(spec)
    loaded = await target.load(EXPORTED, recent=100)
    assert loaded.summary == (spec.summary and spec.summary[1])
    assert loaded.checkpoint == spec.checkpoint


async def test_an_edited_format_1_export_is_refused(target: OpenStore) -> None:
    """Format 1's signature check is a real check: one changed value fails it."""
    doc = read_export(FIXTURES / EXPORT)
    bad = copy.deepcopy(doc)
    bad["messages"][1]["meta"]["odd"]["tiny"] = 2e-05
    with pytest.raises(ImportRejected, match="bad signature"):
        await target.import_(bad)
    assert not await target.exists(EXPORTED)
