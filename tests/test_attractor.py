"""The ``attractor`` dialect: Attractor's spec examples and public pipelines load and run.

Corpus tests read ``shared/dotcorpus`` beside the repository (or
``$TURNGRAPH_DOTCORPUS``) and skip without it.  Runs use offline models and, for
``tool_command``, real ``/bin/sh`` subprocesses.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

from engine import Engine, Node, load_graph
from engine.cli.main import main
from engine.errors import GatePaused, GraphValidationError, HandlerError, ShellDisabled
from engine.gates import ANSWER_KEY
from engine.graph import Graph
from engine.messages import LLMResponse, Usage
from engine.outcome import RunResult
from engine.registry import HandlerRegistry
from engine.stylesheet import StylesheetError, parse_stylesheet, styled
from handlers import build_registry
from handlers.adapters import ScriptedModel
from handlers.adapters.llm import ChatRequest
from tests.test_dot_corpus import CORPUS

needs_corpus = pytest.mark.skipif(CORPUS is None, reason="no DOT corpus (shared/dotcorpus)")
PIPELINES = sorted(p for p in CORPUS.glob("attractor-*/**/*.dot")) if CORPUS is not None else []

_RD = "robotdad+amplifier-bundle-attractor/"
_LOOP = _RD + "modules/loop-pipeline/tests/fixtures/"
EXPECTED_FAILURES: Mapping[str, str] = {
    "gutelius+attractor/docs/examples/ch15-complete-pipeline.dot": (
        "shape=parallel / parallel_fan_in: not Graphviz or Attractor shapes"
    ),
    _RD + "examples/patterns/demo-combined.dot": (
        "shape=folder with dot_file: that implementation's sub-pipelines (ours: graph=)"
    ),
    _RD + "examples/patterns/demo-convergence-factory.dot": (
        "shape=folder with dot_file: that implementation's sub-pipelines (ours: graph=)"
    ),
    _RD + "examples/patterns/demo-conversational-gates.dot": (
        "shape=folder with dot_file: that implementation's sub-pipelines (ours: graph=)"
    ),
    _LOOP + "parent_with_child.dot": (
        "shape=folder with dot_file: that implementation's sub-pipelines (ours: graph=)"
    ),
    _RD + "examples/patterns/task-runner.dot": (
        "an unescaped '\"' inside tool_command ends the string: Graphviz misreads it too"
    ),
    _RD + "examples/pipelines/10-full-attractor.dot": (
        "a branch node's retry_target leads back before its fan-out: a branch cannot "
        "restart the pipeline (it would run the fan-out again inside itself)"
    ),
    _RD + "examples/pipelines/09-manager-supervisor.dot": (
        "house = stack.manager_loop: the supervisor loop is not supported"
    ),
    _RD + "examples/pipelines/11-manager-child-dotfile-hitl/parent.dot": (
        "house = stack.manager_loop: the supervisor loop is not supported"
    ),
    "samueljklee+attractor/examples/human_approval.dot": (
        "house = stack.manager_loop: the supervisor loop is not supported"
    ),
    "samueljklee+attractor/tests/fixtures/issue36_corrected.dot": (
        "house = stack.manager_loop: the supervisor loop is not supported"
    ),
    "samueljklee+attractor/tests/fixtures/validate_house_shape.dot": (
        "house = stack.manager_loop: the supervisor loop is not supported"
    ),
    _LOOP + "integration/consensus_task.dot": (
        "type=stack.observe / stack.steer: that implementation's own handlers"
    ),
    _LOOP + "integration/semport.dot": (
        "type=stack.observe / stack.steer: that implementation's own handlers"
    ),
}
"""Corpus pipelines that do not validate in the attractor dialect, and why (kept exact:
a pipeline that starts validating must be taken off this list)."""


def registry(**kwargs: Any) -> HandlerRegistry:
    """The built-ins (``wait.human`` among them)."""
    return build_registry(**kwargs)


def _short(path: Path) -> str:
    return str(path).split("/attractor-impl/")[-1].split("/attractor-spec/")[-1]


def _errors(path: Path, dialect: str | None) -> list[str]:
    from engine.cli.checks import check_file

    checked = check_file(str(path), registry(), dialect)
    return [i.message for i in checked.issues if i.severity == "error"]


def run(graph: Graph, reg: HandlerRegistry, context: Mapping[str, Any] | None = None) -> RunResult:
    async def go() -> RunResult:
        return await Engine(reg).run(graph, dict(context or {}))

    return anyio.run(go)


class Recorder:
    """A model that takes whole requests and answers with the model it was asked for."""

    def __init__(self) -> None:
        self.requests: list[ChatRequest] = []

    async def complete(self, messages: Sequence[Mapping[str, Any]], **_: Any) -> LLMResponse:
        return await self.respond(ChatRequest(messages))

    async def respond(
        self, request: ChatRequest, on_text: Callable[[str], None] | None = None
    ) -> LLMResponse:
        self.requests.append(request)
        model = request.model or "default"
        return LLMResponse(f"{model} did it", usage=Usage(3, 2), model=model)

    @property
    def models(self) -> list[str | None]:
        return [r.model for r in self.requests]


# --------------------------------------------------------------------------- the corpus


@needs_corpus
def test_every_attractor_pipeline_validates_in_the_attractor_dialect() -> None:
    """All but the listed pipelines load with no error; the listed ones still fail."""
    assert len(PIPELINES) == 129
    failing = {_short(p): _errors(p, "attractor") for p in PIPELINES}
    failing = {k: v for k, v in failing.items() if v}
    assert set(failing) == set(EXPECTED_FAILURES), {k: v[:2] for k, v in failing.items()}
    assert len(PIPELINES) - len(failing) == 115


@needs_corpus
def test_the_default_dialect_still_refuses_them() -> None:
    """Read as turngraph graphs, the spec's own examples fail (box nodes are handler ids)."""
    spec = [p for p in PIPELINES if "attractor-spec" in str(p)]
    assert spec and all(_errors(p, None) for p in spec)
    assert all(not _errors(p, "attractor") for p in spec)


