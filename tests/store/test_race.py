"""Two OS processes, one session: one owner at a time, and a stale owner writes nothing."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sessions.store import open_store
from sessions.store.base import SessionMeta

from .test_crash import SECRET, spawn

TTL = 1.0


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def race_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQLite file or a fresh PostgreSQL schema shared by the processes."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'race.db'}"
    return str(request.getfixturevalue("pg_url"))


class Worker:
    """A race-mode crash_worker process driven line by line."""

    def __init__(self, tmp_path: Path, url: str, owner: str) -> None:
        self.proc = spawn(
            tmp_path,
            "race",
            url,
            "s1",
            owner,
            str(TTL),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=1,
        )
        assert self.read() == "ready"

    def send(self, command: str) -> None:
        """Send one command line."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def read(self) -> str:
        """The worker's next reply line."""
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        """End input and wait for the process to exit."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def workers(tmp_path: Path, race_url: str) -> Iterator[tuple[Worker, Worker]]:
    """Two worker processes on ``race_url`` (owners A and B)."""
    made: list[Worker] = []
    try:
        made.append(Worker(tmp_path, race_url, "A"))
        made.append(Worker(tmp_path, race_url, "B"))
        yield made[0], made[1]
    finally:
        for w in made:
            w.close()


async def test_one_owner_wins_and_a_stale_owner_is_fenced(
    race_url: str, workers: tuple[Worker, Worker]
) -> None:
    """Both acquire at once: one wins, one is busy; after expiry and takeover the first
    owner's write is Fenced and leaves the session untouched."""
    async with open_store(race_url, secret=SECRET) as store:
        await store.create(SessionMeta(id="s1"))
        for w in workers:
            w.send("acquire")
        replies = [w.read() for w in workers]
        assert sorted(r.split()[0] for r in replies) == ["busy", "won"]
        winner, loser = workers if replies[0].startswith("won") else workers[::-1]
        first_token = int(max(replies).split()[1])

        loser.send(f"later {TTL + 0.2}")  # on its clock the winner's lease has expired
        loser.send("acquire")
        second = loser.read()
        assert second.startswith("won") and int(second.split()[1]) > first_token

        winner.send("write")
        assert winner.read() == "fenced"
        meta = (await store.load("s1")).meta
        assert (meta.turn_count, meta.message_count) == (0, 0)

        loser.send("write")
        assert loser.read() == "ok"
        assert (await store.load("s1")).meta.turn_count == 1
        assert await store.verify("s1") == 3
