"""The web trace viewer over real HTTP: sessions list and search, a conversation, a
turn's highlighted path drawn by Graphviz (real ``dot``) and its node-visit table."""

from __future__ import annotations

import html
import re
import shutil
from collections.abc import Iterator, Mapping
from typing import Any

import anyio
import pytest

from engine import HandlerRegistry, Node, load_graph
from engine.server import create_app
from sessions import SessionManager

from .serve_kit import Running

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` not installed")


def svg_ids(page: str) -> list[str]:
    """The ``id`` of each ``<g>`` in the page's inline SVG, unescaped."""
    return [html.unescape(i) for i in re.findall(r'<g id="([^"]*)"', page)]


def _turn(served: Running, sid: str, text: str) -> None:
    response = served.client.post(f"/sessions/{sid}/turns", json={"text": text})
    assert response.status_code == 200, response.text


def test_the_sessions_page_lists_and_searches_sessions(served: Running) -> None:
    for sid in ("alice-1", "alice-2", "bob"):
        _turn(served, sid, "hi")
    everyone = served.client.get("/")
    assert everyone.status_code == 200 and everyone.headers["content-type"].startswith("text/html")
    assert all(f'href="/ui/sessions/{sid}"' in everyone.text for sid in ("alice-1", "bob"))
    found = served.client.get("/", params={"q": "ALICE"}).text
    assert "/ui/sessions/alice-2" in found and "/ui/sessions/bob" not in found
    assert 'value="ALICE"' in found
    assert "no sessions match" in served.client.get("/", params={"q": "zed"}).text


def test_the_conversation_page_shows_messages_by_turn_escaped(served: Running) -> None:
    _turn(served, "carol", "<script>alert(1)</script>")
    _turn(served, "carol", "second")
    text = served.client.get("/ui/sessions/carol").text
    assert "<script>alert" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert 'href="/ui/sessions/carol/turns/1"' in text and "turn 2</a> · success" in text
    assert "echo: second" in text and re.search(r"\d+\.\d\d ms", text)


@needs_dot
def test_the_turn_page_draws_the_path_taken_and_the_visits(served: Running) -> None:
    _turn(served, "dave", "hello")
    response = served.client.get("/ui/sessions/dave/turns/1")
    assert response.status_code == 200
    text = response.text
    ids = svg_ids(text)
    path = ["start", "classify", "recall", "llm_call", "format", "update_memory", "done"]
    assert {f"tg-visited-{n}" for n in path} == {i for i in ids if i.startswith("tg-visited-")}
    assert "tg-taken-classify-recall" in ids and "tg-taken-llm_call-format" in ids
    # The branch the turn did not take stays plain.
    assert not any("reject" in i for i in ids) and "<title>reject</title>" in text
    assert "echo: hello" in text  # the reply
    assert re.search(r"<td>llm_call</td><td>success</td><td>1</td><td>\d+\.\d\d ms</td>", text)
    assert "<th>context keys changed</th>" in text  # what each visit wrote, by name
    assert re.search(
        r"<td>format</td><td>success</td><td>1</td><td>[\d.]+ ms</td><td>reply</td>", text
    )
    assert "<?xml" not in text  # the SVG is inline, without its prolog


@needs_dot
def test_a_retried_node_and_the_failing_node_are_marked(flaky: Running) -> None:
    _turn(flaky, "erin", "please break")
    text = flaky.client.get("/ui/sessions/erin/turns/1").text
    ids = svg_ids(text)
    assert "tg-retried-llm_call" in ids and "tg-failed-format" in ids
    assert "tg-visited-classify" in ids and not any(i.endswith("-done") for i in ids)
    assert "status <b>fail</b>" in text and "the template engine broke" in text
    assert re.search(r'<tr class="retry">.*?<td>llm_call</td><td>success</td><td>2</td>', text)
    assert re.search(r'<tr class="fail">.*?<td>format</td><td>fail</td>', text)


def test_missing_sessions_and_turns_are_html_errors(served: Running) -> None:
    _turn(served, "frank", "hi")
    for url, status in (
        ("/ui/sessions/nobody", 404),
        ("/ui/sessions/frank/turns/2", 404),
        ("/ui/sessions/frank/turns/0", 400),
        ("/ui/sessions/bad%20id", 400),
    ):
        response = served.client.get(url)
        assert response.status_code == status, url
        assert response.headers["content-type"].startswith("text/html")
        assert "Traceback" not in response.text


PARALLEL = """digraph p {
    start [shape=Mdiamond]
    fan [shape=component]
    docs [handler=search]
    web [handler=search]
    join [shape=tripleoctagon merge=list]
    done [shape=Msquare]
    start -> fan
    fan -> docs -> join
    fan -> web -> join
    join -> format -> done
}"""


@pytest.fixture
def branched(db: str) -> Iterator[Running]:
    """A server whose turn graph runs two parallel branches, ``docs`` and ``web``."""

    async def search(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
        await anyio.sleep(0.02 if node.id == "docs" else 0)  # web finishes first
        return {"found": node.id}

    def fmt(node: Node, ctx: Mapping[str, Any]) -> dict[str, Any]:
        return {"reply": "+".join(ctx["found"])}

    registry = HandlerRegistry({"search": search, "format": fmt})
    manager = SessionManager(db, registry=registry, turn_graph=load_graph(PARALLEL))
    with Running(create_app(manager=manager)) as running:
        yield running


@needs_dot
def test_the_turn_page_draws_each_parallel_branch_on_its_own_path(branched: Running) -> None:
    _turn(branched, "fran", "look")
    text = branched.client.get("/ui/sessions/fran/turns/1").text
    ids = svg_ids(text)
    assert {f"tg-visited-{n}" for n in ("fan", "docs", "web", "join")} <= set(ids)
    # Each branch leaves the fan-out and reaches the fan-in; no edge joins the branches.
    taken = {i for i in ids if i.startswith("tg-taken-")}
    assert {"tg-taken-fan-docs", "tg-taken-fan-web", "tg-taken-docs-join"} <= taken
    assert "tg-taken-web-join" in taken and "tg-taken-docs-web" not in taken
    assert "branch docs" in text and "branch web" in text  # the nodes' labels say so
    assert "<th>branch</th>" in text
    assert ">docs</span></td><td>docs</td><td>search</td><td>success</td>" in text
    assert ">join</span></td><td></td><td>parallel.fan_in</td>" in text


async def _beat(running: Running, sid: str) -> bool:
    session = next(s for s in running.state.manager.live if s.id == sid)
    return await session.heartbeat.beat()


@needs_dot
def test_a_hosted_sessions_heartbeat_runs_are_listed_and_drawn(served: Running) -> None:
    _turn(served, "hana", "hi")
    assert 'href="/ui/sessions/hana/heartbeats"' in served.client.get("/ui/sessions/hana").text
    assert "no heartbeat has run yet" in served.client.get("/ui/sessions/hana/heartbeats").text
    assert served.call(_beat(served, "hana")) is True
    (run,) = served.client.get("/sessions/hana/heartbeats").json()["runs"]
    assert run["run"] == 1 and run["status"] == "success" and run["trace"][0]["id"] == "start"
    runs = served.client.get("/ui/sessions/hana/heartbeats").text
    assert 'href="/ui/sessions/hana/heartbeats/1"' in runs and "<td>success</td>" in runs
    text = served.client.get("/ui/sessions/hana/heartbeats/1").text
    ids = svg_ids(text)
    assert {"tg-visited-start", "tg-visited-check_goals", "tg-visited-done"} <= set(ids)
    assert "tg-taken-start-check_goals" in ids
    # Three edges join choose_mode and reflect; the run took one, and only it lights.
    assert ids.count("tg-taken-choose_mode-reflect") == 1
    assert run["trace"][2]["id"] == "choose_mode" and isinstance(run["trace"][2]["edge"], int)
    assert re.search(r"<td>check_goals</td><td>success</td><td>1</td><td>[\d.]+ ms</td>", text)
    for url, status in (
        ("/ui/sessions/hana/heartbeats/2", 404),
        ("/ui/sessions/hana/heartbeats/0", 400),
        ("/ui/sessions/nobody/heartbeats", 404),
    ):
        response = served.client.get(url)
        assert response.status_code == status, url
    assert "not hosted by this server" in served.client.get("/ui/sessions/nobody/heartbeats").text