_MODEL_ROUTED = "routes on a status or context key the model must report: echo reports none"
RUN_FAILURES: Mapping[str, str] = {
    "brynary+attractor/pipelines/factory/sync.dot": _MODEL_ROUTED,
    "citadelgrad+connect-the-bots/docs/examples/epic-runner.dot": _MODEL_ROUTED,
    "citadelgrad+connect-the-bots/pipelines/attractor-e0n.dot": _MODEL_ROUTED,
    "citadelgrad+connect-the-bots/pipelines/attractor-kbu.dot": _MODEL_ROUTED,
    "citadelgrad+connect-the-bots/pipelines/attractor-qsb.dot": _MODEL_ROUTED,
    "citadelgrad+connect-the-bots/pipelines/attractor-s6a.dot": _MODEL_ROUTED,
    "citadelgrad+connect-the-bots/pipelines/build-beads-integration.dot": _MODEL_ROUTED,
    "citadelgrad+connect-the-bots/pipelines/phase-1-spec.dot": _MODEL_ROUTED,
    _LOOP + "report_outcome_convergence.dot": _MODEL_ROUTED,
}
"""Shell-free corpus pipelines that do not reach an exit with the offline echo model."""


@needs_corpus
def test_shell_free_pipelines_run_to_their_exit_with_the_offline_model() -> None:
    """Every valid pipeline without tool_command runs (human gates answered with their first
    choice); the listed ones end as listed."""
    reg = registry()
    engine = Engine(reg, max_steps=200)
    ran: dict[str, str] = {}
    for path in PIPELINES:
        if _short(path) in EXPECTED_FAILURES:
            continue
        graph = load_graph(path, registry=reg, dialect="attractor")
        if any(n.handler == "shell" for n in graph.nodes.values()):
            continue  # corpus commands are never run here
        result = anyio.run(engine.run, graph)
        for _ in range(20):  # a person who always takes a human gate's first choice
            if not isinstance(result.error, GatePaused):
                break
            answer = {ANSWER_KEY: {"choice": result.error.choices[0], "timed_out": False}}
            context = {**result.context, **answer}
            start = result.error.node_id
            result = anyio.run(partial(engine.run, graph, context, start_at=start))
        ran[_short(path)] = result.status if result.ok else type(result.error).__name__
    assert len(ran) == 87
    failed = {k: v for k, v in ran.items() if v != "success"}
    assert set(failed) == set(RUN_FAILURES), failed
    assert set(failed.values()) == {"NoRouteError"}


