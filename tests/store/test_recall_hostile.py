"""Recall queries a user (or a model) writes are data, never query syntax: FTS5 and
``to_tsquery`` operators, quotes, very long and non-ASCII queries never error and never
reach another session's or agent's memory."""

from __future__ import annotations

import pytest

from engine.messages import MemoryItem
from sessions.store import SessionMeta, open_store
from sessions.store.recall import StoreMemory

from . import SECRET

HOSTILE = [
    '"',
    'otters" OR "secret',
    "otters NEAR(secret, 5)",
    "otters*",
    "*",
    "words: secret",
    "{words} : secret",
    "((otters",
    "otters))",
    "^otters",
    "otters AND NOT secret",
    "-secret",
    "otters & secret | !x",
    "otters <-> secret",
    "otters:*",
    "'",
    "\\",
    "\x00otters",
    "München Привет 東京 otters",
    "ｏｔｔｅｒｓ",
    "",
    "   ",
]


@pytest.mark.parametrize("query", HOSTILE)
async def test_hostile_queries_stay_in_scope(store_url: str, query: str) -> None:
    async with open_store(store_url, secret=SECRET) as store:
        await store.create(SessionMeta("mine", agent_id="a1"))
        await store.create(SessionMeta("theirs", agent_id="a2"))
        memory = StoreMemory(store)  # type: ignore[arg-type]
        await memory.remember([MemoryItem("otters hold hands")], session_id="mine")
        await memory.remember([MemoryItem("secret otters password")], session_id="theirs")
        found = await memory.recall(query, session_id="mine", limit=50)
        assert all(item.text == "otters hold hands" for item in found)
        found = await memory.recall(query, session_id="mine", agent_id="a1", limit=50)
        assert all(item.text == "otters hold hands" for item in found)


async def test_a_very_long_query_is_answered(store_url: str) -> None:
    """Tens of thousands of distinct words (a pasted document) still recall (by its
    first words; PostgreSQL refused the whole as too deep a query)."""
    query = "otters " + " ".join(f"w{i}" for i in range(40_000))
    async with open_store(store_url, secret=SECRET) as store:
        await store.create(SessionMeta("mine"))
        memory = StoreMemory(store)  # type: ignore[arg-type]
        await memory.remember([MemoryItem("otters hold hands")], session_id="mine")
        found = await memory.recall(query, session_id="mine")
        assert [item.text for item in found] == ["otters hold hands"]
