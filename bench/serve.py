"""The HTTP API (issue 14): what a turn over HTTP adds, many SSE streams, idle connections.

The server is ``python -m engine.run serve`` in a process of its own (so it shares no
GIL with the client measuring it).  Measured in one run:

* **turn over HTTP vs in-process**: the same turn (offline ``echo`` model, ``memory:``
  store, shipped ``turn.dot``) sent by ``session.send`` in this process, and by
  ``POST /sessions/{id}/turns`` over one kept-alive loopback connection (a plain socket
  sending a pre-encoded request, :class:`_Client`: the client's own cost kept as small
  as it goes, so the figure is the server's), alternating turn by turn so both see the
  same machine load; p50 and p99 of each and the difference (goal ≤ 1 ms added at the
  p50).  Between them, in the same rounds, a bare round trip to :mod:`bench.http_floor`
  (a server that only answers): what any server process pays on this machine at this
  load, so the server's own share is the difference beyond it.  CPU per turn of the
  client, the server process and the in-process turn, which the load does not move;
  the app's own share, the same turn as a bare ASGI call in this process (no socket,
  no uvicorn) against ``session.send``; and, when uvloop is installed, the differences
  again with the server on ``--loop uvloop`` (the default is asyncio's own loop);
* **concurrent SSE streams**: ``N`` clients (1,000) each stream one turn at once as
  Server-Sent Events from one server process whose model is a loopback server
  (:mod:`bench.loopback_llm`, 50 ms to the first token); failed streams (no ``result``
  event, an ``error`` event, a non-200) and stalled ones (no ``result`` within 120 s)
  are counted (goal 0); the same turns streamed in this process (``session.stream``,
  no HTTP) are timed after, for scale: on a shared 2-core machine the model SDK's own
  CPU per stream dominates both;
* **memory per idle connection**: the server's RSS before and after ``N`` kept-alive
  connections have each made one request and sit idle, divided by ``N``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from bench.harness import BenchContext, BenchResult, Stats, at_most, bench_env
from bench.loopback_llm import Load, serving

NAME = "serve"
TITLE = "HTTP API: a turn over HTTP vs in-process; 1,000 concurrent SSE streams; idle connections"

_ROOT = Path(__file__).resolve().parent.parent
_STALL = 120.0
"""Seconds after which a stream that has not ended counts as stalled."""


@contextlib.contextmanager
def _server(*args: str, env: dict[str, str] | None = None) -> Iterator[tuple[str, int]]:
    """``python -m engine.run serve --port 0 ARGS`` in its own process: (base URL, pid)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.run", "serve", "--port", "0", *args],
        cwd=_ROOT,
        env={**os.environ, "PYTHONPATH": str(_ROOT), **(env or {})},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("serving on "):
            raise RuntimeError(f"the server did not start: {line!r}")
        yield line.split()[-1], proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _cpu_ns(pid: int) -> int:
    """CPU time (user + system) process ``pid`` has used, in nanoseconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------- one turn


class _Client:
    """One kept-alive loopback connection sending a fixed, pre-encoded request.

    A plain socket, on purpose: the figure is what the *server* adds, so the client's
    own cost is kept as small as it goes and the same on every run.  (stdlib
    ``http.client`` spends ~0.1 ms of CPU per request building headers and parsing the
    response with the email package; httpx more.)  The answer is read to its
    ``Content-Length`` and checked: status 200 and ``"status":"success"`` in the body.
    """

    def __init__(self, url: str, path: str) -> None:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        body = b'{"text": "hello"}'
        self.request = (
            f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        ).encode() + body

    def turn(self) -> None:
        """Send the request; return once the whole response has arrived (checked)."""
        self.sock.sendall(self.request)
        data = self.sock.recv(65536)
        while (end := data.find(b"\r\n\r\n")) < 0:
            data += self._more(data)
        head = data[:end].lower()
        at = head.find(b"content-length:")
        size = int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else -1
        while len(data) < end + 4 + size:
            data += self._more(data)
        if not head.startswith(b"http/1.1 200") or b'"status":"success"' not in data[end:]:
            raise RuntimeError(f"turn failed: {data[:200]!r}")

    def _more(self, data: bytes) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise RuntimeError(f"the server closed the connection: {data[:200]!r}")
        return chunk

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()


@contextlib.contextmanager
def _floor() -> Iterator[str]:
    """:mod:`bench.http_floor` in its own process: its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.http_floor"],
        cwd=_ROOT,
        env={**os.environ, "PYTHONPATH": str(_ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        yield proc.stdout.readline().strip()
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class _Turns:
    """Nanoseconds per round trip of each kind, and CPU nanoseconds per turn."""

    http: list[int] = field(default_factory=list)
    floor: list[int] = field(default_factory=list)
    local: list[int] = field(default_factory=list)
    client_cpu: float = 0.0
    server_cpu: float = 0.0
    local_cpu: float = 0.0


async def _interleaved(url: str, floor_url: str, pid: int, n: int, warmup: int) -> _Turns:
    """``n`` rounds of: a turn over HTTP, a bare round trip to the loopback floor, the
    same turn in-process; alternating, so all three see the same machine load.  CPU per
    turn of the client, of the server process and of the in-process turn too (figures
    the machine's load does not move)."""
    from sessions import SessionManager

    client, floor = _Client(url, "/sessions/http/turns"), _Client(floor_url, "/")
    clock, cpu = time.perf_counter_ns, time.thread_time_ns
    out = _Turns()
    client_cpu = local_cpu = server_cpu = 0
    try:
        async with SessionManager("memory:", llm="echo") as manager:
            session = await manager.get_or_create("local")
            for i in range(warmup + n):
                if i == warmup:
                    server_cpu, client_cpu, local_cpu = -_cpu_ns(pid), 0, 0
                c0, t0 = cpu(), clock()
                client.turn()  # blocking, on purpose: nothing else runs meanwhile
                t1, c1 = clock(), cpu()
                floor.turn()
                t2, c2 = clock(), cpu()
                await session.send("hello")
                t3, c3 = clock(), cpu()
                client_cpu += c1 - c0
                local_cpu += c3 - c2
                if i >= warmup:
                    out.http.append(t1 - t0)
                    out.floor.append(t2 - t1)
                    out.local.append(t3 - t2)
            server_cpu += _cpu_ns(pid)
    finally:
        client.close()
        floor.close()
    out.client_cpu, out.server_cpu, out.local_cpu = client_cpu / n, server_cpu / n, local_cpu / n
    return out


async def _asgi_added(n: int, warmup: int) -> tuple[Stats, Stats]:
    """The app's own share: the same turn as an ASGI call in this process (no socket,
    no uvicorn) against ``session.send``, alternating; p50s of each."""
    from engine.server import create_app

    app = create_app("memory:", llm="echo")
    st = app.state.turngraph
    body = b'{"text": "hello"}'
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/sessions/asgi/turns",
        "raw_path": b"/sessions/asgi/turns",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"17")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
    }

    async def call() -> None:
        pending: list[MutableMapping[str, Any]] = [
            {"type": "http.request", "body": body, "more_body": False}
        ]

        async def receive() -> MutableMapping[str, Any]:
            return pending.pop() if pending else {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start" and message["status"] != 200:
                raise RuntimeError(f"ASGI turn failed: {message['status']}")

        await app(dict(scope), receive, send)

    clock = time.perf_counter_ns
    app_ns: list[int] = []
    local_ns: list[int] = []
    async with st.manager, anyio.create_task_group() as tg:
        st.tg = tg
        session = await st.manager.get_or_create("local")
        for i in range(warmup + n):
            t0 = clock()
            await call()
            t1 = clock()
            await session.send("hello")
            t2 = clock()
            if i >= warmup:
                app_ns.append(t1 - t0)
                local_ns.append(t2 - t1)
        tg.cancel_scope.cancel()
    return Stats.of(app_ns), Stats.of(local_ns)


# --------------------------------------------------------------------------- SSE streams


async def _sse_turn(host: str, port: int, sid: str) -> None:
    """One streamed turn on a fresh connection; raises unless it ends with ``result``."""
    reader, writer = await asyncio.open_connection(host, port)
    body = b'{"text": "hello"}'
    writer.write(
        f"POST /sessions/{sid}/turns HTTP/1.1\r\nhost: {host}\r\n"
        "accept: text/event-stream\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
        + body
    )
    try:
        seen = b""
        while b"event: result\n" not in seen and b"event: error\n" not in seen:
            chunk = await reader.read(65536)
            if not chunk:
                break
            seen += chunk
        if not seen.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(seen.split(b"\r\n", 1)[0].decode(errors="replace"))
        if b"event: result\n" not in seen:
            raise RuntimeError("the stream ended without a result event")
    finally:
        writer.close()


async def _streams(url: str, n: int) -> tuple[float, int, int, Stats, str]:
    """``n`` streams at once: (wall, failed, stalled, latencies, first error)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    latencies: list[float] = []
    errors: list[str] = []
    stalled = [0]

    async def one(i: int) -> None:
        t0 = time.perf_counter_ns()
        try:
            with anyio.fail_after(_STALL):
                await _sse_turn(host, int(port), f"sse{i}")
        except TimeoutError:
            stalled[0] += 1
            return
        except Exception as exc:  # counted, not fatal to the wave
            errors.append(f"{type(exc).__name__}: {exc}")
            return
        latencies.append(time.perf_counter_ns() - t0)

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(one, i)
    wall = time.perf_counter() - t0
    return wall, len(errors), stalled[0], Stats.of(latencies or [0.0]), (errors or [""])[0]


async def _in_process(model: str, n: int) -> tuple[float, int]:
    """The same ``n`` streamed turns in this process (``session.stream``, no HTTP): the
    wall time and the failures, for scale against the served ones."""
    from handlers.adapters.spec import from_spec
    from sessions import Limits, SessionManager

    llm = from_spec("openai:m", base_url=model, api_key="no-key", timeout=_STALL)
    failed = [0]
    try:
        limits = Limits(max_active_sessions=2 * n)
        async with SessionManager("memory:", llm=llm, limits=limits) as manager:
            sessions = [await manager.get_or_create(f"p{i}") for i in range(n)]

            async def one(i: int) -> None:
                async with sessions[i].stream("hello") as events:
                    async for _ in events:
                        pass
                if events.result is None or not events.result.ok:
                    failed[0] += 1

            t0 = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for i in range(n):
                    tg.start_soon(one, i)
            return time.perf_counter() - t0, failed[0]
    finally:
        await llm.aclose()  # type: ignore[attr-defined]


async def _idle(url: str, pid: int, n: int) -> float:
    """Bytes of server RSS per kept-alive idle connection (each made one request)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    await asyncio.sleep(0.5)
    before = _rss(pid)
    writers: list[asyncio.StreamWriter] = []
    try:
        for _ in range(n):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(f"GET /healthz HTTP/1.1\r\nhost: {host}\r\n\r\n".encode())
            await reader.readuntil(b'{"status":"ok"}')
            writers.append(writer)
        after = _rss(pid)
    finally:
        for writer in writers:
            writer.close()
    return (after - before) / n


# --------------------------------------------------------------------------- the run


def _add_turns(res: BenchResult, timed: _Turns, app_added: float | None, label: str = "") -> None:
    """The rows of one interleaved run; ``label`` prefixes them (a second loop's run gets
    only the differences, ``app_added`` None)."""
    http, floor, local = Stats.of(timed.http), Stats.of(timed.floor), Stats.of(timed.local)
    if app_added is not None:
        res.add_latency("turn in-process", local, mean_too=False)
        res.add_latency("turn over HTTP", http, mean_too=False)
        res.add_latency("loopback floor (a bare HTTP answer)", floor, mean_too=False)
    goal = at_most(1000) if app_added is not None else None
    res.add(f"{label}HTTP added, p50", (http.p50 - local.p50) / 1e3, "µs", goal)
    res.add(f"{label}HTTP added, p99", (http.p99 - local.p99) / 1e3, "µs")
    res.add(
        f"{label}HTTP added beyond the loopback floor, p50",
        (http.p50 - local.p50 - floor.p50) / 1e3,
        "µs",
        note="the server's own share: uvicorn, the app, the JSON" if not label else "",
    )
    cpu_added = (timed.server_cpu - timed.local_cpu) / 1e3
    if app_added is None:
        res.add(f"{label}HTTP added, server CPU per turn", cpu_added, "µs")
        return
    res.add("app layer added, p50 (ASGI call in-process vs session.send)", app_added / 1e3, "µs")
    res.add("client CPU per HTTP turn", timed.client_cpu / 1e3, "µs")
    res.add("CPU per turn in-process", timed.local_cpu / 1e3, "µs")
    res.add("server CPU per turn over HTTP", timed.server_cpu / 1e3, "µs")
    res.add("HTTP added, server CPU per turn", cpu_added, "µs")


def run(ctx: BenchContext) -> BenchResult:
    """Measure the three parts in one run (see the module)."""
    res = BenchResult(NAME, TITLE)
    t0 = time.perf_counter()
    try:
        import openai  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        res.unavailable = f"{exc.name} is not installed: pip install 'turngraph[serve,openai]'"
        return res
    turns, streams = ctx.n(2000, 200), ctx.n(1000, 50)
    warmup = ctx.n(200, 20)
    res.params.update(turns=turns, streams=streams, ttft_ms=50, store="memory:")
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as d, bench_env(Path(d)):
        load_before = os.getloadavg()[0]
        echo = ("--store", "memory:", "--llm", "echo")
        with _server(*echo) as (url, pid), _floor() as floor:
            timed = anyio.run(_interleaved, url, floor, pid, turns, warmup)
        # The same on uvloop (`--loop uvloop`), when it is installed: for scale.
        on_uvloop = None
        if importlib.util.find_spec("uvloop") is not None:
            with _server(*echo, "--loop", "uvloop") as (url, pid), _floor() as floor:
                on_uvloop = anyio.run(_interleaved, url, floor, pid, turns, warmup)
        load_after = os.getloadavg()[0]
        app_stats, bare_stats = anyio.run(_asgi_added, turns, warmup)
        load = Load("openai", ttft=0.05, tokens=20, gap=0.0)
        with serving(load) as model:
            env = {"OPENAI_BASE_URL": model, "OPENAI_API_KEY": "no-key"}
            args = ("--store", "memory:", "--llm", "openai:m", "--max-sessions", str(2 * streams))
            with _server(*args, env=env) as (url, pid):
                per_conn = anyio.run(_idle, url, pid, streams)  # first: a fresh heap
                wall, failed, stalled, lat, first = anyio.run(_streams, url, streams)
            local_wall, local_failed = anyio.run(_in_process, model, streams)
    _add_turns(res, timed, app_stats.p50 - bare_stats.p50)
    if on_uvloop is not None:
        _add_turns(res, on_uvloop, None, "--loop uvloop: ")
    res.notes.append(
        f"load average {load_before:.1f} → {load_after:.1f} on {os.cpu_count()} cores while "
        "the turns were timed"
    )
    res.add("SSE streams: failed", failed, "", at_most(0), note=first[:80])
    res.add("SSE streams: stalled", stalled, "", at_most(0))
    res.add("SSE streams: wall", wall * 1e3, "ms")
    res.add("same turns in-process (session.stream): wall", local_wall * 1e3, "ms")
    res.add("same turns in-process: failed", local_failed, "")
    res.add("SSE stream latency p50", lat.p50 / 1e6, "ms")
    res.add("SSE stream latency p99", lat.p99 / 1e6, "ms")
    res.add("server RSS per idle connection", per_conn / 1024, "KiB")
    res.notes.append(
        "HTTP: a plain socket client on one kept-alive loopback connection to a server "
        "process of its own; in-process: session.send on the same graph, model and store kind"
    )
    res.seconds = time.perf_counter() - t0
    return res