# --------------------------------------------------------------------------- reading

SPEC_STYLESHEET = """digraph Pipeline {
    graph [
        goal="Implement feature X",
        model_stylesheet="
            * { llm_model: claude-sonnet-4-5; llm_provider: anthropic; }
            .code { llm_model: claude-opus-4-6; llm_provider: anthropic; }
            #critical_review { llm_model: gpt-5.2; llm_provider: openai; reasoning_effort: high; }
        "
    ]
    start [shape=Mdiamond]
    exit  [shape=Msquare]
    plan            [label="Plan", class="planning", prompt="Plan: $goal"]
    implement       [label="Implement", class="code"]
    critical_review [label="Critical Review", class="code"]
    pinned          [class="code", llm_model="local-model"]
    start -> plan -> implement -> critical_review -> pinned -> exit
}"""


def test_stylesheet_picks_models_by_specificity_and_the_node_wins() -> None:
    """Spec §8.6: * < .class < #id, and a node's own llm_model beats every rule."""
    graph = load_graph(SPEC_STYLESHEET, dialect="attractor")
    model = {n.id: n.get("llm_model") for n in graph.nodes.values()}
    assert model["plan"] == "claude-sonnet-4-5"
    assert model["implement"] == "claude-opus-4-6"
    assert model["critical_review"] == "gpt-5.2"
    assert graph.nodes["critical_review"].get("reasoning_effort") == "high"
    assert model["pinned"] == "local-model"
    assert graph.nodes["plan"].get("prompt") == "Plan: Implement feature X"


def test_stylesheet_rules_of_equal_specificity_later_wins_and_shapes_match() -> None:
    rules = parse_stylesheet("box { llm_model: a; } .x { llm_model: b } .x { llm_model: 'c' }")
    assert styled(rules, "n", "box", frozenset({"x"})) == {"llm_model": "c"}
    assert styled(rules, "n", "box", frozenset()) == {"llm_model": "a"}
    assert styled(rules, "n", "diamond", frozenset()) == {}


@pytest.mark.parametrize(
    ("sheet", "reason"),
    [
        ("* { llm_model claude }", "expected ':', found 'claude'"),
        ("* { colour: red; }", "expected one of llm_model, llm_provider, reasoning_effort"),
        ("* { llm_model: a;", "expected a property or '}', found end of stylesheet"),
        ("", "expected a rule"),
    ],
)
def test_stylesheet_syntax_errors_say_what_was_expected(sheet: str, reason: str) -> None:
    with pytest.raises(StylesheetError, match=reason.replace("(", r"\(")):
        parse_stylesheet(sheet or " ")


def test_a_bad_stylesheet_is_a_load_error_at_the_graph() -> None:
    text = 'digraph g {\n graph [model_stylesheet="* { llm_model claude }"]\n start -> exit\n}'
    with pytest.raises(GraphValidationError) as info:
        load_graph(text, dialect="attractor")
    (issue,) = info.value.issues
    assert issue.line == 1 and "model_stylesheet: expected ':'" in issue.message


def test_handlers_follow_the_spec_shapes() -> None:
    text = """digraph g {
      start; a [prompt="x"]; h [shape=hexagon]; t [shape=parallelogram, tool_command="true"]
      c [shape=diamond]; k [type=tool, tool_command="true"]; end
      start -> a -> h -> t -> c -> k -> end
    }"""
    graph = load_graph(text, dialect="attractor")
    handler = {n.id: n.handler for n in graph.nodes.values()}
    assert handler == {
        "start": "start",
        "a": "codergen",
        "h": "wait.human",
        "t": "shell",
        "c": "conditional",
        "k": "shell",
        "end": "exit",
    }
    default = load_graph(text.replace("end", "done"))  # the default dialect is unchanged
    assert default.nodes["a"].handler == "a"


