"""Recall memory kept by the stores: durable, scoped, committed with its turn."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from engine.messages import MemoryItem
from sessions import SessionManager
from sessions.store import SessionMeta, open_store
from sessions.store.migrations import SCHEMA_VERSION, SQLITE
from sessions.store.recall import StoreMemory

from . import SECRET, commit

ROOT = Path(__file__).resolve().parents[2]

# The reply shows what recall found, so a test sees the recall node's own result.
SHOW_RECALL = """digraph t {
    start [shape=Mdiamond]
    done [shape=Msquare]
    classify [handler=classify]
    recall [handler=recall, scope=%s]
    format [handler=format, template="recalled: {recall.items}"]
    update_memory [handler=update_memory]
    start -> classify -> recall -> format -> update_memory -> done
}"""

# update_memory runs, then the turn fails (no edge leaves `gate`).
FAILS_AFTER_REMEMBERING = """digraph t {
    start [shape=Mdiamond]
    done [shape=Msquare]
    classify [handler=classify]
    format [handler=format, template="ok"]
    update_memory [handler=update_memory]
    gate [shape=diamond]
    start -> classify -> format -> update_memory -> gate
    gate -> done [condition="context.intent=never"]
}"""


def _texts(items: Sequence[MemoryItem]) -> list[str]:
    return [item.text for item in items]


def _durable_url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'durable.db'}"
    return str(request.getfixturevalue("pg_url"))


async def test_a_turn_remembers_in_the_store(store_url: str) -> None:
    """The default manager's memory is the store's: a turn's exchange is recalled
    from the store, the most relevant first, and never from another session."""
    async with SessionManager(store_url, store_secret=SECRET) as manager:
        alice = await manager.get_or_create("alice")
        await alice.send("my favourite colour is turquoise")
        await alice.send("the weather is grey today")
        await alice.send("turquoise turquoise everywhere, turquoise sea")
        bob = await manager.get_or_create("bob")
        await bob.send("bob likes turquoise too")
        store = manager.store
        found = await store.recall_memory("turquoise colour", session_id="alice")  # type: ignore[attr-defined]
        assert _texts(found) == [
            "my favourite colour is turquoise",
            "turquoise turquoise everywhere, turquoise sea",
        ]
        assert found[0].score > found[1].score > 0
        assert found[0].meta["reply"] == "echo: my favourite colour is turquoise"
        assert await store.recall_memory("nothing matches", session_id="alice") == ()  # type: ignore[attr-defined]


async def test_recall_scope_agent_spans_the_agents_sessions(store_url: str) -> None:
    """``recall scope=agent`` finds what the agent's other sessions remembered, and
    nothing of another agent's; ``scope=session`` stays in the session."""
    for scope in ("session", "agent"):
        async with SessionManager(
            store_url, store_secret=SECRET, turn_graph=SHOW_RECALL % scope
        ) as manager:
            one = await manager.get_or_create(f"{scope}-one", agent_id="helper")
            await one.send("the launch code word is pelican")
            other = await manager.get_or_create(f"{scope}-other", agent_id="stranger")
            await other.send("a stranger says pelican")
            two = await manager.get_or_create(f"{scope}-two", agent_id="helper")
            reply = (await two.send("pelican?")).reply
            if scope == "session":
                assert reply == "recalled: ()"
            else:
                assert "launch code word is pelican" in reply
                assert "stranger" not in reply


