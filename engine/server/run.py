"""Serving the app with uvicorn, and draining it on SIGTERM or Ctrl-C.

Shutdown, in order: the signal marks the server draining (a new turn answers 503
``ShuttingDown``, ``/readyz`` answers 503), uvicorn stops accepting connections and
waits up to ``grace`` seconds for the requests in flight (running turns, streams) to
finish, then cancels what is left (a cancelled turn stores nothing); the lifespan's end
closes the session manager, releasing every lease; the process exits 0.
"""

from __future__ import annotations

import contextlib
import math
import signal
import socket
import threading
from collections.abc import Callable, Generator
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from engine.server.state import ServerState

__all__ = ["Server", "bind"]


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port`` 0: a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets
    # that say TCP, and with Nagle on, every response waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class Server(uvicorn.Server):
    """uvicorn's server, draining the app's turns on SIGTERM/SIGINT and exiting 0.

    uvicorn re-raises a captured signal once it has shut down (so the process dies by
    it); a drained server has done what the signal asked, so here it is not re-raised.
    """

    def __init__(self, app: Starlette, *, grace: float, log_level: str = "warning") -> None:
        config = uvicorn.Config(
            app,
            lifespan="on",
            timeout_graceful_shutdown=math.ceil(grace),  # uvicorn takes whole seconds
            log_level=log_level,
            access_log=False,
            ws="none",
            # The app reads no client address, so uvicorn's X-Forwarded-* rewriting
            # (on by default, for loopback peers) would be a layer every request pays for.
            proxy_headers=False,
        )
        super().__init__(config)
        self.app_state: ServerState = app.state.turngraph

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's start-up; when the app's manager failed to start, stop at once
        (:meth:`serve` then returns and the caller reports ``app_state.startup_error``)."""
        await super().startup(sockets)
        if self.app_state.startup_error is not None:
            self.should_exit = True

    def stop(self) -> None:
        """Begin a graceful shutdown (what SIGTERM does); callable from any thread."""
        self.app_state.draining = True
        self.should_exit = True

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C: stop waiting
        self.stop()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """SIGTERM and SIGINT begin a graceful shutdown (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handler: Callable[[int, FrameType | None], None] = self._on_signal
        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