def test_the_graph_attribute_chooses_the_dialect_and_the_argument_overrides_it() -> None:
    text = (
        "digraph g { graph [dialect=attractor]"
        " start [shape=Mdiamond] a; done [shape=Msquare] start -> a -> done }"
    )
    assert load_graph(text).nodes["a"].handler == "codergen"
    assert load_graph(text).attrs["dialect"] == "attractor"
    assert load_graph(text, dialect="turngraph").nodes["a"].handler == "a"
    with pytest.raises(GraphValidationError, match="unknown dialect 'klingon'"):
        load_graph(text.replace("=attractor", "=klingon"))
    with pytest.raises(ValueError, match="unknown dialect"):
        load_graph(text, dialect="klingon")


def test_spec_values_float_weights_prose_goal_gates_and_retry_alias() -> None:
    text = """digraph g {
      graph [default_max_retry=2, default_fidelity="telepathy"]
      start [shape=Mdiamond]; done [shape=Msquare]
      a [goal_gate="outcome = success"]
      start -> a
      a -> done [weight=2.5]
    }"""
    graph = load_graph(text, dialect="attractor")
    assert graph.edges[1].weight == 2.5
    assert graph.nodes["a"].get("goal_gate") is True
    assert graph.nodes["a"].retry.max_retries == 2
    warned = " | ".join(w.message for w in graph.warnings)
    assert "goal_gate 'outcome = success' is not true/false; read as true" in warned
    assert "fidelity 'telepathy' is not one of" in warned
    with pytest.raises(GraphValidationError, match="weight must be an integer"):
        load_graph(text.replace("telepathy", "compact"))


def test_contains_and_matches_compile_only_in_the_attractor_dialect() -> None:
    text = """digraph g {
      start [shape=Mdiamond]; done [shape=Msquare]; other [shape=Msquare]
      start -> done [condition="tool.output contains 'id' && tool.output matches '^i[a-z]+'"]
      start -> other [condition="!tool.output contains \\"id\\""]
    }"""
    graph = load_graph(text, dialect="attractor")
    first, second = (e.condition for e in graph.edges)
    assert first is not None and second is not None
    assert first.test({"tool.output": "ids: 3"}) and not second.test({"tool.output": "ids: 3"})
    assert not first.test({"tool.output": "none"}) and second.test({"tool.output": "none"})
    assert first.test({"tool.output": ["id"]}) is False  # a list: membership, no regex match
    with pytest.raises(GraphValidationError, match="condition"):
        load_graph(text, dialect="turngraph")
    with pytest.raises(GraphValidationError, match="bad expression"):
        load_graph(text.replace("^i[a-z]+", "(unclosed"), dialect="attractor")


DEAD_END = """digraph g {
    start [shape=Mdiamond]; exit [shape=Msquare]
    work [prompt="work"]
    failed [label="Give up", prompt="Explain the failure"]
    start -> work
    work -> exit [condition="outcome=success"]
    work -> failed [condition="outcome=fail"]
}"""


def test_a_deliberate_dead_end_is_accepted_and_ends_the_run() -> None:
    """Spec §3.2: a node with no outgoing edge ends the run with its own status."""
    with pytest.raises(GraphValidationError, match="no path from here to an exit"):
        load_graph(DEAD_END.replace("work [", "work [handler=codergen, "))
    graph = load_graph(DEAD_END, dialect="attractor")
    assert graph.exits == {"exit", "failed"}
    model = ScriptedModel([ValueError("model down"), "it broke because..."])
    result = run(graph, registry(llm=model))
    assert result.ok and [r.node_id for r in result.trace][-1] == "failed"
    assert result.context["reply"] == "it broke because..."


# --------------------------------------------------------------------------- running


