"""Opening a SQLite store's file: refuse what is not a database, create it private,
set the pragmas, migrate the schema; and SQLite's errors as the store's own.

Plain functions over :mod:`sqlite3`, run in the store's database thread.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Final

from sessions.errors import (
    StoreCorrupt,
    StoreError,
    StoreFull,
    StoreReadOnly,
    StoreVersionUnsupported,
)
from sessions.store.migrations import SQLITE, SQLITE_READABLE, SQLITE_VERSION
from sessions.store.sqlite_wait import WaitingConnection, begin_immediate, busy, set_busy

__all__ = ["AUTOCHECKPOINT_PAGES", "busy", "connect", "connect_read_only", "translate", "tx"]

_HEADER: Final = b"SQLite format 3\x00"
AUTOCHECKPOINT_PAGES: Final = 4000
"""SQLite's automatic checkpoint, a backstop: the background ones keep the log far below."""

Opened = Callable[[sqlite3.Connection], object]
"""Told each connection as soon as it exists, before any statement that may wait for a
lock: the opener may then ``interrupt()`` it from another thread (a cancelled open)."""


def _unseen(conn: sqlite3.Connection) -> None:
    """The default :data:`Opened`: nobody needs the connection early."""


def connect(
    url: str,
    path: Path,
    *,
    create: bool,
    synchronous: str,
    busy_ms: int,
    opened: Opened = _unseen,
) -> sqlite3.Connection:
    """Open (with ``create``, make) the database at ``path``, set its pragmas, migrate.

    Without ``create`` the file must exist (``mode=rw``): one deleted since the caller
    checked is an error, not made again.  ``opened``: see :data:`Opened`.
    """
    _precheck(url, path)
    try:
        return _connect_rw(
            url, path, create=create, synchronous=synchronous, busy_ms=busy_ms, opened=opened
        )
    except (sqlite3.OperationalError, PermissionError, OSError) as exc:
        if not _on_read_only(path, exc):
            raise
    return connect_read_only(url, path, busy_ms=busy_ms, opened=opened)


def _on_read_only(path: Path, exc: BaseException) -> bool:
    """Whether opening ``path`` for writing failed because it, its folder or its mount
    is read-only (then it can still be opened for reading)."""
    if isinstance(exc, OSError) and exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
        return False
    if not path.is_file():
        return False
    return not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK)


def connect_read_only(
    url: str, path: Path, *, busy_ms: int, opened: Opened = _unseen
) -> sqlite3.Connection:
    """Open the existing database at ``path`` for reading only.

    ``mode=ro`` first: it reads the write-ahead log too, but needs its ``-shm`` file
    (made by the last writer, or creatable here).  When the folder cannot hold one,
    ``immutable=1``: SQLite then reads the main file alone, so only when no log with
    unmerged commits sits beside it (else those commits would silently be missing).
    Every write on the connection fails (:class:`~sessions.errors.StoreReadOnly`).
    ``opened``: see :data:`Opened`.
    """
    base = path.absolute().as_uri()
    wal = path.with_name(path.name + "-wal")
    modes = ["mode=ro"]
    if not wal.exists() or wal.stat().st_size == 0:
        modes.append("mode=ro&immutable=1")
    last: sqlite3.Error | None = None
    for mode in modes:
        conn = sqlite3.connect(
            f"{base}?{mode}", isolation_level=None, check_same_thread=False,
            timeout=busy_ms / 1000, uri=True, factory=WaitingConnection,
        )  # fmt: skip
        opened(conn)
        try:
            set_busy(conn, busy_ms)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.Error as exc:
            conn.close()
            last = exc
            continue
        try:
            _check_read_only_version(url, path, version)
        except BaseException:
            conn.close()
            raise
        return conn
    if last is not None and busy(last):
        raise last  # another process's lock, not an unreadable log: the opener may wait
    raise StoreReadOnly(
        url,
        f"{path}: read-only, and its write-ahead log cannot be read here ({last}); "
        "open it once where it is writable to merge the log",
    )


