"""Durable session storage: ``open_store(url)`` gives a :class:`Store` for a URL.

::

    from sessions.store import open_store

    async with open_store("sqlite:///turngraph.db") as store:
        meta = await store.create(SessionMeta(id="alice"))

URLs: ``memory:``, ``sqlite:///relative.db``, ``sqlite:////absolute/path.db``
(``?synchronous=NORMAL`` to skip the per-commit fsync), ``postgresql://user@host/db``.
With no URL: ``$TURNGRAPH_STORE``, else ``sqlite:///<data dir>/turngraph.db`` (data
dir: ``$TURNGRAPH_HOME`` or ``~/.local/share/turngraph``).  The HMAC key: ``secret=``,
else ``$TURNGRAPH_SECRET``, else ``<data dir>/secret.key`` (created with mode 0600).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import TracebackType
from typing import Final, Protocol
from urllib.parse import parse_qsl, urlsplit

from sessions.errors import StoreError, StoreExtraMissing
from sessions.store.base import (
    Checkpoint,
    LoadedSession,
    Message,
    SessionMeta,
    Store,
    TurnCommit,
    TurnRecord,
)
from sessions.store.codec import validate_session_id
from sessions.store.export import ImportLimits, read_export, write_export
from sessions.store.lease import Clock, ManualClock
from sessions.store.memory import MemoryStore
from sessions.store.redact import redact_url
from sessions.store.signing import data_dir, load_key
from sessions.store.sqlite import SQLiteStore

__all__ = [
    "Checkpoint",
    "Clock",
    "ImportLimits",
    "LoadedSession",
    "ManualClock",
    "MemoryStore",
    "Message",
    "OpenStore",
    "SQLiteStore",
    "SessionMeta",
    "Store",
    "TurnCommit",
    "TurnRecord",
    "data_dir",
    "default_store_url",
    "load_key",
    "open_store",
    "read_export",
    "redact_url",
    "validate_session_id",
    "write_export",
]


class OpenStore(Store, Protocol):
    """A :class:`Store` that is also an async context manager (``open`` / ``close``)."""

    async def __aenter__(self) -> OpenStore:
        """Open the store and return it."""

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close the store."""


def default_store_url() -> str:
    """``$TURNGRAPH_STORE``, else the SQLite file ``<data dir>/turngraph.db``."""
    return os.environ.get("TURNGRAPH_STORE") or f"sqlite:///{data_dir() / 'turngraph.db'}"


def sqlite_path(url: str) -> Path:
    """The file of a ``sqlite:///`` URL (``sqlite:////abs`` is absolute)."""
    rest = url.partition("?")[0]
    rest = rest[len("sqlite:///") :] if rest.startswith("sqlite:///") else ""
    if not rest or rest.endswith("/"):
        raise StoreError(
            redact_url(url), "a SQLite URL needs a file: sqlite:///rel.db or sqlite:////abs.db"
        )
    return Path(rest)


def _sqlite(
    url: str, secret: bytes | str | None, limits: ImportLimits | None, create: bool, clock: Clock
) -> SQLiteStore:
    """A SQLite store.  URL options: ``synchronous=NORMAL`` trades power-loss
    durability for speed; ``inline_writes=off`` keeps every write off the event loop's
    thread; ``group_commit=off`` commits each turn alone (see :class:`SQLiteStore`)."""
    params = dict(parse_qsl(url.partition("?")[2]))
    sync = params.pop("synchronous", "FULL").upper()
    inline = _SWITCH.get(params.pop("inline_writes", "on").lower())
    group = _SWITCH.get(params.pop("group_commit", "on").lower())
    witness = _SWITCH.get(params.pop("witness", _witness_default(url, "on")).lower())
    if params or sync not in ("FULL", "NORMAL", "EXTRA") or None in (inline, group, witness):
        raise StoreError(
            redact_url(url),
            "SQLite URL options: synchronous=FULL|NORMAL|EXTRA, inline_writes=on|off, "
            "group_commit=on|off, witness=on|off only",
        )
    path = sqlite_path(url)
    return SQLiteStore(
        url,
        path,
        secret=secret,
        limits=limits,
        synchronous=sync,
        create=create,
        inline_writes=bool(inline),
        group_commit=bool(group),
        clock=clock,
        witness=bool(witness),
    )


def _witness_default(url: str, default: str) -> str:
    """``$TURNGRAPH_WITNESS`` (on/off), else ``default``; anything else is refused."""
    value = os.environ.get("TURNGRAPH_WITNESS", "").strip().lower() or default
    if value not in _SWITCH:
        raise StoreError(redact_url(url), f"TURNGRAPH_WITNESS must be on or off, not {value!r}")
    return value


_SWITCH: Final = {"on": True, "true": True, "1": True, "off": False, "false": False, "0": False}


def open_store(
    url: str | None = None,
    *,
    secret: bytes | str | None = None,
    limits: ImportLimits | None = None,
    create: bool = True,
    clock: Clock = time.time,
) -> OpenStore:
    """The store for ``url``, not yet opened: ``await store.open()`` or ``async with``.

    ``secret`` overrides the configured HMAC key (tests); ``limits`` bound imports.
    ``create=False`` is for read-only tools: opening a store that does not exist yet
    (a missing SQLite file, a PostgreSQL database without turngraph's tables) raises
    :class:`~engine.errors.StoreError` ``no such store`` instead of creating it.
    An unknown scheme raises :class:`~engine.errors.StoreError`.  ``clock`` is the
    time leases are measured by (tests pass a
    :class:`~sessions.store.lease.ManualClock` to expire one without sleeping).
    """
    url = url or default_store_url()
    if url == "memory:" or url.startswith("memory:"):
        return MemoryStore(url, secret=secret, limits=limits, clock=clock)
    if url.startswith("sqlite:"):
        return _sqlite(url, secret, limits, create, clock)
    scheme = urlsplit(url).scheme
    if scheme in ("postgresql", "postgres"):
        try:
            from sessions.store.postgres import PostgresStore  # psycopg is an optional extra
        except ImportError as exc:
            # psycopg itself missing, or installed without its libpq binding ("no pq wrapper")
            if not ((exc.name or "").startswith("psycopg") or "pq wrapper" in str(exc)):
                raise
            raise StoreExtraMissing(
                redact_url(url),
                f"PostgreSQL stores need the postgres extra ({exc.name or 'libpq'} is not "
                "installed): pip install 'turngraph[postgres]'",
            ) from None
        witness = _SWITCH[_witness_default(url, "off")]
        return PostgresStore(
            url, secret=secret, limits=limits, create=create, clock=clock, witness=witness
        )
    shown = redact_url(url)
    raise StoreError(
        shown,
        f"unknown store URL scheme {scheme or shown!r}; "
        "use memory:, sqlite:///path.db or postgresql://...",
    )
