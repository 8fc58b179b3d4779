"""A loopback model server for load: thousands of concurrent streams from one process.

``tests/llm_servers.py`` answers from a thread per connection, which is right for tests
(scripts, recorded requests) and wrong for a thousand concurrent streams.  This server
speaks the same wire formats (OpenAI Chat Completions and Anthropic Messages, SSE in
chunked transfer encoding, with usage) from one asyncio loop, and behaves like a model
under load: it waits ``ttft`` seconds before the first token, then sends ``tokens`` text
tokens ``gap`` seconds apart.  ``GET /stats`` answers how many requests it served and the
most it had in flight at once, so a benchmark can show that the load was concurrent.

Run it in a process of its own (so it shares no GIL with the client being measured)::

    python -m bench.loopback_llm openai --ttft 0.05 --tokens 20 --gap 0

It prints its base URL on the first line of stdout and serves until stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.llm_servers import Reply, _anthropic_sse, _openai_sse

__all__ = ["Load", "main", "serve", "serving", "spawn"]


@dataclass(frozen=True, slots=True)
class Load:
    """How the model behaves: delay to the first token, tokens per reply, gap between them."""

    provider: str = "openai"
    ttft: float = 0.05
    tokens: int = 20
    gap: float = 0.0


class _Counters:
    def __init__(self) -> None:
        self.served = 0
        self.in_flight = 0
        self.peak = 0


def _chunk(frame: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(frame), frame)


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, bytes] | None:
    """(request line, body) of the next request on a kept-alive connection; None at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    body = await reader.readexactly(length) if length else b""
    return lines[0], body


async def _stream(writer: asyncio.StreamWriter, load: Load, frames: tuple[bytes, ...]) -> None:
    head, text, tail = frames[0], frames[1:-1], frames[-1]
    writer.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        b"transfer-encoding: chunked\r\n\r\n" + head
    )
    await writer.drain()
    await asyncio.sleep(load.ttft)
    if load.gap <= 0:
        writer.write(b"".join(text) + tail)
    else:
        for i, frame in enumerate(text):
            if i:
                await asyncio.sleep(load.gap)
            writer.write(frame)
            await writer.drain()
        writer.write(tail)
    await writer.drain()


def _frames(load: Load) -> tuple[bytes, ...]:
    """The reply's chunks, encoded once: head, one per token, then tail and the end."""
    reply = Reply(tokens=tuple(f" t{i % 10}" for i in range(load.tokens)), usage=(12, load.tokens))
    sse = _anthropic_sse if load.provider == "anthropic" else _openai_sse
    before, after = sse(reply)
    lead = len(before) - load.tokens
    head = b"".join(_chunk(f) for f in before[:lead])
    text = tuple(_chunk(f) for f in before[lead:])
    tail = b"".join(_chunk(f) for f in after) + b"0\r\n\r\n"
    return (head, *text, tail)


def _json(doc: object) -> bytes:
    body = json.dumps(doc).encode()
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )


async def serve(load: Load, ready: asyncio.Future[str]) -> None:
    """Serve ``load`` on a free loopback port until cancelled; ``ready`` gets the base URL."""
    frames = _frames(load)
    counters = _Counters()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # Headers, head and tokens are separate writes: without this, Nagle's algorithm
            # and the client's delayed ACK hold tokens back by tens of milliseconds.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while (request := await _read_request(reader)) is not None:
                line, _ = request
                if line.startswith("GET /stats"):
                    doc = {"served": counters.served, "peak_in_flight": counters.peak}
                    writer.write(_json(doc))
                    await writer.drain()
                    continue
                counters.in_flight += 1
                counters.peak = max(counters.peak, counters.in_flight)
                try:
                    await _stream(writer, load, frames)
                finally:
                    counters.in_flight -= 1
                    counters.served += 1
        except ConnectionError:
            pass  # the client hung up: its own business
        finally:
            writer.close()

    server = await asyncio.start_server(connection, "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    path = "" if load.provider == "anthropic" else "/v1"
    ready.set_result(f"http://127.0.0.1:{port}{path}")
    async with server:
        await server.serve_forever()


async def _until_stdin_closes(load: Load) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[str] = loop.create_future()
    task = asyncio.create_task(serve(load, ready))
    print(await ready, flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    task.cancel()


@contextlib.contextmanager
def spawn(module: str, *args: str) -> Iterator[str]:
    """Run ``python -m module args`` (a loopback server that prints its URL first and
    serves until stdin closes) in a process of its own, so it shares no GIL with the
    client being measured; yields the URL."""
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)


def serving(load: Load) -> contextlib.AbstractContextManager[str]:
    """This server, behaving as ``load`` says, in a process of its own (see :func:`spawn`)."""
    gap, ttft, tokens = str(load.gap), str(load.ttft), str(load.tokens)
    return spawn(__name__, load.provider, "--ttft", ttft, "--tokens", tokens, "--gap", gap)


def main(argv: list[str] | None = None) -> None:
    """``python -m bench.loopback_llm PROVIDER [--ttft S] [--tokens N] [--gap S]``."""
    parser = argparse.ArgumentParser(prog="python -m bench.loopback_llm")
    parser.add_argument("provider", choices=("openai", "anthropic"))
    parser.add_argument("--ttft", type=float, default=0.05)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--gap", type=float, default=0.0)
    a = parser.parse_args(argv)
    asyncio.run(_until_stdin_closes(Load(a.provider, a.ttft, a.tokens, a.gap)))


if __name__ == "__main__":
    main()
