"""``max_steps`` bounds a whole turn, not each of its runs, on every store: a turn that
pauses at a gate looping back to itself, answered again and again, fails once its
visits over all its runs pass the bound; a retry gets only what the failed turn left;
a pause stored before the count existed still loads and goes on."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from engine.errors import MaxStepsExceeded
from engine.graph import Node
from engine.registry import HandlerRegistry
from sessions import Limits, SessionManager
from sessions.store import OpenStore, open_store
from sessions.store.codec import checkpoint_to_dict

from . import SECRET

# Each lap round the loop is three visits (gate, a, b); the first run is start, a, b.
LOOP = """digraph looping {
  graph [max_steps=%d]
  start [shape=Mdiamond]; done [shape=Msquare]
  a [handler=step]; b [handler=step]; ship [handler=ship]
  gate [shape=hexagon, question="Again?"]
  start -> a -> b -> gate
  gate -> a [label=again]
  gate -> ship [label=go]
  ship -> done
}
"""


def _registry(fails: list[str] | None = None) -> HandlerRegistry:
    """``step`` counts its visits in the context; ``ship`` fails while ``fails`` holds
    entries (one per call)."""

    def step(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
        return {"laps": int(ctx.get("laps", 0)) + 1}

    def ship(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
        if fails:
            raise RuntimeError(fails.pop())
        return {"reply": f"shipped after {ctx['laps']}"}

    return HandlerRegistry({"step": step, "ship": ship})


@pytest.fixture
async def shared(store_url: str) -> AsyncIterator[OpenStore]:
    async with open_store(store_url, secret=SECRET) as s:
        yield s


@asynccontextmanager
async def _manager(
    url: str, shared: OpenStore, dot: Path, registry: HandlerRegistry, **kw: Any
) -> AsyncIterator[SessionManager]:
    """A manager like a new process would open (``memory:`` is shared: it lives in
    this process only)."""
    store: Any = shared if url == "memory:" else url
    async with SessionManager(
        store, registry=registry, turn_graph=dot, store_secret=SECRET, **kw
    ) as m:
        yield m


def _dot(tmp_path: Path, max_steps: int) -> Path:
    path = tmp_path / "looping.dot"
    path.write_text(LOOP % max_steps)
    return path


async def test_a_gate_answered_in_a_loop_fails_once_the_turn_passes_max_steps(
    store_url: str, shared: OpenStore, tmp_path: Path
) -> None:
    """max_steps=10: the first run and two laps pause at 3, 6 and 9 visits (each run
    well under 10); the third lap's run fails with MaxStepsExceeded at its 11th node,
    naming the graph's bound.  Each answer is taken by a new manager, so the count is
    what the store kept."""
    dot = _dot(tmp_path, 10)
    async with _manager(store_url, shared, dot, _registry()) as m:
        first = await (await m.create("loop")).send("go round")
        assert first.status == "paused" and len(first.trace) == 3
    stored: list[int] = []
    for _ in range(5):  # without a per-turn budget every answer would pause again
        async with _manager(store_url, shared, dot, _registry()) as m:
            session = await m.get("loop")
            result = await session.answer("again")
            cp = (await shared.load("loop")).checkpoint
            if result.status != "paused":
                break
            assert cp is not None
            stored.append(cp.steps)
    assert stored == [6, 9]
    assert (result.status, result.turn) == ("fail", 1)
    assert [r.node_id for r in result.trace] == ["gate"]
    error = result.error
    assert isinstance(error, MaxStepsExceeded)
    assert (error.max_steps, error.node_id) == (10, "a")
    assert str(error) == "run exceeded max_steps=10 at node 'a'"
    (record,) = await shared.turns("loop", 0, 1)
    assert record.status == "fail" and len(record.trace) == 10
    assert record.error == str(error)


async def test_a_retry_gets_only_what_the_failed_turn_left(
    store_url: str, shared: OpenStore, tmp_path: Path
) -> None:
    """max_steps=9: two runs (6 visits), then ``go`` visits gate and ship, which fails
    (8 visits, stored with the failure).  The retry re-runs ship (the 9th) and fails at
    ``done``; with a fresh budget it would have shipped."""
    dot = _dot(tmp_path, 9)
    limits = Limits(checkpoint=True)
    async with _manager(store_url, shared, dot, _registry(["disk full"]), limits=limits) as m:
        session = await m.create("retry")
        assert (await session.send("x")).status == "paused"
        assert (await session.answer("again")).status == "paused"
        failed = await session.answer("go")
        assert failed.status == "fail" and "disk full" in str(failed.error)
    cp = (await shared.load("retry")).checkpoint
    assert cp is not None and (cp.kind, cp.next_node, cp.steps) == ("failed", "ship", 8)
    async with _manager(store_url, shared, dot, _registry(), limits=limits) as m:
        session = await m.get("retry")
        retried = await session.retry_turn()
        assert (retried.status, retried.turn) == ("fail", 2)
        assert [r.node_id for r in retried.trace] == ["ship"]
        error = retried.error
        assert isinstance(error, MaxStepsExceeded)
        assert (error.max_steps, error.node_id) == (9, "done")
        # Spent: a retry now fails at once, at the node the last one stopped before.
        again = await session.retry_turn()
        assert (again.status, again.trace) == ("fail", ())
        assert isinstance(again.error, MaxStepsExceeded) and again.error.node_id == "done"


async def test_a_pause_stored_without_a_step_count_still_goes_on(
    store_url: str, shared: OpenStore, tmp_path: Path
) -> None:
    """A pause written before ``steps`` was stored (its body has no such key) loads
    with 0 steps used: the answer runs with the whole budget again."""
    dot = _dot(tmp_path, 10)
    async with _manager(store_url, shared, dot, _registry()) as m:
        session = await m.create("old")
        assert (await session.send("x")).status == "paused"
        assert (await session.answer("again")).status == "paused"
        assert (await session.answer("again")).status == "paused"
    cp = (await shared.load("old")).checkpoint
    assert cp is not None and cp.steps == 9  # one lap more would pass 10
    old = dataclasses.replace(cp, steps=0)
    assert "steps" not in checkpoint_to_dict(old)  # stored as old records were
    token = await shared.acquire("old", "test", 30.0)
    await shared.save_checkpoint("old", old, token=token)
    await shared.release("old", "test", token)
    async with _manager(store_url, shared, dot, _registry()) as m:
        session = await m.get("old")
        assert session.question is not None and session.question.node == "gate"
        result = await session.answer("again")
        assert result.status == "paused" and len(result.trace) == 3
        done = await session.answer("go")
        assert (done.status, done.reply) == ("success", "shipped after 8")


async def test_running_checkpoints_count_steps_and_resume_gets_the_rest(
    store_url: str, shared: OpenStore, tmp_path: Path
) -> None:
    """With checkpoints on, each node's checkpoint counts the turn's visits so far; a
    turn resumed from one (a process died) may make only what is left."""
    dot = _dot(tmp_path, 10)
    seen: list[tuple[str, int]] = []

    async def peek(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
        cp = (await shared.load("crash")).checkpoint
        assert cp is not None
        seen.append((cp.next_node, cp.steps))
        return {}

    registry = _registry()
    registry.register("peek", peek)
    limits = Limits(checkpoint=True)
    peeking = tmp_path / "peek.dot"
    peeking.write_text(dot.read_text().replace("b [handler=step]", "b [handler=peek]"))
    async with _manager(store_url, shared, peeking, registry, limits=limits) as m:
        assert (await (await m.create("crash")).send("x")).status == "paused"
    assert seen == [("b", 2)]  # saved after start and a, before b ran
    # A process that died at b after nine visits left this running checkpoint behind.
    cp = (await shared.load("crash")).checkpoint
    assert cp is not None
    running = dataclasses.replace(cp, kind="running", last_node="a", next_node="b", steps=9)
    token = await shared.acquire("crash", "test", 30.0)
    await shared.save_checkpoint("crash", running, token=token)
    await shared.release("crash", "test", token)
    async with _manager(store_url, shared, peeking, registry, limits=limits) as m:
        session = await m.get("crash")
        assert session.resumable is not None
        resumed = await session.resume()
        assert resumed is not None and resumed.status == "fail"
        assert [r.node_id for r in resumed.trace] == ["b"]
        error = resumed.error
        assert isinstance(error, MaxStepsExceeded)
        assert (error.max_steps, error.node_id) == (10, "gate")
    assert seen == [("b", 2), ("b", 9)]


def test_the_step_count_round_trips_and_a_bad_one_is_refused() -> None:
    """``steps`` survives the codec; a negative or non-integer count is refused."""
    from sessions.store.base import Checkpoint
    from sessions.store.codec import ShapeError, checkpoint_from_dict

    cp = Checkpoint(2, "h", "s:2", "hi", "a", "gate", {}, ({"id": "a"},), 1.0, steps=7)
    body = checkpoint_to_dict(cp)
    assert body["steps"] == 7 and checkpoint_from_dict(body) == cp
    for bad in (-1, "7", 1.5, True, None):
        with pytest.raises(ShapeError, match="'steps' must be an integer"):
            checkpoint_from_dict({**body, "steps": bad})


async def test_the_run_that_runs_out_tells_its_watchers_the_whole_bound(
    store_url: str, shared: OpenStore, tmp_path: Path
) -> None:
    """The events of the answered run that passes the bound (a stream's, a span's, the
    log's) name the graph's ``max_steps`` as its result does, not what was left of it;
    an answer with nothing left at all still starts and fails a run its watchers hear."""
    from engine.events import RunFailed, RunStarted

    dot = _dot(tmp_path, 10)
    heard: list[object] = []
    async with _manager(store_url, shared, dot, _registry()) as m:
        session = await m.create("events")
        assert (await session.send("x")).status == "paused"
        for _ in range(2):
            assert (await session.answer("again")).status == "paused"
        result = await session.answer("again", watch=heard.append)
    assert result.status == "fail"
    (failed,) = [e for e in heard if isinstance(e, RunFailed)]
    assert failed.error == str(result.error) == "run exceeded max_steps=10 at node 'a'"
    # Over the bound before the run starts: six visits paused, the engine's bound
    # lowered to four since (a new process with other limits).
    async with _manager(store_url, shared, dot, _registry()) as m:
        session = await m.create("lowered")
        assert (await session.send("x")).status == "paused"
        assert (await session.answer("again")).status == "paused"
    heard.clear()
    limits = Limits(max_steps_per_turn=4)
    async with _manager(store_url, shared, dot, _registry(), limits=limits) as m:
        session = await m.get("lowered")
        spent = await session.answer("go", watch=heard.append)
    assert (spent.status, spent.trace) == ("fail", ())
    assert [type(e) for e in heard[:2]] == [RunStarted, RunFailed]
    assert heard[1].error == "run exceeded max_steps=4 at node 'gate'"  # type: ignore[attr-defined]


FANNED = """digraph fanned {
  graph [max_steps=9]
  start [shape=Mdiamond]; done [shape=Msquare]
  gate [shape=hexagon, question="Fan out?"]
  fan [shape=component]; join [shape=tripleoctagon, merge=last_writer]
  a1 [handler=step]; a2 [handler=step]; a3 [handler=step]; a4 [handler=step]
  a5 [handler=step]; a6 [handler=step]; a7 [handler=step]; a8 [handler=step]
  a9 [handler=step]; b [handler=step]
  start -> gate
  gate -> fan [label=go]
  fan -> a1 -> a2 -> a3 -> a4 -> a5 -> a6 -> a7 -> a8 -> a9 -> join
  fan -> b -> join
  join -> done
}
"""


async def test_a_branch_of_an_answered_run_is_bounded_as_in_an_unbroken_run(
    store_url: str, shared: OpenStore, tmp_path: Path
) -> None:
    """max_steps=9, a pause after ``start``: the answered run's branch ``a1`` makes nine
    visits, as a branch of a run that never paused may (a branch keeps the engine's own
    bound); the turn then fails at the fan-in with MaxStepsExceeded naming 9, as the
    same turn without the pause would, not with a JoinError from a branch cut to 8."""
    dot = tmp_path / "fanned.dot"
    dot.write_text(FANNED)
    async with _manager(store_url, shared, dot, _registry()) as m:
        session = await m.create("fanned")
        assert (await session.send("x")).status == "paused"
        result = await session.answer("go")
    assert result.status == "fail"
    error = result.error
    assert isinstance(error, MaxStepsExceeded), error
    assert (error.max_steps, error.node_id) == (9, "join")
    assert len([r for r in result.trace if r.branch == "a1"]) == 9


async def test_answers_with_ever_less_left_compile_the_graph_once(
    store_url: str, shared: OpenStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every answer of the loop runs with less left, on the graph the session holds: no
    run compiles another plan (a graph copy per remainder did, and filled the engine's
    bounded plan cache with copies no later turn could use, pushing out live plans)."""
    from engine.runner import Engine

    compiled: list[str] = []
    compile_ = Engine._compile

    def counting(self: Engine, graph: Any) -> Any:
        compiled.append(graph.name)
        return compile_(self, graph)

    monkeypatch.setattr(Engine, "_compile", counting)
    async with _manager(store_url, shared, _dot(tmp_path, 30), _registry()) as m:
        session = await m.create("plans")
        assert (await session.send("x")).status == "paused"
        for _ in range(5):
            assert (await session.answer("again")).status == "paused"
        assert (await session.answer("go")).status == "success"
    assert compiled.count("looping") == 1


async def test_a_gate_timer_whose_default_loops_back_stops_at_max_steps(
    store_url: str, shared: OpenStore, tmp_path: Path
) -> None:
    """A gate whose timeout's default loops back to it is answered by the manager's
    timer again and again, with no caller; the turn's one budget ends it: the third
    lap fails with MaxStepsExceeded and the failed turn is committed (per-run budgets
    would loop for ever)."""
    from .test_gate_timers import Commits

    looping = LOOP.replace('question="Again?"', 'question="Again?", timeout="10ms", default=again')
    dot = tmp_path / "timed.dot"
    dot.write_text(looping % 10)
    commits = Commits()
    async with _manager(store_url, shared, dot, _registry(), observers=[commits]) as m:
        session = await m.create("timed")
        assert (await session.send("x")).status == "paused"
        committed = await commits.wait()
        assert (committed.turn, committed.status) == (1, "fail")
        assert "timed" not in m.gate_timers
    (record,) = await shared.turns("timed", 0, 1)
    assert len(record.trace) == 10
    assert record.error == "run exceeded max_steps=10 at node 'a'"
