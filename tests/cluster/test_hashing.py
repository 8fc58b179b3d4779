"""Rendezvous hashing: stable, balanced, and a membership change moves only one share."""

from __future__ import annotations

from collections import Counter

import pytest

from sessions.cluster import owner_of, weight

SIDS = [f"session-{i}" for i in range(10_000)]
HOSTS = ["h-a", "h-b", "h-c", "h-d"]


def test_the_same_inputs_give_the_same_host_in_any_order() -> None:
    """The owner depends on the set of hosts, not on their order or on the process."""
    assert [owner_of(s, HOSTS) for s in SIDS[:200]] == [
        owner_of(s, reversed(HOSTS)) for s in SIDS[:200]
    ]
    assert weight("alice", "h-a") == weight("alice", "h-a") != weight("alice", "h-b")


def test_sessions_spread_evenly_over_the_hosts() -> None:
    """Each of four hosts serves close to a quarter of 10,000 sessions."""
    counts = Counter(owner_of(s, HOSTS) for s in SIDS)
    assert set(counts) == set(HOSTS)
    assert all(2_200 < n < 2_800 for n in counts.values()), counts


def test_adding_a_host_moves_only_the_sessions_it_takes() -> None:
    """Every session that changes host moves to the new one; about 1/5 of them move."""
    before = {s: owner_of(s, HOSTS) for s in SIDS}
    after = {s: owner_of(s, [*HOSTS, "h-e"]) for s in SIDS}
    moved = [s for s in SIDS if before[s] != after[s]]
    assert {after[s] for s in moved} == {"h-e"}
    assert 1_700 < len(moved) < 2_300


def test_losing_a_host_moves_only_its_sessions() -> None:
    """Only the lost host's sessions change host, spread over the survivors."""
    before = {s: owner_of(s, HOSTS) for s in SIDS}
    after = {s: owner_of(s, ["h-a", "h-c", "h-d"]) for s in SIDS}
    moved = {s for s in SIDS if before[s] != after[s]}
    assert moved == {s for s in SIDS if before[s] == "h-b"}
    assert {after[s] for s in moved} == {"h-a", "h-c", "h-d"}


def test_no_hosts_is_an_error() -> None:
    """There is nobody to choose."""
    with pytest.raises(ValueError, match="no hosts"):
        owner_of("alice", [])
