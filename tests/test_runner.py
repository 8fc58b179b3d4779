"""Engine.run: walking, context threading, edge selection, failure routing, retries,
timeouts, cancellation, max_steps, observers."""

from __future__ import annotations

import random
import threading
from collections.abc import Mapping
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from engine import (
    Engine,
    GraphValidationError,
    HandlerError,
    HandlerRegistry,
    HandlerTimeout,
    MaxStepsExceeded,
    Node,
    NodeCompleted,
    NodeRecord,
    NodeRetrying,
    NoRouteError,
    Outcome,
    RetryPolicy,
    StructlogObserver,
    TransientAdapterError,
)
from engine.events import RunFailed
from engine.graph import Condition, Graph
from engine.testing import RecordingObserver, ScriptedHandler, build_graph

Ctx = Mapping[str, Any]


def registry(**handlers: Any) -> HandlerRegistry:
    """A registry where every name not given is a no-op."""
    reg = HandlerRegistry()
    for name in ("start", "a", "b", "c", "d", "done", "end", "fix", "fallback"):
        reg.register(name, handlers.pop(name, ScriptedHandler()))
    for name, fn in handlers.items():
        reg.register(name, fn)
    return reg


def when(key: str, value: Any) -> Condition:
    return Condition(f"{key}={value}", lambda ctx: ctx.get(key) == value)


class FakeSleep:
    """Records backoff delays instead of sleeping."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


# --------------------------------------------------------------------------- walking


async def test_walks_chain_start_to_exit_and_records_each_node() -> None:
    graph = build_graph(["start", "a", "b", "done"])
    result = await Engine(registry()).run(graph)
    assert result.ok
    assert [r.node_id for r in result.trace] == ["start", "a", "b", "done"]
    assert all(isinstance(r, NodeRecord) and r.attempts == 1 for r in result.trace)
    assert all(r.status == "success" and r.duration >= 0 for r in result.trace)


async def test_context_is_threaded_and_handlers_return_only_changes() -> None:
    seen: list[Any] = []

    def a(node: Node, ctx: Ctx) -> Mapping[str, Any]:
        return {"count": ctx["count"] + 1}

    async def b(node: Node, ctx: Ctx) -> Outcome:
        seen.append(ctx["count"])
        return Outcome(updates={"count": ctx["count"] * 10})

    graph = build_graph(["start", "a", "b", "done"])
    result = await Engine(registry(a=a, b=b)).run(graph, {"count": 1, "session.id": "s1"})
    assert seen == [2]
    assert result.context["count"] == 20
    assert result.context["session.id"] == "s1"
    assert result.context["outcome"] == "success"
    assert result.context["node.b.status"] == "success"


async def test_each_record_names_the_context_keys_its_visit_wrote() -> None:
    """A visit's record holds its updates' keys, in order (names, never values); a
    failed visit's updates count too, and a visit writing nothing has none."""

    def a(node: Node, ctx: Ctx) -> Mapping[str, Any]:
        return {"intent": "question", "input.text": "hi"}

    def b(node: Node, ctx: Ctx) -> Outcome:
        return Outcome("fail", {"error.seen": True}, reason="no")

    graph = build_graph(["start", "a", "b", "done"], extra_edges=[("b", "done", {})])
    result = await Engine(registry(a=a, b=b)).run(graph)
    changed = {r.node_id: r.changed for r in result.trace}
    assert changed["start"] == () and changed["a"] == ("intent", "input.text")
    assert changed["b"] == ("error.seen",)
    assert result.trace[1].to_dict()["changed"] == ["intent", "input.text"]
    assert "changed" not in result.trace[0].to_dict()  # the stored step stays as before


async def test_handler_sees_a_read_only_view() -> None:
    def a(node: Node, ctx: Ctx) -> None:
        ctx["x"] = 1  # type: ignore[index]

    result = await Engine(registry(a=a)).run(build_graph(["start", "a", "done"]))
    assert result.status == "fail"
    assert isinstance(result.error, HandlerError)
    assert "TypeError" in result.error.reason


async def test_callers_context_is_not_mutated() -> None:
    given = {"k": 1}
    await Engine(registry(a=lambda n, c: {"k": 2})).run(build_graph(["start", "a", "done"]), given)
    assert given == {"k": 1}


