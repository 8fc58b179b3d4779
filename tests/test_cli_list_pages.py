"""``sessions list``'s hint for the next page, followed as a user would: the command it
prints on stderr, split as a shell splits it, lists the next page of the same listing
(same agent, type, page size and output), whatever the ids look like."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import anyio
import pytest

from engine import run as cli
from sessions.store import open_store
from sessions.store.base import SessionMeta

IDS = ["-a", "-b", "--c", "x", "y", "z"]
"""Ids starting with ``-`` (valid ids): a bare ``--after -b`` is an option to argparse."""


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A SQLite store URL holding :data:`IDS`, agent ``rare`` for ``-b`` and ``y``."""
    monkeypatch.setenv("TURNGRAPH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TURNGRAPH_SECRET", "cli-test-secret")
    monkeypatch.delenv("TURNGRAPH_STORE", raising=False)
    url = f"sqlite:///{tmp_path / 'sessions.db'}"

    async def seed() -> None:
        async with open_store(url) as s:
            for sid in IDS:
                await s.create(SessionMeta(sid, agent_id="rare" if sid in ("-b", "y") else "bot"))

    anyio.run(seed)
    return url


def _walk(store: str, first: list[str], capsys: pytest.CaptureFixture[str]) -> list[list[str]]:
    """The pages of ``first`` and of each hinted command after it (``--json`` output)."""
    pages: list[list[str]] = []
    argv = first
    while True:
        assert cli.main([*argv, "--store", store]) == 0
        out, errs = capsys.readouterr()
        pages.append([s["id"] for s in json.loads(out)])
        hint = re.fullmatch(r"more sessions follow: `[^`]* sessions list (.*)`\n", errs)
        if hint is None:
            assert errs == ""
            return pages
        argv = ["sessions", "list", *shlex.split(hint.group(1))]
        assert len(pages) < len(IDS) + 1, pages


def test_the_hinted_command_lists_the_next_page_of_the_same_listing(
    store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pages = _walk(store, ["sessions", "list", "--json", "--limit", "1", "--agent", "rare"], capsys)
    assert pages == [["-b"], ["y"]]
    every = _walk(store, ["sessions", "list", "--json", "--limit", "2"], capsys)
    assert every == [["--c", "-a"], ["-b", "x"], ["y", "z"]]


@pytest.mark.parametrize("limit", ["0", "-5", "many"])
def test_a_page_of_no_sessions_is_refused_in_one_line(
    store: str, capsys: pytest.CaptureFixture[str], limit: str
) -> None:
    """``--limit 0`` was listed as a page of one, with a hint to go on at ``--limit=0``."""
    assert cli.main(["sessions", "list", "--limit", limit, "--store", store]) == 2
    out, errs = capsys.readouterr()
    assert out == "" and len(errs.splitlines()) == 1, errs
    assert "--limit" in errs and "from 1" in errs and "Traceback" not in errs
