"""The cluster client's checks and the hop's error transport, without a cluster."""

from __future__ import annotations

import pickle
import socket
import sys
import threading
from pathlib import Path

import pytest

from engine.errors import GatePaused, HandlerError, TurngraphError
from sessions.cluster import (
    ClusterStoreRefused,
    ClusterUnavailable,
    HostError,
    RayNotInstalled,
    RaySessions,
    check_store,
)
from sessions.cluster.wire import Reply, pack_error, turn_reply, unpack_error
from sessions.errors import Fenced, SessionBusy, StoreError
from sessions.session import TurnResult

from .conftest import import_ray_or_skip

PG = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.mark.parametrize("url", ["memory:", "sqlite:///chat.db", "sqlite:////tmp/x.db"])
def test_local_stores_are_refused_in_one_line(url: str) -> None:
    """SQLite and memory: cannot be shared by hosts on other nodes."""
    with pytest.raises(ClusterStoreRefused) as info:
        RaySessions(url)
    assert isinstance(info.value, StoreError)
    message = str(info.value)
    assert "\n" not in message and "PostgreSQL" in message and message.startswith(url)


def test_a_refused_url_never_shows_its_password() -> None:
    """The error names the store with its password masked."""
    with pytest.raises(ClusterStoreRefused, match="PostgreSQL") as info:
        check_store("mysql://bob:hunter2@db/x")
    assert "hunter2" not in str(info.value)
    assert check_store(PG) == PG


def test_a_missing_ray_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the extra, making a client is one typed line naming the extra."""
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(RayNotInstalled) as info:
        RaySessions(PG)
    assert str(info.value) == ("sessions on a Ray cluster need Ray: pip install 'turngraph[ray]'")


def test_nothing_else_in_sessions_imports_the_cluster_package() -> None:
    """The cluster client is a top layer: no other sessions module refers to it."""
    root = Path(__file__).resolve().parents[2] / "sessions"
    users = [
        p
        for p in root.rglob("*.py")
        if "cluster" not in p.relative_to(root).parts and "sessions.cluster" in p.read_text()
    ]
    assert users == []


def test_session_errors_cross_the_hop_as_themselves() -> None:
    """A SessionBusy or Fenced raised on a host is raised again, same class and fields."""
    busy = unpack_error(pack_error(SessionBusy("alice", "3 turns already queued")))
    assert type(busy) is SessionBusy
    assert (busy.session_id, busy.reason) == ("alice", "3 turns already queued")
    assert str(busy) == "session 'alice': 3 turns already queued"
    fenced = unpack_error(pack_error(Fenced("postgresql://db", "bob", 3, 4)))
    assert isinstance(fenced, Fenced)
    assert (fenced.session_id, fenced.expected, fenced.actual, fenced.url) == (
        "bob",
        3,
        4,
        "postgresql://db",
    )


def test_a_paused_turn_keeps_its_question_and_choices_across_the_hop() -> None:
    """A gate's pause carries a tuple of choices: it crosses the hop with them."""
    paused = TurnResult("", "paused", 1, (), GatePaused("approve", "Deploy?", ("go", "skip")))
    back = pickle.loads(pickle.dumps(turn_reply(paused))).unwrap()
    assert (back.question, back.choices) == ("Deploy?", ("go", "skip"))


def test_foreign_errors_become_host_errors() -> None:
    """Anything not a turngraph error arrives as a HostError naming its type."""
    err = unpack_error(pack_error(KeyError("x")))
    assert isinstance(err, HostError) and isinstance(err, TurngraphError)
    assert str(err) == "session host: KeyError: 'x'"
    with pytest.raises(HostError, match="ZeroDivisionError"):
        Reply(error=pack_error(ZeroDivisionError("boom"))).unwrap()


def test_a_failed_turn_keeps_its_error_across_the_hop() -> None:
    """A failed turn's result travels without its exception object and gets it back."""
    cause = HandlerError("llm_call", "llm_call", 2, "down", RuntimeError("down"))
    reply = turn_reply(TurnResult("", "fail", 3, (), cause, "s:3"))
    assert reply.value.error is None
    result = reply.unwrap()
    assert isinstance(result.error, HandlerError)
    assert (result.turn, result.status, str(result.error)) == (3, "fail", str(cause))


def _refusing_port() -> int:
    """A loopback port nothing listens on (bound, never listened: connections refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("address", "reason"),
    [("127.0.0.1:{port}", "Connection refused"), ("nonsense:x", "is not HOST:PORT")],
)
def test_an_address_without_a_cluster_is_refused_at_once(address: str, reason: str) -> None:
    """A ``HOST:PORT`` that refuses connections is ``ClusterUnavailable`` before Ray
    is started (``ray.init`` would retry it for minutes); so is a malformed address."""
    import_ray_or_skip()
    client = RaySessions(PG, address=address.format(port=_refusing_port()))
    with pytest.raises(ClusterUnavailable, match=reason):
        client.connect()


@pytest.mark.parametrize("reply", [b"", b"HTTP/1.1 400 Bad Request\r\n\r\n"])
def test_a_listener_that_is_not_ray_is_refused_at_once(reply: bytes) -> None:
    """A ``HOST:PORT`` where something else listens (a silent port, a web server) is
    ``ClusterUnavailable`` before Ray is started: ``ray.init`` would wait for a GCS
    there forever, logging every few seconds."""
    import_ray_or_skip()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]

        def answer() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.sendall(reply)
                conn.recv(64)  # keeps the connection open until the client is done

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        client = RaySessions(PG, address=f"127.0.0.1:{port}")
        with pytest.raises(ClusterUnavailable, match="no Ray cluster answers there"):
            client.connect()
        thread.join(10)