async def test_a_bad_return_type_fails_the_node_with_a_clear_reason() -> None:
    result = await Engine(registry(a=lambda n, c: 42)).run(build_graph(["start", "a", "done"]))
    assert result.status == "fail"
    assert isinstance(result.error, HandlerError)
    assert result.error.node_id == "a"
    assert "returned int" in result.error.reason


async def test_unknown_handler_is_reported_with_node_and_line() -> None:
    graph = build_graph(["start", "zz", "done"], nodes={"zz": {"line": 7, "col": 3}})
    engine = Engine(registry())
    with pytest.raises(GraphValidationError) as info:
        engine.check(graph)
    (issue,) = info.value.issues
    assert issue.node == "zz" and issue.line == 7
    assert "unknown handler 'zz'" in str(issue)


# --------------------------------------------------------------------------- edge selection


async def test_matching_condition_beats_unconditional_edge() -> None:
    graph = build_graph(
        ["start", "a", "b", "done"],
        extra_edges=[("a", "c", {"condition": when("route", "c")}), ("c", "done", {})],
    )
    engine = Engine(registry(a=lambda n, c: {"route": "c"}))
    result = await engine.run(graph)
    assert [r.node_id for r in result.trace] == ["start", "a", "c", "done"]


async def test_conditions_ordered_by_weight_then_target_id() -> None:
    always = Condition("true", lambda ctx: True)
    edges = [
        ("a", "d", {"condition": always, "weight": 1}),
        ("a", "c", {"condition": always, "weight": 1}),
        ("a", "b", {"condition": always, "weight": 0}),
        ("b", "done", {}),
        ("c", "done", {}),
        ("d", "done", {}),
    ]
    graph = build_graph(["start", "a"], extra_edges=edges, exits=["done"])
    result = await Engine(registry()).run(graph)
    assert [r.node_id for r in result.trace] == ["start", "a", "c", "done"]


async def test_preferred_label_picks_among_unconditional_edges() -> None:
    edges = [
        ("a", "b", {"label": "Left"}),
        ("a", "c", {"label": "Right"}),
        ("b", "done", {}),
        ("c", "done", {}),
    ]
    graph = build_graph(["start", "a"], extra_edges=edges, exits=["done"])
    engine = Engine(registry(a=lambda n, c: Outcome(preferred_label=" right ")))
    result = await engine.run(graph)
    assert [r.node_id for r in result.trace][2] == "c"


async def test_suggested_next_used_when_no_label_matches() -> None:
    edges: list[tuple[str, str, dict[str, Any]]] = [
        ("a", "b", {}),
        ("a", "c", {}),
        ("b", "done", {}),
        ("c", "done", {}),
    ]
    graph = build_graph(["start", "a"], extra_edges=edges, exits=["done"])
    engine = Engine(registry(a=lambda n, c: Outcome(preferred_label="nope", suggested_next="c")))
    result = await engine.run(graph)
    assert [r.node_id for r in result.trace][2] == "c"


async def test_suggested_next_must_be_an_outgoing_target() -> None:
    edges: list[tuple[str, str, dict[str, Any]]] = [
        ("a", "b", {}),
        ("b", "done", {}),
        ("a", "c", {"condition": when("x", 1)}),
    ]
    edges.append(("c", "done", {}))
    graph = build_graph(["start", "a"], extra_edges=edges, exits=["done"])
    engine = Engine(registry(a=lambda n, c: Outcome(suggested_next="c")))
    result = await engine.run(graph)
    assert [r.node_id for r in result.trace][2] == "b"


async def test_best_unconditional_edge_is_highest_weight_then_target() -> None:
    edges = [
        ("a", "b", {"weight": 1}),
        ("a", "d", {"weight": 5}),
        ("a", "c", {"weight": 5}),
        ("b", "done", {}),
        ("c", "done", {}),
        ("d", "done", {}),
    ]
    graph = build_graph(["start", "a"], extra_edges=edges, exits=["done"])
    result = await Engine(registry()).run(graph)
    assert [r.node_id for r in result.trace][2] == "c"


