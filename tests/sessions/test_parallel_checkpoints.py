"""Per-node checkpoints of a turn with parallel branches, on a real SQLite file: saved at
the fan-out/fan-in boundaries only, never mid-branch, and a resumed turn's trace keeps
the branches in edge order."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest

from engine import load_graph
from engine.graph import Node
from engine.registry import HandlerRegistry
from sessions import Limits

from .session_kit import reply_registry
from .test_durable import Crash, sqlite_manager

PARALLEL = """digraph p {
    start [shape=Mdiamond]
    fan [shape=component]
    slow [handler=slow]
    quick [handler=quick]
    join [shape=tripleoctagon merge=list]
    done [shape=Msquare]
    start -> classify -> fan
    fan -> slow -> join
    fan -> quick -> join
    join -> llm_call -> format -> done
}"""


def _registry(crash_in: str = "") -> HandlerRegistry:
    """``slow`` finishes after ``quick`` (so completion order is not edge order);
    ``crash_in`` names the node where the process "dies"."""

    async def branch(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
        if node.id == crash_in:
            raise Crash
        await anyio.sleep(0.03 if node.id == "slow" else 0)
        return {"found": node.id}

    def fmt(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
        return {"reply": "+".join(map(str, ctx["found"]))}

    return reply_registry(slow=branch, quick=branch, format=fmt)


def spy_on_saves(m: Any, saved: list[tuple[str, str]], crash_after: str = "") -> None:
    """Note each checkpoint saved as (last node, next node); "die" right after saving the
    one whose last node is ``crash_after``."""
    save = m.store.save_checkpoint

    async def spy(session_id: str, cp: Any, **kw: Any) -> None:
        saved.append((cp.last_node, cp.next_node))
        await save(session_id, cp, **kw)
        if cp.last_node == crash_after:
            raise Crash

    m.store.save_checkpoint = spy


async def test_a_turn_dying_after_the_join_resumes_at_the_fan_in(tmp_path: Path) -> None:
    db, graph, limits = tmp_path / "p.db", load_graph(PARALLEL), Limits(checkpoint=True)
    saved: list[tuple[str, str]] = []
    async with sqlite_manager(db, _registry(), graph, limits=limits) as m:
        spy_on_saves(m, saved, crash_after="fan")
        with pytest.raises(Crash):
            await (await m.create("par")).send("go")
        cp = (await m.store.load("par")).checkpoint
        assert cp is not None
        # The fan-out's step is the boundary: after the join, the branches merged.
        assert (cp.last_node, cp.next_node) == ("fan", "join")
        assert cp.context["found"] == ["slow", "quick"]
        assert [(v["id"], v.get("branch")) for v in cp.trace] == [
            ("start", None),
            ("classify", None),
            ("fan", None),
            ("slow", "slow"),
            ("quick", "quick"),
        ]
    assert saved == [("start", "classify"), ("classify", "fan"), ("fan", "join")]
    async with sqlite_manager(db, _registry(), graph, limits=limits) as m:
        session = await m.get("par")
        result = await session.resume()
        assert result is not None and result.ok
        assert result.reply == "slow+quick"
        assert [n.node_id for n in result.trace] == ["join", "llm_call", "format", "done"]
        (record,) = await session.traces()
        assert [(v["id"], v.get("branch")) for v in record.trace] == [
            ("start", None),
            ("classify", None),
            ("fan", None),
            ("slow", "slow"),
            ("quick", "quick"),
            ("join", None),
            ("llm_call", None),
            ("format", None),
            ("done", None),
        ]


async def test_a_turn_dying_inside_a_branch_resumes_before_the_fan_out(tmp_path: Path) -> None:
    """No checkpoint is written mid-branch: the last one is the node before the fan-out,
    and a resume runs every branch again."""
    db, graph, limits = tmp_path / "q.db", load_graph(PARALLEL), Limits(checkpoint=True)
    saved: list[tuple[str, str]] = []
    async with sqlite_manager(db, _registry("slow"), graph, limits=limits) as m:
        spy_on_saves(m, saved)
        with pytest.raises(Crash):
            await (await m.create("mid")).send("go")
        cp = (await m.store.load("mid")).checkpoint
        assert cp is not None and (cp.last_node, cp.next_node) == ("classify", "fan")
    assert saved == [("start", "classify"), ("classify", "fan")]
    async with sqlite_manager(db, _registry(), graph, limits=limits) as m:
        result = await (await m.get("mid")).resume()
        assert result is not None and result.ok and result.reply == "slow+quick"
        assert [n.node_id for n in result.trace][:3] == ["fan", "slow", "quick"]


NESTED = """digraph n {
    start [shape=Mdiamond]; done [shape=Msquare]
    f1 [shape=component]; a [handler=slow]; b [handler=quick]
    f2 [shape=component]; x [handler=slow]; y [handler=quick]
    j2 [shape=tripleoctagon merge=list]; j1 [shape=tripleoctagon merge=list]
    start -> f1; f1 -> a -> f2; f2 -> x -> j2; f2 -> y -> j2; j2 -> j1
    f1 -> b -> j1; j1 -> format -> done
}"""


async def test_nested_branches_are_saved_in_the_engines_order(tmp_path: Path) -> None:
    """Visits finish y before x and b before a; the checkpoint's trace is still the
    run's own order: each branch after its fan-out, in edge order, nested ones inside."""
    db, graph, limits = tmp_path / "n.db", load_graph(NESTED), Limits(checkpoint=True)
    saved: list[tuple[str, str]] = []
    async with sqlite_manager(db, _registry(), graph, limits=limits) as m:
        spy_on_saves(m, saved, crash_after="f1")
        with pytest.raises(Crash):
            await (await m.create("nest")).send("go")
        cp = (await m.store.load("nest")).checkpoint
        assert cp is not None and (cp.last_node, cp.next_node) == ("f1", "j1")
    assert [(v["id"], v.get("branch")) for v in cp.trace] == [
        ("start", None),
        ("f1", None),
        ("a", "a"),
        ("f2", "a"),
        ("x", "a/x"),
        ("y", "a/y"),
        ("j2", "a"),
        ("b", "b"),
    ]
    assert saved == [("start", "f1"), ("f1", "j1")]
    async with sqlite_manager(db, _registry(), graph, limits=limits) as m:
        result = await (await m.get("nest")).resume()
        assert result is not None and result.ok
        (record,) = await (await m.get("nest")).traces()
        assert [v["id"] for v in record.trace][-4:] == ["b", "j1", "format", "done"]