def _check_read_only_version(url: str, path: Path, version: int) -> None:
    if version > SQLITE_VERSION:
        raise StoreVersionUnsupported(
            url,
            f"{path}: schema version {version} is newer than this code supports "
            f"({SQLITE_VERSION}); upgrade turngraph to open it",
        )
    if version < SQLITE_READABLE:
        raise StoreReadOnly(
            url, f"{path}: read-only, and its schema (version {version}) needs an upgrade"
        )


def _connect_rw(
    url: str, path: Path, *, create: bool, synchronous: str, busy_ms: int, opened: Opened
) -> sqlite3.Connection:
    """:func:`connect` for reading and writing."""
    if create:
        _create_private(path)
        target = str(path)
    else:
        target = f"{path.absolute().as_uri()}?mode=rw"
    conn = sqlite3.connect(
        target,
        isolation_level=None,
        check_same_thread=False,
        timeout=busy_ms / 1000,
        uri=not create,
        factory=WaitingConnection,
    )
    opened(conn)
    try:
        set_busy(conn, busy_ms)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: fsync the WAL at each commit so a committed turn is durable.
        conn.execute(f"PRAGMA synchronous={synchronous}")
        # Checkpoints run in the background (the store's checkpoint()), not inside a
        # commit; SQLite's own, inside the commit, is only a backstop for a log that
        # grew anyway (writers that never reach CHECKPOINT_WRITES, a reader pinning it).
        conn.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
        conn.execute("PRAGMA foreign_keys=ON")
        _migrate(url, path, conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _create_private(path: Path) -> None:
    """Create a new database file readable by its owner only (it holds conversations);
    SQLite gives its -wal and -shm files the same mode."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _precheck(url: str, path: Path) -> None:
    """Refuse a file that is not a SQLite database, or visibly truncated, up front."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size == 0 or path.is_dir():
        return
    with open(path, "rb") as f:
        header = f.read(100)
    if len(header) < 100 or not header.startswith(_HEADER):
        raise StoreCorrupt(url, f"{path}: not a SQLite database")
    page = int.from_bytes(header[16:18], "big")
    page = 65536 if page == 1 else page
    pages = int.from_bytes(header[28:32], "big")
    valid = header[24:28] == header[92:96]
    wal = path.with_name(path.name + "-wal")
    if (not wal.exists() or wal.stat().st_size == 0) and (
        size % page or (valid and size < pages * page)
    ):
        raise StoreCorrupt(url, f"{path}: database file is truncated")


def _migrate(url: str, path: Path, conn: sqlite3.Connection) -> None:
    with tx(conn, immediate=True):
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SQLITE_VERSION:
            raise StoreVersionUnsupported(
                url,
                f"{path}: schema version {version} is newer than this "
                f"code supports ({SQLITE_VERSION}); upgrade turngraph to open it",
            )
        for step in range(version + 1, SQLITE_VERSION + 1):
            for statement in SQLITE[step]:
                conn.execute(statement)
        if version != SQLITE_VERSION:
            conn.execute(f"PRAGMA user_version={SQLITE_VERSION}")


def translate(url: str, path: Path, exc: sqlite3.Error) -> StoreError:
    """SQLite's error ``exc`` as the store's: locked, corrupt, or another store error,
    each naming the file."""
    text = str(exc)
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith("SQLITE_READONLY") or "readonly database" in text:
        return StoreReadOnly(url, f"{path}: read-only: writes are refused ({text})")
    if name == "SQLITE_FULL" or "disk is full" in text:
        return StoreFull(url, f"{path}: disk full: nothing was written ({text})")
    if busy(exc):
        return StoreError(url, f"{path}: database is locked ({text})")
    if isinstance(exc, sqlite3.DatabaseError) and (
        "not a database" in text or "malformed" in text or "corrupt" in text
    ):
        return StoreCorrupt(url, f"{path}: {text}")
    return StoreError(url, f"{path}: {type(exc).__name__}: {text}")


@contextmanager
def tx(conn: sqlite3.Connection, *, immediate: bool) -> Iterator[None]:
    """One transaction: ``BEGIN IMMEDIATE`` for writes (take the write lock up front,
    :func:`~sessions.store.sqlite_wait.begin_immediate`)."""
    if immediate:
        begin_immediate(conn)
    else:
        conn.execute("BEGIN")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        # Never leave the shared connection inside a failed transaction.
        if conn.in_transaction:
            conn.rollback()
        raise