@needs_corpus
def test_the_spec_simple_linear_example_runs_with_a_scripted_model() -> None:
    """spec §2.13: each box's prompt goes to the model in turn; the last answer is the reply."""
    assert CORPUS is not None
    path = CORPUS / "attractor-spec/strongdm+attractor/spec_L258.dot"
    graph = load_graph(path, dialect="attractor")
    model = ScriptedModel(["tests: 12 passed", "All 12 tests pass."])
    result = run(graph, registry(llm=model))
    assert result.ok, result.error
    assert [r.node_id for r in result.trace] == ["start", "run_tests", "report", "exit"]
    prompts = [messages[-1]["content"] for messages, _, _ in model.calls]
    assert prompts == ["Run the test suite and report results", "Summarize the test results"]
    assert result.context["last_stage"] == "report"
    assert result.context["reply"] == "All 12 tests pass."


def test_the_stylesheet_sends_each_node_to_its_model() -> None:
    model = Recorder()
    result = run(load_graph(SPEC_STYLESHEET, dialect="attractor"), registry(llm=model))
    assert result.ok, result.error
    assert model.models == ["claude-sonnet-4-5", "claude-opus-4-6", "gpt-5.2", "local-model"]
    assert model.requests[0].messages[-1]["content"] == "Plan: Implement feature X"
    assert [r.usage.model for r in result.trace if r.usage] == model.models


SHELL = """digraph g {
    start [shape=Mdiamond]; exit [shape=Msquare]
    probe [shape=parallelogram, tool_command="echo id=42; echo warn >&2"]
    found [prompt="Found it"]
    start -> probe
    probe -> found [condition="tool.output contains \\"id=42\\""]
    probe -> exit
    found -> exit
}"""


def test_tool_command_runs_when_enabled() -> None:
    """A real /bin/sh: stdout and stderr land in the context and route the run."""
    graph = load_graph(SHELL, dialect="attractor")
    result = run(graph, registry(llm=Recorder(), allow_shell=True))
    assert result.ok, result.error
    assert result.context["tool.output"] == "id=42\n"
    assert result.context["tool.stderr"] == "warn\n"
    assert result.context["tool.exit_code"] == 0
    assert [r.node_id for r in result.trace] == ["start", "probe", "found", "exit"]