async def test_no_route_when_every_edge_is_conditional_and_false() -> None:
    graph = build_graph(
        ["start", "a"],
        extra_edges=[("a", "done", {"condition": when("never", True)})],
        exits=["done"],
    )
    result = await Engine(registry()).run(graph)
    assert result.status == "fail"
    assert isinstance(result.error, NoRouteError)
    assert result.error.node_id == "a"


# --------------------------------------------------------------------------- failure routing


async def test_fail_edge_taken_when_node_fails() -> None:
    graph = build_graph(
        ["start", "a", "b", "done"],
        extra_edges=[("a", "fix", {"condition": when("outcome", "fail")}), ("fix", "done", {})],
    )
    engine = Engine(registry(a=ScriptedHandler(Outcome("fail", reason="nope"))))
    result = await engine.run(graph)
    assert result.ok
    assert [(r.node_id, r.status) for r in result.trace][1:3] == [("a", "fail"), ("fix", "success")]
    assert result.trace[1].reason == "nope"


async def test_retry_target_then_fallback_retry_target() -> None:
    flaky = ScriptedHandler(Outcome("fail"), None)
    graph = build_graph(["start", "a", "done"], nodes={"a": {"retry_target": "start"}})
    result = await Engine(registry(a=flaky)).run(graph)
    assert [r.node_id for r in result.trace] == ["start", "a", "start", "a", "done"]

    graph = build_graph(
        ["start", "a", "done"],
        nodes={"a": {"fallback_retry_target": "fallback"}},
        extra_edges=[("fallback", "done", {})],
    )
    result = await Engine(registry(a=ScriptedHandler(Outcome("fail")))).run(graph)
    assert [r.node_id for r in result.trace] == ["start", "a", "fallback", "done"]


async def test_failure_without_route_fails_the_run_with_the_cause() -> None:
    boom = RuntimeError("kaput")
    result = await Engine(registry(a=ScriptedHandler(boom))).run(
        build_graph(["start", "a", "done"])
    )
    assert result.status == "fail"
    err = result.error
    assert isinstance(err, HandlerError)
    assert (err.node_id, err.handler, err.attempt) == ("a", "a", 1)
    assert err.cause is boom and err.__cause__ is boom
    assert [r.node_id for r in result.trace] == ["start", "a"]


async def test_failing_exit_node_fails_the_run() -> None:
    result = await Engine(registry(done=ScriptedHandler(Outcome("fail")))).run(
        build_graph(["start", "done"])
    )
    assert result.status == "fail"


async def test_cycle_is_bounded_by_max_steps() -> None:
    graph = build_graph(
        ["start", "a", "b", "done"],
        extra_edges=[("b", "a", {"condition": Condition("true", lambda c: True)})],
    )
    result = await Engine(registry(), max_steps=10).run(graph)
    assert result.status == "fail"
    assert isinstance(result.error, MaxStepsExceeded)
    assert len(result.trace) == 10

    def looping(limit: int) -> Graph:
        return build_graph(
            ["start", "a", "b", "done"],
            extra_edges=[("b", "a", {"condition": Condition("true", lambda c: True)})],
            max_steps=limit,
        )

    result = await Engine(registry(), max_steps=10).run(looping(4))
    assert isinstance(result.error, MaxStepsExceeded) and len(result.trace) == 4
    # A graph may lower the engine's bound, never raise it.
    result = await Engine(registry(), max_steps=10).run(looping(500))
    assert isinstance(result.error, MaxStepsExceeded) and len(result.trace) == 10


async def test_steps_used_leaves_the_run_what_is_left_and_names_the_whole_bound() -> None:
    """A run going on from earlier runs of the same turn (``steps_used``) may make only
    what is left of max_steps; its error and RunFailed event name the whole bound, as
    one run would.  Nothing left: it fails at its first node; a negative count is a bug."""
    graph = build_graph(
        ["start", "a", "b", "done"],
        extra_edges=[("b", "a", {"condition": Condition("true", lambda c: True)})],
    )
    engine = Engine(registry(), max_steps=10)
    seen = RecordingObserver()
    result = await engine.run(graph, start_at="a", steps_used=7, observers=[seen])
    assert [r.node_id for r in result.trace] == ["a", "b", "a"]
    error = result.error
    assert isinstance(error, MaxStepsExceeded) and (error.max_steps, error.node_id) == (10, "b")
    (failed,) = seen.of_type(RunFailed)
    assert failed.error == "run exceeded max_steps=10 at node 'b'" and failed.steps == 3
    spent = await engine.run(graph, start_at="b", steps_used=12)
    assert spent.trace == () and isinstance(spent.error, MaxStepsExceeded)
    assert (spent.error.max_steps, spent.error.node_id) == (10, "b")
    with pytest.raises(ValueError, match="steps_used must be at least 0"):
        await engine.run(graph, steps_used=-1)
    # The plain run is untouched by an offset run before it (one plan per graph).
    assert len((await engine.run(graph)).trace) == 10


