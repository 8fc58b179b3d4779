"""Fixtures for the HTTP API tests: a served app over a real SQLite store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.server import create_app

from .serve_kit import Running


@pytest.fixture(autouse=True)
def _no_ambient_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TURNGRAPH_API_TOKEN", raising=False)
    monkeypatch.delenv("TURNGRAPH_LLM", raising=False)


@pytest.fixture
def db(tmp_path: Path) -> str:
    """A SQLite store URL in the test's folder."""
    return f"sqlite:///{tmp_path / 'serve.db'}"


@pytest.fixture
def served(db: str) -> Iterator[Running]:
    """The app (echo model, SQLite store) served on a free loopback port."""
    with Running(create_app(db, llm="echo", max_body=4096)) as running:
        yield running
