"""Waiting for another process's SQLite write lock so that the wait can be given up.

SQLite's busy wait (``busy_timeout``) does not end on ``Connection.interrupt()``: a
call waiting for a lock another process holds would go on waiting after its caller was
cancelled (Ctrl-C), and closing the store would wait with it.  So a write transaction
begins in slices of :data:`SLICE_MS`: between two, the wait asks ``should_stop`` and
gives up (the usual "database is locked" error) once it says so.  Only ``BEGIN
IMMEDIATE`` waits this way; it takes no lock when it fails, so trying again is safe.
Every other statement keeps the whole ``busy_timeout``.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import Any, Final

__all__ = ["SLICE_MS", "WaitingConnection", "begin_immediate", "busy", "never", "set_busy"]

SLICE_MS: Final = 100
"""The longest a cancelled wait for a lock goes on (SQLite checks nothing meanwhile)."""


def never() -> bool:
    """The default ``should_stop``: a wait nobody may cut short."""
    return False


def busy(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` is SQLite's "database is locked" / "busy" (another writer)."""
    text = str(exc)
    return "locked" in text or "busy" in text


class WaitingConnection(sqlite3.Connection):
    """A :class:`sqlite3.Connection` (its ``factory``) that knows its busy timeout,
    set through :func:`set_busy`, and whether the wait for a lock should stop."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.busy_ms = int(float(kwargs.get("timeout", 5.0)) * 1000)
        """The busy timeout set on the connection (SQLite's default: 5 s)."""
        self.should_stop: Callable[[], bool] = never
        """Asked between slices of a wait for the write lock: ``True`` gives it up.
        Called in the connection's thread; it must be cheap and thread-safe."""


def set_busy(conn: sqlite3.Connection, ms: int) -> None:
    """Set the connection's busy timeout to ``ms`` milliseconds."""
    conn.execute(f"PRAGMA busy_timeout={ms}")
    if isinstance(conn, WaitingConnection):
        conn.busy_ms = ms


def begin_immediate(conn: sqlite3.Connection) -> None:
    """``BEGIN IMMEDIATE``: take the write lock, waiting up to the busy timeout for
    another process to free it, and in slices (see the module) on a
    :class:`WaitingConnection` whose timeout is longer than one."""
    if not isinstance(conn, WaitingConnection) or conn.busy_ms <= SLICE_MS:
        conn.execute("BEGIN IMMEDIATE")
        return
    deadline = time.monotonic() + conn.busy_ms / 1000
    wanted = conn.busy_ms
    conn.execute(f"PRAGMA busy_timeout={SLICE_MS}")
    try:
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not busy(exc) or conn.should_stop() or time.monotonic() >= deadline:
                    raise
    finally:
        conn.execute(f"PRAGMA busy_timeout={wanted}")
