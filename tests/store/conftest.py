"""Store fixtures: one suite over ``memory:``, SQLite and a real PostgreSQL.

PostgreSQL comes from ``$TURNGRAPH_TEST_PG`` (default
``postgresql://postgres@127.0.0.1:5432/test``); every test gets a fresh schema, dropped
afterwards.  When the server is down the PostgreSQL cases are skipped with a reason,
except under CI (``CI=true``), which promises a server: there they fail.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest

from sessions.store import ManualClock, OpenStore, open_store

from . import SECRET

PG_URL = os.environ.get("TURNGRAPH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Key files and default stores land in tmp_path, never in the real home."""
    monkeypatch.setenv("TURNGRAPH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TURNGRAPH_SECRET", raising=False)
    monkeypatch.delenv("TURNGRAPH_STORE", raising=False)


def _pg_schema_url(schema: str) -> str:
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options={quote(f'-csearch_path={schema}')}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A URL whose search_path is a fresh schema (dropped after the test)."""
    try:
        admin = psycopg.connect(PG_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        reason = f"PostgreSQL not reachable at {PG_URL}: {exc}".splitlines()[0]
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (CI=true promises a server: a failure, not a skip)")
        pytest.skip(reason)
    schema = f"tg_test_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            yield _pg_schema_url(schema)
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


def _url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "memory":
        return "memory:"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of each backend in turn."""
    return _url(request.param, tmp_path, request)


@pytest.fixture
def clock() -> ManualClock:
    """The lease clock of the ``store`` fixture: a test moves it instead of sleeping."""
    return ManualClock()


@pytest.fixture
async def store(store_url: str, clock: ManualClock) -> AsyncIterator[OpenStore]:
    """An open store of each backend, its leases measured by ``clock``."""
    async with open_store(store_url, secret=SECRET, clock=clock) as s:
        yield s


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def durable_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of each signed (durable) backend."""
    return _url(request.param, tmp_path, request)


@pytest.fixture
async def durable(durable_url: str) -> AsyncIterator[OpenStore]:
    """An open store of each durable backend."""
    async with open_store(durable_url, secret=SECRET) as s:
        yield s


class Raw:
    """Direct SQL on a durable store's database, behind the store's back (tampering)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement (``?`` placeholders) and commit; returns any rows."""
        if self.url.startswith("sqlite:"):
            conn = sqlite3.connect(self.url[len("sqlite:///") :])
            try:
                with conn:
                    return conn.execute(sql, params).fetchall()
            finally:
                conn.close()
        with psycopg.connect(self.url, autocommit=True) as pg:
            cur = pg.execute(sql.replace("?", "%s"), params)
            return cur.fetchall() if cur.description else []


@pytest.fixture
def raw(durable_url: str) -> Raw:
    """Raw SQL access to the ``durable`` store's database."""
    return Raw(durable_url)


@pytest.fixture
async def shared(store_url: str) -> AsyncIterator[OpenStore]:
    """An open store of each backend, for tests whose managers open their own
    connection by URL (``memory:`` lives in one process: its managers share this one)."""
    async with open_store(store_url, secret=SECRET) as s:
        yield s
