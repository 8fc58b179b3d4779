"""``GET /sessions``'s query parameters over real HTTP: every bad ``offset`` or
``limit`` (negative, zero limit, too large, not a number, a digit Python's ``int``
refuses, thousands of digits) is a 400 naming the parameter, never a 500, and so is
such a turn number in a path; any text is a cursor (``after``), a page above it."""

from __future__ import annotations

import anyio
import pytest

from sessions import SessionManager
from sessions.store.base import SessionMeta

from .serve_kit import Running

BAD = [
    ("limit", "0"),
    ("limit", "-1"),
    ("limit", "1001"),
    ("limit", "x"),
    ("limit", "1.5"),
    ("limit", "\u00b2"),  # "²": str.isdigit() says yes, int() refuses it
    ("limit", "\u0663"),  # "٣", an Arabic-Indic three: not the ASCII the docs promise
    ("offset", "-3"),
    ("offset", "9" * 5000),  # beyond int()'s 4300-digit limit for text
    ("offset", "\u00b9"),
]


@pytest.mark.parametrize(("name", "value"), BAD, ids=repr)
def test_a_bad_page_parameter_is_a_400_naming_it(served: Running, name: str, value: str) -> None:
    r = served.client.get("/sessions", params={name: value})
    assert r.status_code == 400, r.text
    assert f"query parameter {name}=" in r.json()["error"]["message"]


def test_any_text_is_a_cursor(db: str, served: Running) -> None:
    async def seed() -> None:
        async with SessionManager(db) as manager:
            for sid in ("-a", "A", "a", "a_b", "b"):
                await manager.store.create(SessionMeta(sid))

    anyio.run(seed)
    for after, ids in [
        ("a\x00z", ["a_b", "b"]),
        ("%", ["-a", "A", "a", "a_b", "b"]),
        ("\u00e9", []),
        ("a" * 5_000, ["b"]),
        ("_", ["a", "a_b", "b"]),
    ]:
        body = served.client.get("/sessions", params={"after": after, "offset": "0"}).json()
        assert [s["id"] for s in body["sessions"]] == ids, after
        assert body["next"] is None


@pytest.mark.parametrize("n", ["\u00b2", "0", "9" * 5000])
def test_a_bad_turn_number_in_the_path_is_a_400(served: Running, n: str) -> None:
    r = served.client.get(f"/sessions/s1/turns/{n}")
    assert r.status_code == 400, r.text
    assert "expected a turn number from 1" in r.json()["error"]["message"]