async def test_a_failed_turn_remembers_nothing(store_url: str) -> None:
    """update_memory ran, but the turn failed: nothing of it is recalled."""
    async with SessionManager(
        store_url, store_secret=SECRET, turn_graph=FAILS_AFTER_REMEMBERING
    ) as manager:
        session = await manager.get_or_create("s")
        result = await session.send("remember the albatross")
        assert not result.ok
        found = await manager.store.recall_memory("albatross", session_id="s")  # type: ignore[attr-defined]
        assert found == ()


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_a_second_manager_recalls_what_the_first_remembered(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Two managers one after the other (as two processes would): the second's recall
    node finds the first's exchange."""
    url = (
        f"sqlite:///{tmp_path / 'm.db'}" if kind == "sqlite" else request.getfixturevalue("pg_url")
    )
    graph = SHOW_RECALL % "session"
    async with SessionManager(url, store_secret=SECRET, turn_graph=graph) as first:
        await (await first.get_or_create("s")).send("the cat is called Marmalade")
    async with SessionManager(url, store_secret=SECRET, turn_graph=graph) as second:
        reply = (await (await second.get_or_create("s")).send("what about Marmalade")).reply
    assert "the cat is called Marmalade" in reply


def _where(store: str) -> tuple[str, ...]:
    return ("--session", "s", "--store", store)


def _cli(store: str, home: Path, graph: Path, text: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TURNGRAPH_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "engine.run", str(graph), "-m", text, *_where(store)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_second_cli_run_recalls_what_the_first_remembered(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Two processes: the second CLI run recalls the first run's exchange."""
    url = (
        f"sqlite:///{tmp_path / 'cli.db'}"
        if kind == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    graph = tmp_path / "show.dot"
    graph.write_text(SHOW_RECALL % "session")
    first = _cli(url, tmp_path / "home", graph, "the password hint is heliotrope")
    assert first.returncode == 0, first.stderr
    second = _cli(url, tmp_path / "home", graph, "heliotrope hint please")
    assert second.returncode == 0, second.stderr
    assert "the password hint is heliotrope" in second.stdout


async def test_memory_given_to_the_manager_wins(tmp_path: Path) -> None:
    """``memory=`` replaces the store's memory: the store then remembers nothing."""
    from handlers.adapters.memory import KeywordMemory

    mine = KeywordMemory()
    url = f"sqlite:///{tmp_path / 'x.db'}"
    async with SessionManager(url, store_secret=SECRET, memory=mine) as manager:
        await (await manager.get_or_create("s")).send("zeppelins are quiet")
        assert await manager.store.recall_memory("zeppelins", session_id="s") == ()  # type: ignore[attr-defined]
    assert _texts(await mine.recall("zeppelins", session_id="s")) == ["zeppelins are quiet"]


async def test_sqlite_queue_is_indexed_before_a_recall(tmp_path: Path) -> None:
    """A turn's memory waits in the queue table (written with the turn); a recall,
    from any connection, indexes it first, and the queue is emptied."""
    path = tmp_path / "q.db"
    async with open_store(f"sqlite:///{path}", secret=SECRET) as store:
        await store.create(SessionMeta("s"))
        token = await store.acquire("s", "me", 30)
        base = commit(1, 0)
        items = (MemoryItem("the ferry leaves at noon"), MemoryItem("noon is lunch"))
        await store.append_turn(
            "s", type(base)(base.record, base.messages, memory=items), token=token
        )
        with sqlite3.connect(path) as raw:
            assert raw.execute("SELECT count(*) FROM memory_queue").fetchone() == (2,)
            assert raw.execute("SELECT count(*) FROM memory").fetchone() == (0,)
    async with open_store(f"sqlite:///{path}", secret=SECRET) as store:
        found = await StoreMemory(store).recall("ferry at noon", session_id="s")  # type: ignore[arg-type]
        assert _texts(found) == ["the ferry leaves at noon", "noon is lunch"]
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT count(*) FROM memory_queue").fetchone() == (0,)
        assert raw.execute("SELECT count(*) FROM memory").fetchone() == (2,)


async def test_deleting_a_session_forgets_its_memory(store_url: str) -> None:
    """A deleted session's memory is gone, also for a new session under its id."""
    async with SessionManager(store_url, store_secret=SECRET) as manager:
        await (await manager.get_or_create("gone")).send("walruses are large")
        store = manager.store
        assert await store.recall_memory("walruses", session_id="gone")  # type: ignore[attr-defined]
        await manager.delete("gone")
        await (await manager.get_or_create("gone")).send("hello again")
        assert await store.recall_memory("walruses", session_id="gone") == ()  # type: ignore[attr-defined]


async def test_a_version_3_sqlite_store_migrates(tmp_path: Path) -> None:
    """A store written before recall memory opens, gains the memory tables, keeps its
    sessions, and remembers from then on."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as raw:
        for step in (1, 2, 3):
            for statement in SQLITE[step]:
                raw.execute(statement)
        raw.execute("PRAGMA user_version=3")
    raw.close()
    url = f"sqlite:///{path}"
    async with SessionManager(url, store_secret=SECRET) as manager:
        await (await manager.get_or_create("old")).send("migrations keep the kiwi")
        found = await manager.store.recall_memory("kiwi", session_id="old")  # type: ignore[attr-defined]
        assert _texts(found) == ["migrations keep the kiwi"]
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    raw.close()
