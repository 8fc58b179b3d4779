"""Suite-wide isolation: no test reads or writes the user's real turngraph data.

Every test gets its own ``TURNGRAPH_HOME`` (so key files and default SQLite stores land
in its tmp dir) and runs without an ambient ``TURNGRAPH_STORE`` or
``TURNGRAPH_SECRET``; a test that wants one sets it itself.  A test that runs the command
line in-process configures structlog as the CLI does; the configuration is put back after
every test, so no later test inherits its level filter or its output stream.

Hypothesis runs without its per-example deadline: that is a wall-clock limit, and these
machines are shared and noisy (speed is measured in ``bench/``, never asserted here).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from hypothesis import settings

settings.register_profile("turngraph", deadline=None)
settings.load_profile("turngraph")


@pytest.fixture(autouse=True)
def _isolated_turngraph_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    home = tmp_path_factory.mktemp("turngraph-home")
    monkeypatch.setenv("TURNGRAPH_HOME", str(home))
    monkeypatch.delenv("TURNGRAPH_STORE", raising=False)
    monkeypatch.delenv("TURNGRAPH_SECRET", raising=False)
    return home


@pytest.fixture(autouse=True)
def _structlog_restored() -> Iterator[None]:
    # ``capture_logs`` and the CLI both leave structlog marked configured for good.
    was_configured, config = structlog.is_configured(), structlog.get_config()
    yield
    if was_configured:
        structlog.configure(**config)
    else:
        structlog.reset_defaults()
