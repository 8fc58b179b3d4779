"""Recall memory kept by the stores: durable, scoped, committed with its turn."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from engine.graph import Node
from engine.messages import MemoryItem
from engine.registry import HandlerRegistry
from sessions import Limits, SessionManager
from sessions.store import SessionMeta, open_store
from sessions.store.migrations import POSTGRES, SCHEMA_VERSION, SQLITE, SQLITE_VERSION
from sessions.store.recall import StoreMemory, bm25, tokens

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
        assert raw.execute("PRAGMA user_version").fetchone() == (SQLITE_VERSION,)
    raw.close()


class Crash(BaseException):
    """Stands in for the process dying mid-turn (nothing catches it)."""


CRASHES_AFTER_REMEMBERING = """digraph t {
    start [shape=Mdiamond]
    done [shape=Msquare]
    classify [handler=classify]
    update_memory [handler=update_memory]
    boom [handler=boom]
    format [handler=format, template="ok"]
    start -> classify -> update_memory -> boom -> format -> done
}"""


def _crashing_registry(store: object, *, crash: bool) -> HandlerRegistry:
    from handlers import build_registry

    registry = build_registry(memory=StoreMemory(store))  # type: ignore[arg-type]

    def boom(node: Node, ctx: Mapping[str, object]) -> None:
        if crash:
            raise Crash

    registry.register("boom", boom)
    return registry


async def test_a_resumed_checkpoint_keeps_the_pending_memory(tmp_path: Path) -> None:
    """The process died after update_memory: nothing is remembered yet; the turn
    resumed from its checkpoint by a new process commits the item with the turn."""
    url = f"sqlite:///{tmp_path / 'cp.db'}"
    limits = Limits(checkpoint=True)
    for crash in (True, False):
        store = open_store(url, secret=SECRET)
        registry = _crashing_registry(store, crash=crash)
        async with (
            store,
            SessionManager(
                store, registry=registry, turn_graph=CRASHES_AFTER_REMEMBERING, limits=limits
            ) as manager,
        ):
            if crash:
                session = await manager.create("cp")
                with pytest.raises(Crash):
                    await session.send("the lighthouse keeper is Ada")
                assert await store.recall_memory("lighthouse", session_id="cp") == ()  # type: ignore[attr-defined]
                continue
            session = await manager.get("cp")
            result = await session.resume()
            assert result is not None and result.ok
            found = await store.recall_memory("lighthouse", session_id="cp")  # type: ignore[attr-defined]
            assert _texts(found) == ["the lighthouse keeper is Ada"]


def test_bm25_scores_match_fts5s_own() -> None:
    """The Python BM25 gives FTS5's bm25() figures (negated) on the same corpus."""
    texts = [
        "the red fox jumps over the red fence",
        "a red herring",
        "foxes and hounds, hounds and foxes",
        "nothing to see here at all, really nothing",
        "fox fox fox",
    ]
    raw = sqlite3.connect(":memory:")
    raw.execute("CREATE VIRTUAL TABLE t USING fts5(text)")
    raw.executemany("INSERT INTO t (rowid, text) VALUES (?, ?)", enumerate(texts))
    words = ("red", "fox")
    expected = dict(raw.execute("SELECT rowid, -bm25(t) FROM t WHERE t MATCH 'red OR fox'"))
    lengths = [len(tokens(t)) for t in texts]
    docs = {w: sum(w in tokens(t) for t in texts) for w in words}
    score = bm25(words, docs, len(texts), sum(lengths) / len(texts))
    got = {i: score(t) for i, t in enumerate(texts) if score(t) > 0}
    assert got.keys() == expected.keys()
    for i, value in expected.items():
        assert got[i] == pytest.approx(value, rel=1e-9)


@pytest.mark.postgres
async def test_a_version_3_postgres_store_migrates(pg_url: str) -> None:
    """A PostgreSQL store written before recall memory gains the memory table."""
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as raw:
        for step in (1, 2, 3):
            for statement in POSTGRES[step]:
                raw.execute(statement)
        raw.execute("CREATE TABLE turngraph_schema (version INTEGER)")
        raw.execute("INSERT INTO turngraph_schema VALUES (3)")
    async with SessionManager(pg_url, store_secret=SECRET) as manager:
        await (await manager.get_or_create("old")).send("migrations keep the kiwi")
        found = await manager.store.recall_memory("kiwi", session_id="old")  # type: ignore[attr-defined]
        assert _texts(found) == ["migrations keep the kiwi"]
    with psycopg.connect(pg_url, autocommit=True) as raw:
        row = raw.execute("SELECT max(version) FROM turngraph_schema").fetchone()
        assert row == (SCHEMA_VERSION,)


async def test_remembering_outside_a_turn(store_url: str) -> None:
    """``StoreMemory.remember`` writes at once (its own transaction), for a session
    that exists; the items are recalled like a turn's."""
    from sessions.errors import SessionNotFound

    async with open_store(store_url, secret=SECRET) as store:
        await store.create(SessionMeta("s"))
        memory = StoreMemory(store)  # type: ignore[arg-type]
        await memory.remember(
            [MemoryItem("otters hold hands", "fact", meta={"k": 1})], session_id="s"
        )
        (found,) = await memory.recall("otters", session_id="s")
        assert (found.text, found.kind, dict(found.meta)) == ("otters hold hands", "fact", {"k": 1})
        with pytest.raises(SessionNotFound):
            await memory.remember([MemoryItem("lost")], session_id="nobody")


async def test_an_export_carries_the_memory(store_url: str, tmp_path: Path) -> None:
    """A session's recall memory travels in its signed export: imported (here after
    the session was deleted), it is recalled again; an edited item is refused."""
    from sessions.errors import ImportRejected

    async with SessionManager(store_url, store_secret=SECRET) as manager:
        await (await manager.get_or_create("trip")).send("the passport is in the blue drawer")
        store = manager.store
        doc = await store.export("trip")
        assert [m["text"] for m in doc["memory"]] == ["the passport is in the blue drawer"]
        await manager.delete("trip")
        assert await store.recall_memory("passport", session_id="trip") == ()  # type: ignore[attr-defined]
        edited = {**doc, "memory": [{**doc["memory"][0], "text": "the passport is lost"}]}
        with pytest.raises(ImportRejected):
            await store.import_(edited)
        await store.import_(doc)
        found = await store.recall_memory("where is the passport", session_id="trip")  # type: ignore[attr-defined]
        assert _texts(found) == ["the passport is in the blue drawer"]
