"""CPU seconds spent by groups of processes over a measured run, from Linux's ``/proc``.

The Ray throughput benchmark uses it to show where a turn's CPU goes (the driver, the
host actors, PostgreSQL's backends, Ray's own daemons, everything else on the machine),
and so what throughput the machine's cores allow at all for a number of hosts.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CpuSnapshot", "Share", "ceiling", "snapshot"]

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_RAY_DAEMONS = ("raylet", "gcs_server")


@dataclass(frozen=True, slots=True)
class CpuSnapshot:
    """CPU seconds (user + system) so far: per named group, and the machine's busy total."""

    groups: Mapping[str, float]
    busy: float

    def since(self, earlier: CpuSnapshot) -> dict[str, float]:
        """Seconds per group between ``earlier`` and this one, with ``others``: what the
        rest of the machine used (other users' work included)."""
        spent = {k: v - earlier.groups.get(k, 0.0) for k, v in self.groups.items()}
        spent["others"] = max(0.0, (self.busy - earlier.busy) - sum(spent.values()))
        return spent


def _cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0  # gone meanwhile
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _machine_busy() -> float:
    """Seconds every core spent not idle, since boot."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return (sum(values[:8]) - idle) / _TICK


def snapshot(driver: int, hosts: Iterable[int]) -> CpuSnapshot:
    """CPU seconds of the driver, the host processes, PostgreSQL's processes (every
    ``postgres``) and Ray's daemons and idle workers, plus the machine's busy total."""
    host_pids = set(hosts)
    groups = {"driver": _cpu(driver), "hosts": sum(_cpu(p) for p in host_pids)}
    groups["postgres"] = groups["ray"] = 0.0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in host_pids | {driver}:
            continue
        pid = int(entry.name)
        comm = _comm(pid)
        if comm == "postgres":
            groups["postgres"] += _cpu(pid)
        elif comm in _RAY_DAEMONS or comm.startswith("ray::"):
            groups["ray"] += _cpu(pid)
    return CpuSnapshot(groups, _machine_busy())


@dataclass(frozen=True, slots=True)
class Share:
    """CPU milliseconds per turn: the hosts' part and all of this run's processes."""

    hosts_ms: float
    total_ms: float


def ceiling(share: Share, hosts: int, cores: int) -> float:
    """The most turns a second ``hosts`` hosts can run on ``cores`` cores, if every turn
    costs ``share``: each host is one process (one core at most), and all the run's
    processes together cannot use more than the cores."""
    return min(hosts * 1000.0 / share.hosts_ms, cores * 1000.0 / share.total_ms)