async def test_loop_ends_when_condition_changes() -> None:
    def b(node: Node, ctx: Ctx) -> Mapping[str, Any]:
        return {"n": ctx.get("n", 0) + 1}

    graph = build_graph(
        ["start", "a", "b", "done"],
        extra_edges=[("b", "a", {"condition": Condition("n<3", lambda c: c["n"] < 3)})],
    )
    result = await Engine(registry(b=b)).run(graph)
    assert result.ok and result.context["n"] == 3
    assert [r.node_id for r in result.trace].count("a") == 3


# --------------------------------------------------------------------------- retries


def retrying(n: int, **kw: Any) -> dict[str, Any]:
    return {"retry": RetryPolicy(max_retries=n, initial_delay=0.1, factor=2.0, **kw)}


async def test_transient_errors_are_retried_with_exponential_backoff() -> None:
    flaky = ScriptedHandler(
        TransientAdapterError("llm", "503"), TransientAdapterError("llm", "503"), {"ok": True}
    )
    sleep = FakeSleep()
    graph = build_graph(["start", "a", "done"], nodes={"a": retrying(3, jitter=False)})
    obs = RecordingObserver()
    result = await Engine(registry(a=flaky), sleep=sleep, observers=[obs]).run(graph)
    assert result.ok and result.context["ok"] is True
    assert result.trace[1].attempts == 3 and flaky.calls == 3
    assert sleep.delays == pytest.approx([0.1, 0.2])
    assert [e.attempt for e in obs.of_type(NodeRetrying)] == [1, 2]


async def test_retry_status_is_retried_until_max_retries_then_fails() -> None:
    sleep = FakeSleep()
    graph = build_graph(["start", "a", "done"], nodes={"a": retrying(2, jitter=False)})
    handler = ScriptedHandler(Outcome("retry", reason="busy"))
    result = await Engine(registry(a=handler), sleep=sleep).run(graph)
    assert result.status == "fail"
    assert handler.calls == 3
    assert result.trace[1].status == "fail" and result.trace[1].attempts == 3
    assert isinstance(result.error, HandlerError) and result.error.attempt == 3


async def test_permanent_errors_are_not_retried() -> None:
    handler = ScriptedHandler(ValueError("bad input"))
    graph = build_graph(["start", "a", "done"], nodes={"a": retrying(5)})
    result = await Engine(registry(a=handler), sleep=FakeSleep()).run(graph)
    assert result.status == "fail" and handler.calls == 1


async def test_backoff_is_capped_and_jittered_within_half_to_full() -> None:
    policy = RetryPolicy(max_retries=10, initial_delay=1.0, factor=3.0, max_delay=5.0)
    rng = random.Random(7)
    delays = [policy.delay(n, rng) for n in range(2, 8)]
    nominal = [1.0, 3.0, 5.0, 5.0, 5.0, 5.0]
    assert all(0.5 * d <= got <= d for got, d in zip(delays, nominal, strict=True))
    assert len(set(delays)) > 1


async def test_graph_default_retry_is_not_applied_to_nodes_that_set_their_own() -> None:
    # The loader folds graph defaults into each node; the runner reads only node.retry.
    handler = ScriptedHandler(TransientAdapterError("x", "y"), None)
    graph = build_graph(["start", "a", "done"], nodes={"a": retrying(0)})
    result = await Engine(registry(a=handler), sleep=FakeSleep()).run(graph)
    assert result.status == "fail" and handler.calls == 1


# --------------------------------------------------------------------------- timeouts


