"""Fixtures for the session tests (helpers live in ``session_kit``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import structlog

from sessions.store.base import Store
from sessions.store.memory import MemoryStore

from .session_kit import SECRET


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    """A fresh, open in-memory store (with an explicit secret: no key file is written)."""
    async with MemoryStore(secret=SECRET) as s:
        yield s


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    """Leave structlog as found: ``capture_logs`` marks it configured for good."""
    was_configured = structlog.is_configured()
    config = structlog.get_config()
    yield
    if was_configured:
        structlog.configure(**config)
    else:
        structlog.reset_defaults()
