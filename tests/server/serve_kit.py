"""A real uvicorn server on 127.0.0.1 in a thread, for the API tests (real HTTP, real
SQLite store in the test's folder)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any

import httpx
from starlette.applications import Starlette

from engine.server.run import Server, bind
from engine.server.state import ServerState

GUARD = 60.0
"""Seconds before a stuck wait gives up (a hang guard, not a speed limit)."""


class Running:
    """``app`` served by uvicorn from a thread on a free loopback port.

    ``url`` is its base URL, ``client`` an httpx client bound to it; ``call(coro)``
    runs a coroutine on the server's own event loop (e.g. to break its store).
    """

    def __init__(self, app: Starlette, grace: float = 5.0) -> None:
        self.app = app
        self.state: ServerState = app.state.turngraph
        self.server = Server(app, grace=grace)
        self._sock = bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.client = httpx.Client(base_url=self.url, timeout=GUARD)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            await self.server.serve([self._sock])

        asyncio.run(main())

    def start(self) -> Running:
        self._thread.start()
        started = threading.Event()
        for _ in range(int(GUARD / 0.01)):
            if self.server.started or not self._thread.is_alive():
                break
            started.wait(0.01)
        assert self.server.started, "the server did not start"
        return self

    def call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` on the server's loop and return its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(GUARD)

    def stop(self) -> None:
        self.client.close()
        self.server.stop()
        self._thread.join(GUARD)
        assert not self._thread.is_alive(), "the server did not stop"

    def __enter__(self) -> Running:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
