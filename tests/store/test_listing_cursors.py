"""Any text is a listing cursor: odd ones (NUL, a lone surrogate as Python makes of
command-line bytes that are not UTF-8, LIKE's wildcards, non-ASCII, very long, a deleted
id, one beyond the last) list the ids above them in the order the memory store's
Python comparison gives, on every backend, never an error.  A SQLite id that is not
UTF-8 (a row edited behind the store's back) is walked past once, not relisted forever.
"""

from __future__ import annotations

import pytest

from sessions.store import OpenStore, open_store
from sessions.store.base import Listed, SessionMatch, SessionMeta

from . import SECRET
from .conftest import Raw

IDS = ["-a", "0", "A", "a", "a-b", "a.b", "aB", "a_b", "b", "gone", "z"]
CURSORS = [
    "",
    "a\x00b",
    "\x00",
    "a\udcff",
    "\udcff",
    "\ud800x",
    "%",
    "_",
    "a_",
    "\\",
    "é",
    "a" * 100_000,
    "gone",
    "zz",
]


@pytest.mark.parametrize("cursor", CURSORS, ids=repr)
async def test_an_odd_cursor_lists_the_ids_above_it_on_every_backend(
    store: OpenStore, cursor: str
) -> None:
    for sid in IDS:
        await store.create(SessionMeta(sid))
    await store.delete("gone")
    expected = [i for i in sorted(IDS) if i > cursor and i != "gone"]
    for agent in (None, "default"):
        page = await store.list_sessions(0, 100, match=SessionMatch(agent_id=agent, after=cursor))
        assert [m.id for m in page] == expected
        assert isinstance(page, Listed) and page.scanned_to is None


@pytest.mark.parametrize("limit", [1, 2, 3])
async def test_a_walk_passes_a_sqlite_id_that_is_not_utf8_once(tmp_path: str, limit: int) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    async with open_store(url, secret=SECRET) as store:
        for sid in ("a", "b", "bz", "c", "d"):
            await store.create(SessionMeta(sid))
    Raw(url).execute("UPDATE sessions SET id = CAST(X'62ff' AS TEXT) WHERE id = 'bz'")
    async with open_store(url, secret=SECRET) as store:
        seen: list[str] = []
        after: str | None = ""
        while after is not None and len(seen) < 10:
            page = await store.list_sessions(0, limit, match=SessionMatch(after=after))
            seen += [f"{m.id}{'!' if m.tampered else ''}" for m in page]
            after = page.scanned_to if isinstance(page, Listed) else None
    assert seen == ["a", "b", "b\\xff!", "c", "d"]
    async with open_store(url, secret=SECRET) as store:  # the listed text stands for the bytes
        page = await store.list_sessions(0, 5, match=SessionMatch(after="b\\xff"))
        assert [m.id for m in page] == ["c", "d"]
