"""The loopback floor: the least an HTTP server process can answer with, for scale.

``bench serve`` times a turn over HTTP against the same turn in-process.  Part of the
difference is not the server's code at all: the request and the response each cross the
kernel's loopback and wake a process, and on a machine shared with other jobs each
wake-up waits for a core.  This server does nothing else: one asyncio protocol that, for
each request read (headers and a ``Content-Length`` body), writes back a fixed JSON
response of the size a turn's answer has.  Timed beside the turn, alternating, its round
trip is the floor any server pays here, at this load.

Run it in a process of its own::

    python -m bench.http_floor

It prints its base URL on the first line of stdout and serves until stdin closes.
"""

from __future__ import annotations

import asyncio
import sys

__all__ = ["RESPONSE_BODY", "main"]

RESPONSE_BODY = b'{"status":"success","reply":"' + b"x" * 1000 + b'"}'
"""About the size of a turn's JSON answer (the reply, the usage and a 7-node trace)."""

_RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
    len(RESPONSE_BODY),
    RESPONSE_BODY,
)


class _Floor(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head = self.buf[:end].lower()
            at = head.find(b"content-length:")
            size = int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
            if len(self.buf) < end + 4 + size:
                return
            self.buf = self.buf[end + 4 + size :]
            assert self.transport is not None
            self.transport.write(_RESPONSE)


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Floor, "127.0.0.1", 0)
    print(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
    server.close()


def main() -> None:
    """Serve until standard input closes."""
    asyncio.run(_serve())


if __name__ == "__main__":
    main()
