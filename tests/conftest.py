"""Suite-wide isolation: no test reads or writes the user's real turngraph data.

Every test gets its own ``TURNGRAPH_HOME`` (so key files and default SQLite stores land
in its tmp dir) and runs without an ambient ``TURNGRAPH_STORE`` or
``TURNGRAPH_SECRET``; a test that wants one sets it itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated_turngraph_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    home = tmp_path_factory.mktemp("turngraph-home")
    monkeypatch.setenv("TURNGRAPH_HOME", str(home))
    monkeypatch.delenv("TURNGRAPH_STORE", raising=False)
    monkeypatch.delenv("TURNGRAPH_SECRET", raising=False)
    return home