async def test_timeout_fails_node_with_handler_timeout() -> None:
    async def slow(node: Node, ctx: Ctx) -> None:
        await anyio.sleep(10)

    graph = build_graph(["start", "a", "done"], nodes={"a": {"timeout": 0.05}})
    result = await Engine(registry(a=slow)).run(graph)
    assert result.status == "fail"
    assert isinstance(result.error, HandlerTimeout)
    assert result.error.timeout == 0.05 and result.error.node_id == "a"


async def test_a_timed_handler_may_open_its_own_scopes_and_task_groups() -> None:
    """The node's deadline scope encloses whatever the handler opens before waiting."""

    async def careful(node: Node, ctx: Ctx) -> dict[str, Any]:
        with anyio.fail_after(5):
            await anyio.sleep(0.001)
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.sleep, 0.001)
        return {"done": True}

    graph = build_graph(["start", "a", "done"], nodes={"a": {"timeout": 5.0}})
    result = await Engine(registry(a=careful)).run(graph)
    assert result.ok and result.context["done"] is True


async def test_timeout_is_retryable() -> None:
    calls = 0

    async def slow_once(node: Node, ctx: Ctx) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await anyio.sleep(10)

    graph = build_graph(["start", "a", "done"], nodes={"a": {"timeout": 0.05, **retrying(1)}})
    result = await Engine(registry(a=slow_once), sleep=FakeSleep()).run(graph)
    assert result.ok and calls == 2 and result.trace[1].attempts == 2


async def test_handler_raising_timeout_error_without_timeout_is_a_plain_failure() -> None:
    result = await Engine(registry(a=ScriptedHandler(TimeoutError("socket")))).run(
        build_graph(["start", "a", "done"])
    )
    assert result.status == "fail"
    assert not isinstance(result.error, HandlerTimeout)


async def test_a_handlers_own_timeout_error_is_not_the_nodes_timeout() -> None:
    """Only the node's deadline makes a HandlerTimeout; a socket's TimeoutError is a bug
    or a permanent failure unless an adapter maps it to TransientAdapterError."""
    handler = ScriptedHandler(TimeoutError("socket"))
    graph = build_graph(["start", "a", "done"], nodes={"a": {"timeout": 5.0, **retrying(3)}})
    result = await Engine(registry(a=handler), sleep=FakeSleep()).run(graph)
    assert isinstance(result.error, HandlerError)
    assert not isinstance(result.error, HandlerTimeout)
    assert handler.calls == 1


# --------------------------------------------------------------------------- cancellation


async def test_cancelling_a_run_propagates_and_runs_no_further_nodes() -> None:
    started = anyio.Event()
    cleaned = False
    ran_after = ScriptedHandler()

    async def slow(node: Node, ctx: Ctx) -> None:
        nonlocal cleaned
        started.set()
        try:
            await anyio.sleep(10)
        finally:
            cleaned = True

    obs = RecordingObserver()
    engine = Engine(registry(a=slow, b=ran_after), observers=[obs])
    graph = build_graph(["start", "a", "b", "done"])
    with anyio.move_on_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(engine.run, graph)
            await started.wait()
            tg.cancel_scope.cancel()
    assert cleaned
    assert ran_after.calls == 0
    assert obs.kinds()[-1] == "RunFailed"
    assert obs.events[-1].status == "cancelled"  # type: ignore[union-attr]


async def test_cancellation_is_never_retried() -> None:
    calls = 0

    async def slow(node: Node, ctx: Ctx) -> None:
        nonlocal calls
        calls += 1
        await anyio.sleep(10)

    graph = build_graph(["start", "a", "done"], nodes={"a": retrying(5)})
    with anyio.move_on_after(0.05) as scope:
        await Engine(registry(a=slow), sleep=FakeSleep()).run(graph)
    assert scope.cancelled_caught and calls == 1


# --------------------------------------------------------------------------- handlers


async def test_blocking_sync_handler_runs_in_a_worker_thread() -> None:
    threads: list[int] = []

    def blocking(node: Node, ctx: Ctx) -> None:
        threads.append(threading.get_ident())

    reg = registry()
    reg.register("slowio", blocking, blocking=True)
    reg.register("inline", blocking)
    graph = build_graph(["start", "slowio", "inline", "done"])
    result = await Engine(reg).run(graph)
    assert result.ok
    assert threads[0] != threading.get_ident() and threads[1] == threading.get_ident()