def test_tool_command_is_refused_by_default_naming_the_node(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    graph = load_graph(SHELL.replace("echo id=42", f"touch {marker}"), dialect="attractor")
    result = run(graph, registry(llm=Recorder()))
    assert not result.ok and not marker.exists()
    assert isinstance(result.error, HandlerError)
    assert isinstance(result.error.cause, ShellDisabled)
    assert result.error.cause.node_id == "probe"
    assert "--allow-shell" in str(result.error.cause)


def test_a_failing_or_slow_command_fails_its_node(tmp_path: Path) -> None:
    text = """digraph g {
      start [shape=Mdiamond]; exit [shape=Msquare]
      bad [shape=parallelogram, tool_command="echo nope >&2; exit 3"]
      slow [shape=parallelogram, tool_command="sleep 30 & wait", timeout="300ms"]
      start -> bad -> exit
      bad -> slow [condition="outcome=fail"]
      slow -> exit
    }"""
    result = run(load_graph(text, dialect="attractor"), registry(allow_shell=True))
    assert not result.ok
    statuses = {r.node_id: (r.status, r.reason) for r in result.trace}
    assert statuses["bad"] == ("fail", "tool_command exited with status 3: nope")
    assert statuses["slow"][0] == "fail" and "timed out" in str(statuses["slow"][1])


# --------------------------------------------------------------------------- the CLI


@needs_corpus
def test_cli_validate_takes_the_dialect(capsys: pytest.CaptureFixture[str]) -> None:
    assert CORPUS is not None
    path = str(CORPUS / "attractor-spec/strongdm+attractor/spec_L1497.dot")
    assert main(["validate", path]) == 2
    assert main(["validate", "--dialect", "attractor", path]) == 0
    assert capsys.readouterr().out.rstrip().endswith("ok (5 nodes, 4 edges)")


def test_cli_run_refuses_shell_in_one_line_unless_allowed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TURNGRAPH_ALLOW_SHELL", raising=False)
    path = tmp_path / "p.dot"
    path.write_text(SHELL)
    assert main([str(path), "-m", "go", "--dialect", "attractor"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"{path}:3:5: error: shell: node 'probe': tool_command is refused")
    assert main([str(path), "-m", "go", "--dialect", "attractor", "--allow-shell", "--json"]) == 0
    assert '"status": "success"' in capsys.readouterr().out
    monkeypatch.setenv("TURNGRAPH_ALLOW_SHELL", "1")
    assert main([str(path), "-m", "go", "--dialect", "attractor"]) == 0


def test_every_spec_attribute_is_accounted_for() -> None:
    """The README's table and the dialect agree on what each attribute does."""
    from engine.attractor import ATTRS

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for name in ATTRS:
        assert f"`{name}`" in readme, name
    node = Node("n", "codergen")
    assert node.get("llm_model") is None
    assert os.path.exists("/bin/sh")


@needs_corpus
def test_validate_does_not_nag_about_spec_attributes() -> None:
    """fidelity, thread_id, llm_provider... are known in this dialect: no unread warnings."""
    from engine.cli.checks import check_file

    unread = [
        i.message
        for p in PIPELINES
        if _short(p) not in EXPECTED_FAILURES
        for i in check_file(str(p), registry(), "attractor").issues
        if "reads attribute" in i.message or "read by neither" in i.message
    ]
    named = {m.split("attribute ")[1].split()[0].strip("'") for m in unread}
    assert not named & {"fidelity", "thread_id", "llm_provider", "reasoning_effort", "goal_gate"}


def test_the_disk_cache_keeps_the_dialect_apart_and_its_conditions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A graph compiled to disk comes back with its extended conditions and float weights,
    and the same text read in the default dialect is another entry."""
    from engine.loader import clear_cache

    path = tmp_path / "p.dot"
    path.write_text(SHELL.replace("probe -> exit", "probe -> exit [weight=0.5]"))
    cache = tmp_path / "cache"
    first = load_graph(path, dialect="attractor", cache_dir=cache)
    assert [p.name.endswith("-attractor.json") for p in cache.iterdir()] == [True]
    clear_cache()
    with monkeypatch.context() as m:  # from disk: building again would raise
        m.setattr("engine.loader._build", lambda *a: pytest.fail("built again"))
        again = load_graph(path, dialect="attractor", cache_dir=cache)
    assert again is not first and again.source_hash == first.source_hash
    assert again.edges[2].weight == 0.5 and again.attrs["dialect"] == "attractor"
    condition = again.edges[1].condition
    assert condition is not None and condition.test({"tool.output": "id=42"})
    with pytest.raises(GraphValidationError):
        load_graph(path, cache_dir=cache)  # the default dialect: no 'contains', int weights


def test_cli_session_turns_take_the_dialect_and_the_shell_switch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stored session's turn reads the graph in the dialect; its shell nodes obey too."""
    monkeypatch.delenv("TURNGRAPH_ALLOW_SHELL", raising=False)
    monkeypatch.setenv("TURNGRAPH_HOME", str(tmp_path / "home"))
    path = tmp_path / "p.dot"
    path.write_text(SHELL)
    session = [str(path), "-m", "go", "--session", "s1", "--store", "memory:"]
    assert main([*session, "--dialect", "attractor"]) == 2
    assert "tool_command is refused" in capsys.readouterr().err
    assert main([*session, "--dialect", "attractor", "--allow-shell", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"status": "success"' in out and '"reply": "echo: Found it"' in out


REVIEW = """digraph g {
    start [shape=Mdiamond]; exit [shape=Msquare]
    review [prompt="Review; end with a JSON status"]
    fix [prompt="Fix it"]
    start -> review
    review -> exit [label="[A] Approve"]
    review -> fix  [label="[F] Fix"]
    review -> fix  [condition="outcome=fail"]
    fix -> review
}"""


def test_a_reply_ending_in_a_json_status_routes_the_run() -> None:
    """Appendix C's status fields, carried in the reply: label, context, outcome."""
    model = ScriptedModel(
        [
            'Needs work.\n```json\n{"outcome": "success", "preferred_label": "Fix",'
            ' "context_updates": {"review.round": 1}}\n```',
            "fixed",
            'Looks good {"preferred_label": "Approve"}',
        ]
    )
    result = run(load_graph(REVIEW, dialect="attractor"), registry(llm=model))
    assert result.ok, result.error
    assert [r.node_id for r in result.trace] == ["start", "review", "fix", "review", "exit"]
    assert result.context["review.round"] == 1


def test_a_reported_failure_takes_the_fail_edge_with_its_notes() -> None:
    model = ScriptedModel(['{"outcome": "fail", "notes": "tests red"}', "fixed", "{}"])
    result = run(load_graph(REVIEW, dialect="attractor"), registry(llm=model))
    assert result.ok, result.error
    first = result.trace[1]
    assert (first.node_id, first.status, first.reason) == ("review", "fail", "tests red")
    assert result.trace[2].node_id == "fix"


def test_tool_last_line_is_the_last_non_blank_stdout_line() -> None:
    text = SHELL.replace("echo id=42; echo warn >&2", "printf 'a\\\\nverdict: ok\\\\n\\\\n'")
    text = text.replace('tool.output contains \\\\"id=42\\\\"', "context.tool.last_line=ok")
    result = run(load_graph(text, dialect="attractor"), registry(llm=Recorder(), allow_shell=True))
    assert result.context["tool.last_line"] == "verdict: ok"


@pytest.mark.parametrize(
    ("preferred", "target"),
    [
        ("Approve", "ship"),
        ("[A] Approve", "ship"),
        ("f) fix", "fixes"),
        ("Fix", "fixes"),
        ("Nope", "other"),
    ],
)
def test_preferred_labels_match_edges_with_or_without_accelerators(
    preferred: str, target: str
) -> None:
    """Spec §3.3: labels compare lowercased and trimmed, accelerator prefixes stripped
    (in every dialect: the runner's edge choice)."""
    from engine import Outcome

    text = """digraph g {
      start [shape=Mdiamond]; done [shape=Msquare]
      start -> gate
      gate -> ship [label="[A] Approve"]
      gate -> fixes [label="[F] Fix"]
      gate -> other [weight=5]
      ship -> done; fixes -> done; other -> done
    }"""
    reg = HandlerRegistry()
    for name in ("start", "ship", "fixes", "other", "done"):
        reg.register(name, lambda node, ctx: None)
    reg.register("gate", lambda node, ctx: Outcome(preferred_label=preferred))
    result = run(load_graph(text, registry=reg), reg)
    assert [r.node_id for r in result.trace][2] == target


def test_parallel_llm_branches_join_and_the_fan_out_names_the_policy() -> None:
    """Two codergen branches both write llm.text: the join keeps the last writer instead
    of a MergeConflict; the fan-out's join_policy reaches the fan-in."""
    text = """digraph g {
      start [shape=Mdiamond]; exit [shape=Msquare]
      fan [shape=component, join_policy=first_success]
      a [prompt="branch a"]; b [prompt="branch b"]
      join [shape=tripleoctagon]
      start -> fan -> a -> join
      fan -> b -> join
      join -> exit
    }"""
    graph = load_graph(text, dialect="attractor")
    assert graph.nodes["join"].get("join") == "first_success"
    assert graph.nodes["join"].get("merge") == "last_writer"
    result = run(
        load_graph(text.replace(", join_policy=first_success", ""), dialect="attractor"),
        registry(llm=Recorder()),
    )
    assert result.ok, result.error
    assert result.context["llm.text"] == "default did it"


@needs_corpus
def test_cli_render_takes_the_dialect(capsys: pytest.CaptureFixture[str]) -> None:
    """Read as Attractor's, a pipeline renders as a graph; read as ours, marked in red."""
    assert CORPUS is not None
    path = str(CORPUS / "attractor-spec/strongdm+attractor/spec_L258.dot")
    assert main(["render", "--dialect", "attractor", path]) == 0
    out = capsys.readouterr().out
    assert "digraph" in out and '"handler"="codergen"' in out
    assert "color=red" not in out.replace('"', "")
    assert main(["render", path]) == 2
    assert "color=red" in capsys.readouterr().out.replace('"', "")
