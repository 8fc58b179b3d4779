"""A caller cannot break a session: bad input, unstorable output, bad ids, escaping errors.

Each case runs on ``memory:``, SQLite and PostgreSQL through a real
:class:`~sessions.SessionManager`; after each refusal the session is loaded again by a
fresh manager (as another process would) and must still take turns.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from engine.graph import Node
from engine.messages import MemoryItem
from sessions import Limits, SessionManager
from sessions.errors import (
    InvalidInput,
    InvalidSessionId,
    SessionBusy,
    SessionNotFound,
    Unstorable,
)
from sessions.store import ManualClock, OpenStore, open_store
from sessions.store.base import SessionMeta

from ..sessions.session_kit import chain_graph, reply_registry
from . import SECRET, commit


def _manager(url: str, **handlers: Any) -> SessionManager:
    return SessionManager(
        url,
        registry=reply_registry(**handlers),
        turn_graph=chain_graph(),
        limits=Limits(compaction_threshold_tokens=None),
        store_secret=SECRET,
    )


async def _reload_and_send(url: str) -> tuple[int, list[str]]:
    """A fresh manager loads the session, takes one more turn, and reports what it holds."""
    async with _manager(url) as m:
        s = await m.get("s1")
        result = await s.send("after")
        assert result.ok and result.reply == "re: after"
        return s.turn_count, [msg.content for msg in await s.all()]


@pytest.mark.parametrize("bad", [5, None, 1.5, ["a"], b"bytes", "lone \ud800 surrogate"])
async def test_send_refuses_what_is_not_a_str_before_writing(store_url: str, bad: object) -> None:
    """send() with a non-str, or a str with a lone surrogate, raises InvalidInput and
    writes nothing: the session loads and works afterwards."""
    async with _manager(store_url) as m:
        s = await m.get_or_create("s1")
        assert (await s.send("hi")).ok
        with pytest.raises(InvalidInput, match="s1"):
            await s.send(bad)  # type: ignore[arg-type]
        assert s.turn_count == 1 and s.phase == "idle"
        assert (await s.send("again")).ok
    if store_url != "memory:":
        assert await _reload_and_send(store_url) == (
            3,
            ["hi", "re: hi", "again", "re: again", "after", "re: after"],
        )


class _BadStr:
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


def _deep() -> list[Any]:
    root: list[Any] = []
    cur = root
    for _ in range(20_000):
        nxt: list[Any] = []
        cur.append(nxt)
        cur = nxt
    return root


_BAD_OUTPUTS: dict[str, dict[str, Any]] = {
    "set in working memory": {"memory.working": {"tags": {1, 2}}},
    "object in working memory": {"memory.working": {"obj": object()}},
    "deep working memory": {"memory.working": {"deep": _deep()}},
    "NaN in working memory": {"memory.working": {"x": float("nan")}},
    "reply whose str() raises": {"reply": _BadStr()},
    "bytes key": {"memory.working": {b"k": 1}},
    "surrogate reply": {"reply": "x\udc80"},
    "goal whose str() raises": {"goals": [_BadStr()]},
}


@pytest.mark.parametrize("case", sorted(_BAD_OUTPUTS))
async def test_unstorable_output_fails_the_turn_and_keeps_the_session(
    store_url: str, case: str
) -> None:
    """Handler output that cannot be stored fails that turn with Unstorable; nothing
    unreadable is committed, working memory is unchanged, later turns work (here and
    after a reload)."""
    poison = {"on": True}

    def fmt(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
        if poison["on"] and ctx["session.input"] == "poison":
            return _BAD_OUTPUTS[case]
        return {"reply": f"re: {ctx['session.input']}", "memory.working": {"ok": 1}}

    async with _manager(store_url, format=fmt) as m:
        s = await m.get_or_create("s1")
        assert (await s.send("hi")).ok
        result = await s.send("poison")
        assert result.status == "fail" and isinstance(result.error, Unstorable)
        assert "s1" in str(result.error)
        assert s.turn_count == 2 and dict(s.working_memory) == {"ok": 1}
        assert (await s.send("next")).ok
        assert [msg.content for msg in await s.all()] == ["hi", "re: hi", "next", "re: next"]
    if store_url != "memory:":
        turns, contents = await _reload_and_send(store_url)
        assert turns == 4 and contents[-2:] == ["after", "re: after"]


async def test_bad_session_ids_are_typed(store_url: str) -> None:
    """get / get_or_create / create with a non-string id raise InvalidSessionId."""
    async with _manager(store_url) as m:
        for bad in (5, None, 1.5, b"s1", ["s1"]):
            for call in (m.get, m.get_or_create):
                with pytest.raises(InvalidSessionId):
                    await call(bad)  # type: ignore[arg-type]


class _Id(str):
    """A ``str`` subclass, as an enum or a typed-id library hands out."""


async def test_a_str_subclass_id_is_its_plain_value(store_url: str) -> None:
    """An id that is a ``str`` subclass names the same session as its plain value on
    every store (the memory store said "no such session" right after creating it)."""
    async with _manager(store_url) as m:
        s = await m.get_or_create(_Id("s1"))
        assert (await s.send("hi")).ok and type(s.id) is str
        assert await m.get(_Id("s1")) is s
        assert (await m.store.load(_Id("s1"))).meta.turn_count == 1
    if store_url != "memory:":
        assert (await _reload_and_send(store_url))[0] == 2


@pytest.mark.parametrize(
    "error", [SessionNotFound("nobody", "no such session"), ValueError("mine")]
)
async def test_errors_leave_the_manager_block_unwrapped(store_url: str, error: Exception) -> None:
    """A typed error (or the user's own) raised inside ``async with SessionManager``
    leaves the block as itself, not inside an ExceptionGroup."""

    async def raise_inside() -> None:
        async with _manager(store_url) as m:
            await m.get_or_create("s1")
            raise error

    async def not_found_inside() -> None:
        async with _manager(store_url) as m:
            await m.get("nobody")

    with pytest.raises(type(error)) as info:
        await raise_inside()
    assert info.value is error
    with pytest.raises(SessionNotFound):
        await not_found_inside()


async def test_manager_opens_a_store_handed_to_it_unopened(store_url: str) -> None:
    """SessionManager(store=open_store(url)) opens the store it was given unopened, and
    closes it again on exit (a store opened by the caller stays open)."""
    store = open_store(store_url, secret=SECRET)
    async with SessionManager(
        store, registry=reply_registry(), turn_graph=chain_graph(), store_secret=SECRET
    ) as m:
        assert (await (await m.get_or_create("s1")).send("hi")).ok
    async with store:  # closed by the manager, so it can be opened again
        async with SessionManager(store, registry=reply_registry(), turn_graph=chain_graph()) as m:
            assert (await m.get("s1")).turn_count == 1
        assert await store.exists("s1")  # still open: the caller opened it


async def test_two_managers_with_the_same_owner_never_both_write(
    store: OpenStore, clock: ManualClock
) -> None:
    """Two managers configured with one ``owner`` are still two lease holders: the
    second gets SessionBusy while the first holds the session."""
    async with (
        SessionManager(store, registry=reply_registry(), turn_graph=chain_graph(), owner="w") as a,
        SessionManager(store, registry=reply_registry(), turn_graph=chain_graph(), owner="w") as b,
    ):
        s = await a.get_or_create("s1")
        with pytest.raises(SessionBusy):
            await b.get_or_create("s1")
        assert a.owner != b.owner and a.owner.startswith("w~")
        assert (await s.send("only a writes")).ok


async def test_a_crashed_owners_session_is_taken_over_after_its_lease_ttl(
    store: OpenStore, clock: ManualClock
) -> None:
    """A holder that died without releasing (its lease left in the store) blocks the
    session for at most ``lease_ttl`` seconds; then a new manager takes it over."""
    await store.create(SessionMeta(id="s1"))
    await store.acquire("s1", "crashed~1234", 5.0)  # what a killed process leaves behind
    async with SessionManager(
        store, registry=reply_registry(), turn_graph=chain_graph(), owner="crashed", lease_ttl=5.0
    ) as m:
        with pytest.raises(SessionBusy, match="crashed"):
            await m.get_or_create("s1")
        clock.advance(5.1)
        assert (await (await m.get_or_create("s1")).send("taken over")).ok


def test_the_cli_refuses_an_unencodable_message(tmp_path: Path) -> None:
    """``-m`` with bytes that are not UTF-8 (a lone surrogate in argv) and ``--session``:
    one line naming the bad argument, exit 2, nothing stored."""
    from graphs import graph_source

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    argv: list[str | bytes] = [str(graph_source("turn.dot")), "-m", b"bad \xff byte"]
    run = _cli(*argv, "--session", "s1", "--store", url)
    assert run.returncode == 2 and run.stderr.count(b"\n") == 1
    assert run.stderr.startswith(b"-m: error:") and b"UTF-8" in run.stderr
    assert b"bad" not in _cli("sessions", "show", "s1", "--store", url).stdout


def _cli(*argv: str | bytes) -> subprocess.CompletedProcess[bytes]:
    """``python -m engine.run ARGV`` in a child process (as a user runs it)."""
    env = {**os.environ, "TURNGRAPH_SECRET": SECRET.decode()}
    cmd = [sys.executable, "-m", "engine.run", *argv]
    return subprocess.run(cmd, capture_output=True, env=env, timeout=120, check=False)


async def test_stream_refuses_bad_input_before_it_starts(store_url: str) -> None:
    """``session.stream()`` checks its input as ``send()`` does, when it is called."""
    async with _manager(store_url) as m:
        s = await m.get_or_create("s1")
        for bad in (5, None, "x\ud800"):
            with pytest.raises(InvalidInput):
                s.stream(bad)  # type: ignore[arg-type]
        assert s.turn_count == 0
        events = [e async for e in s.stream("hi")]
        assert events and s.turn_count == 1


_STEP = {"id": "n", "handler": "h", "status": "success", "attempts": 1, "duration_ms": 0.5}


@pytest.mark.parametrize(
    "change",
    [
        {"trace": ({**_STEP, "reason": "bad \udc80"},)},
        {"trace": ({**_STEP, "changed": ["ok", "bad \udc80"]},)},
        {"trace": ({**_STEP, "usage": {1, 2}},)},
        {"trace": ({**_STEP, "duration_ms": float("inf")},)},
        {"trace": ({**_STEP, 3: "int key"},)},
        {"error": "bad \ud800"},
        {"content": "bad \ud800"},
        {"meta": {"k": b"bytes"}},
        {"working_memory": {"k": float("nan")}},
        {"goals": ("ok", "bad \udc80")},
        {"cognitive_mode": "bad \udc80"},
    ],
)
def test_the_memory_stores_cheap_check_refuses_what_the_encoder_refuses(
    change: dict[str, Any],
) -> None:
    """check_commit (memory store) and commit_json (durable stores) refuse alike."""
    from types import MappingProxyType

    from sessions.store.base import Message, TurnCommit, TurnRecord
    from sessions.store.codec import check_commit, commit_json

    def build(**kw: Any) -> TurnCommit:
        meta = MappingProxyType(kw["meta"]) if "meta" in kw else None
        msg = Message(0, "user", kw.get("content", "hi"), 1, 1.0)
        if meta is not None:
            msg = Message(0, "user", "hi", 1, 1.0, meta)
        record = TurnRecord(
            1, "success", "s:1", "g", kw.get("trace", (_STEP,)), 1.0, kw.get("error")
        )
        return TurnCommit(
            record,
            (msg,),
            working_memory=kw.get("working_memory"),
            goals=kw.get("goals"),
            cognitive_mode=kw.get("cognitive_mode"),
        )

    check_commit(build(), "memory:", "s")  # a plain commit passes both
    commit_json(build(), "memory:", "s")
    for check in (check_commit, commit_json):
        with pytest.raises(Unstorable):
            check(build(**change), "memory:", "s")


@pytest.mark.parametrize(
    "item",
    [MemoryItem("a lone \ud800 surrogate"), MemoryItem("ok", "fact", 0.0, {"x": {1, 2}})],
    ids=["surrogate-text", "set-in-meta"],
)
async def test_recall_memory_that_cannot_be_stored_is_unstorable(
    store: OpenStore, item: MemoryItem
) -> None:
    """Every backend refuses a turn whose recall memory cannot be stored with
    Unstorable naming the session (not a driver's UnicodeEncodeError or json's
    TypeError), writes nothing, and takes the next turn."""
    await store.create(SessionMeta(id="m1"))
    token = await store.acquire("m1", "w", 60.0)
    with pytest.raises(Unstorable, match="'m1': recall memory") as info:
        await store.append_turn("m1", commit(1, 0, memory=(item,)), token=token)
    assert info.value.session_id == "m1"
    assert (await store.load("m1")).meta.turn_count == 0
    await store.append_turn("m1", commit(1, 0, memory=(MemoryItem("zebra"),)), token=token)
    assert (await store.load("m1")).meta.turn_count == 1
