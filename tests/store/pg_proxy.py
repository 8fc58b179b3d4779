"""A loopback TCP proxy in front of PostgreSQL that can cut a connection at the worst time.

:class:`PgProxy` forwards bytes both ways between a client on ``127.0.0.1:<port>`` and
the real server.  :meth:`PgProxy.arm` makes it cut the *next* connection whose client
sends a message containing ``pattern`` (``b"COMMIT"``, or a statement's text):

* ``when="reply"``: the request is forwarded, the server answers (so it has run the
  statement, and a ``COMMIT`` has committed), only the first ``keep`` bytes of the
  answer are forwarded, then both sockets close: the client never learns the outcome;
* ``when="request"``: the request is forwarded and both sockets close at once, so the
  server may or may not have run it by the time it notices.

It cuts once per :meth:`arm`; ``cuts`` counts the cuts made.  With ``then_refuse`` the
cut also drops every other connection and refuses new ones (the server seems gone)
until ``refusing`` is set back to ``False``.  Everything else passes
through untouched, so libpq's startup, TLS refusal and authentication work as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

__all__ = ["PgProxy"]


@dataclass
class _Trap:
    pattern: bytes
    when: Literal["reply", "request"]
    keep: int
    then_refuse: bool = False


@dataclass
class PgProxy:
    """A proxy for the server at ``host:port`` (see the module docstring)."""

    host: str
    port: int
    cuts: int = 0
    refusing: bool = False
    _trap: _Trap | None = None
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @classmethod
    def for_url(cls, url: str) -> PgProxy:
        """A proxy for the server a ``postgresql://`` URL names."""
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 5432)

    async def start(self) -> int:
        """Listen on a free loopback port; returns it."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    def url(self, url: str) -> str:
        """``url`` pointed at this proxy instead of the server."""
        assert self._server is not None, "start() first"
        port = self._server.sockets[0].getsockname()[1]
        parts = urlsplit(url)
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{port}"
        netloc_new = f"{netloc[0]}@{host}" if len(netloc) == 2 else host
        return urlunsplit(parts._replace(netloc=netloc_new))

    def arm(
        self,
        pattern: bytes,
        when: Literal["reply", "request"] = "reply",
        keep: int = 1,
        *,
        then_refuse: bool = False,
    ) -> None:
        """Cut the next connection whose client sends ``pattern`` (see the module)."""
        self._trap = _Trap(pattern, when, keep, then_refuse)

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        for w in tuple(self._writers):
            w.close()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _serve(self, c_read: asyncio.StreamReader, c_write: asyncio.StreamWriter) -> None:
        if self.refusing:
            c_write.transport.abort()
            return
        try:
            s_read, s_write = await asyncio.open_connection(self.host, self.port)
        except OSError:
            c_write.close()
            return
        self._writers |= {c_write, s_write}
        keep: int | None = None  # set when this connection's client sent the pattern
        refuse = False
        cut = asyncio.Event()

        async def upstream() -> None:
            nonlocal keep, refuse
            while data := await c_read.read(65536):
                trap = self._trap
                s_write.write(data)
                await s_write.drain()
                if trap is not None and trap.pattern in data:
                    self._trap = None
                    refuse = trap.then_refuse
                    if trap.when == "request":
                        cut.set()
                        return
                    keep = trap.keep

        async def downstream() -> None:
            while data := await s_read.read(65536):
                if keep is not None:
                    c_write.write(data[:keep])
                    await c_write.drain()
                    cut.set()
                    return
                c_write.write(data)
                await c_write.drain()

        tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        waiter = asyncio.ensure_future(cut.wait())
        try:
            await asyncio.wait([*tasks, waiter], return_when=asyncio.FIRST_COMPLETED)
            if cut.is_set():
                self.cuts += 1
                if refuse:
                    self.refusing = True
                    for w in tuple(self._writers):
                        w.transport.abort()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for t in (*tasks, waiter):
                t.cancel()
            for w in (c_write, s_write):
                # Abort, not close: the peers see the connection end at once (RST).
                with contextlib.suppress(Exception):
                    w.transport.abort()
                self._writers.discard(w)
