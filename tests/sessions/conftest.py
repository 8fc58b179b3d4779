"""Fixtures for the session tests (helpers live in ``session_kit``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from sessions.store.base import Store
from sessions.store.memory import MemoryStore

from .session_kit import SECRET


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    """A fresh, open in-memory store (with an explicit secret: no key file is written)."""
    async with MemoryStore(secret=SECRET) as s:
        yield s
