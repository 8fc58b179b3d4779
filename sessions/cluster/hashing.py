"""Rendezvous (highest-random-weight) hashing: which host serves a session.

Every host gets a pseudo-random weight for each session id; the host with the highest
weight serves the session.  Adding a host moves to it exactly the sessions for which it
now weighs most (about ``1/N`` of them) and moves nothing else; losing a host moves only
the sessions it served.  No ring, no virtual nodes, no state: any process computing it
over the same host ids gets the same answer.
"""

from __future__ import annotations

from collections.abc import Iterable
from hashlib import blake2b

__all__ = ["owner_of", "weight"]


def weight(session_id: str, host_id: str) -> int:
    """The 64-bit weight of ``host_id`` for ``session_id`` (stable across processes)."""
    digest = blake2b(host_id.encode(), digest_size=8, key=session_id.encode()[:64])
    return int.from_bytes(digest.digest(), "big")


def owner_of(session_id: str, host_ids: Iterable[str]) -> str:
    """The host that serves ``session_id``: highest weight, ties broken by host id.

    Raises ``ValueError`` when ``host_ids`` is empty.
    """
    best = max(host_ids, key=lambda h: (weight(session_id, h), h), default=None)
    if best is None:
        raise ValueError("no hosts to choose from")
    return best