async def test_node_blocking_attribute_also_moves_sync_handler_to_thread() -> None:
    threads: list[int] = []
    reg = registry(a=lambda n, c: threads.append(threading.get_ident()))
    graph = build_graph(["start", "a", "done"], nodes={"a": {"blocking": True}})
    assert (await Engine(reg).run(graph)).ok
    assert threads[0] != threading.get_ident()


async def test_registry_rejects_duplicates_and_non_callables() -> None:
    reg = HandlerRegistry()

    @reg.handler("x")
    async def x(node: Node, ctx: Ctx) -> None: ...

    with pytest.raises(ValueError, match="already registered"):
        reg.register("x", x)
    reg.register("x", x, replace=True)
    with pytest.raises(TypeError):
        reg.register("y", 3)  # type: ignore[arg-type]
    assert "x" in reg and reg.get("x").is_async and len(reg.copy()) == len(HandlerRegistry()) + 1


# --------------------------------------------------------------------------- observers & hooks


async def test_observers_receive_events_in_order() -> None:
    obs = RecordingObserver()
    per_run = RecordingObserver()
    graph = build_graph(["start", "a", "done"])
    await Engine(registry(), observers=[obs]).run(graph, observers=[per_run], run_id="r1")
    assert obs.kinds() == [
        "RunStarted",
        "NodeStarted",
        "NodeCompleted",
        "NodeStarted",
        "NodeCompleted",
        "NodeStarted",
        "NodeCompleted",
        "RunCompleted",
    ]
    assert per_run.kinds() == obs.kinds()
    assert {e.run_id for e in obs.events} == {"r1"}
    done = obs.of_type(NodeCompleted)
    assert [(e.node_id, e.handler, e.status, e.attempts) for e in done][1] == (
        "a",
        "a",
        "success",
        1,
    )


async def test_a_raising_observer_does_not_break_the_run() -> None:
    def bad(event: Any) -> None:
        raise RuntimeError("observer bug")

    result = await Engine(registry(), observers=[bad]).run(build_graph(["start", "done"]))
    assert result.ok


async def test_on_step_sees_each_node_and_its_successor() -> None:
    steps: list[tuple[str, str | None]] = []

    async def on_step(record: NodeRecord, nxt: str | None, ctx: Ctx) -> None:
        steps.append((record.node_id, nxt))

    await Engine(registry()).run(build_graph(["start", "a", "done"]), on_step=on_step)
    assert steps == [("start", "a"), ("a", "done"), ("done", None)]


async def test_on_enter_sees_each_node_before_its_handler_runs() -> None:
    order: list[str] = []

    def a(node: Node, ctx: Ctx) -> None:
        order.append("handler a")

    await Engine(registry(a=a)).run(
        build_graph(["start", "a", "done"]), on_enter=lambda node: order.append(f"enter {node.id}")
    )
    assert order == ["enter start", "enter a", "handler a", "enter done"]


async def test_start_at_resumes_from_a_node() -> None:
    a = ScriptedHandler()
    result = await Engine(registry(a=a)).run(build_graph(["start", "a", "b", "done"]), start_at="b")
    assert [r.node_id for r in result.trace] == ["b", "done"] and a.calls == 0
    with pytest.raises(ValueError, match="no node 'nope'"):
        await Engine(registry()).run(build_graph(["start", "done"]), start_at="nope")


async def test_structlog_observer_logs_each_node_with_fields() -> None:
    obs = StructlogObserver(session_id="s1", trace_id="t1")
    with capture_logs() as logs:
        await Engine(registry(), observers=[obs]).run(
            build_graph(["start", "a", "done"]), run_id="r9"
        )
    nodes = [e for e in logs if e["event"] == "node"]
    assert [e["node"] for e in nodes] == ["start", "a", "done"]
    first = nodes[1]
    assert first["session_id"] == "s1" and first["trace_id"] == "t1" and first["run_id"] == "r9"
    assert first["handler"] == "a" and first["status"] == "success" and first["attempt"] == 1
    assert "duration_ms" in first


async def test_run_ids_are_unique_per_run() -> None:
    engine = Engine(registry())
    graph = build_graph(["start", "done"])
    ids = {(await engine.run(graph)).run_id for _ in range(50)}
    assert len(ids) == 50
