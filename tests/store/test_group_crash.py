"""Group commit under SIGKILL: 50 sessions in two worker processes, killed at random
moments; every turn a worker acknowledged is stored exactly once and every chain verifies.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import anyio
import pytest

from sessions.store import SQLiteStore, open_store

ROOT = Path(__file__).parents[2]
SECRET = "group-crash-secret"
WORKERS = (("a", 25), ("b", 25))
ROUNDS = 4

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")


class Worker:
    """A ``group_worker`` process and the turns it acknowledged on its stdout pipe."""

    def __init__(self, tmp_path: Path, url: str, prefix: str, count: int) -> None:
        env = dict(
            os.environ,
            PYTHONPATH=str(ROOT),
            TURNGRAPH_SECRET=SECRET,
            TURNGRAPH_HOME=str(tmp_path / "home"),
        )
        self.err = open(tmp_path / f"worker-{prefix}.err", "w")  # noqa: SIM115  # closed in kill()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.store.group_worker", url, prefix, str(count)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=self.err,
            text=True,
        )
        self.acked: list[tuple[str, int]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.endswith("\n"):  # a torn last line was never fully acknowledged
                sid, turn = line.split()
                self.acked.append((sid, int(turn)))

    def kill(self) -> None:
        """SIGKILL the process; collect every acknowledgement it wrote before dying."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.reader.join(10)
        self.err.close()


def run_round(tmp_path: Path, url: str, rng: random.Random) -> list[tuple[str, int]]:
    """Start the workers, kill them all at a random moment; what they acknowledged."""
    workers = [Worker(tmp_path, url, prefix, n) for prefix, n in WORKERS]
    target = rng.randrange(100, 500)
    deadline = time.monotonic() + 60
    while sum(len(w.acked) for w in workers) < target:
        dead = [w for w in workers if w.proc.poll() is not None]
        assert not dead, (tmp_path / "worker-a.err").read_text() + (
            tmp_path / "worker-b.err"
        ).read_text()
        assert time.monotonic() < deadline, "the workers made no progress"
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, 0.05))
    for w in workers:
        w.kill()
    return [ack for w in workers for ack in w.acked]


async def check(db: Path, acked: dict[str, int]) -> None:
    """Each session holds turns 1..n once (n at least its last acknowledged turn),
    dense messages, and a chain that verifies."""
    async with open_store(f"sqlite:///{db}", secret=SECRET) as store:
        assert isinstance(store, SQLiteStore)
        for sid, last in acked.items():
            meta = (await store.load(sid, recent=0)).meta
            n, m = meta.turn_count, meta.message_count
            assert n >= last, f"{sid}: turn {last} was acknowledged, only {n} stored"
            turns = await store.turns(sid, 0, n + 10)
            assert [t.turn for t in turns] == list(range(1, n + 1))
            msgs = await store.messages(sid, 0, m + 10)
            assert [x.seq for x in msgs] == list(range(m))
            assert await store.verify(sid) == n + m


def test_no_acknowledged_turn_is_lost_when_workers_are_killed(tmp_path: Path) -> None:
    """Several rounds: run, SIGKILL at a random moment, check, resume on the same file."""
    db = tmp_path / "group.db"
    url = f"sqlite:///{db}"
    rng = random.Random(os.environ.get("GROUP_CRASH_SEED", "17"))
    acked: dict[str, int] = {}
    total = 0
    for _ in range(ROUNDS):
        got = run_round(tmp_path, url, rng)
        total += len(got)
        for sid, turn in got:
            assert turn > acked.get(sid, 0), f"{sid}: turn {turn} acknowledged twice"
            acked[sid] = turn
        anyio.run(check, db, acked)
    assert {sid[0] for sid in acked} == {prefix for prefix, _ in WORKERS}
    assert total >= 100 * ROUNDS
