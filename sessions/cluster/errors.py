"""Errors of the Ray cluster client, on the tree rooted at :class:`engine.TurngraphError`.

::

    TurngraphError
    ├── RayNotInstalled        the 'ray' extra is missing
    ├── ClusterUnavailable     no live host could be found or started
    ├── HostError              a host failed in a way that is not a turngraph error
    ├── SessionError
    │   └── HostLost           a session's host died and no survivor took it in time
    └── StoreError
        └── ClusterStoreRefused  a store URL other processes on other nodes cannot share
"""

from __future__ import annotations

from engine.errors import TurngraphError
from sessions.errors import SessionError, StoreError

__all__ = [
    "INSTALL_HINT",
    "ClusterStoreRefused",
    "ClusterUnavailable",
    "HostError",
    "HostLost",
    "RayNotInstalled",
]

INSTALL_HINT = "pip install 'turngraph[ray]'"


class RayNotInstalled(TurngraphError):
    """Ray is needed (``RaySessions``) but not installed."""

    def __init__(self) -> None:
        super().__init__(f"sessions on a Ray cluster need Ray: {INSTALL_HINT}")


class ClusterUnavailable(TurngraphError):
    """The cluster has no live session host (none could be started, or all died)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"Ray cluster: {reason}")
        self.reason = reason


class HostError(TurngraphError):
    """A host raised something that is not a :class:`TurngraphError` (a bug or a crash);
    ``kind`` is the original exception's type name."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"session host: {kind}: {message}")
        self.kind = kind


class HostLost(SessionError):
    """The session's host died and no surviving host could serve it before the deadline.

    Whether the turn that was running there was committed is unknown to the caller;
    the store holds it at most once.
    """


class ClusterStoreRefused(StoreError):
    """Hosts on many nodes must share one store: only PostgreSQL qualifies.

    ``memory:`` lives inside one process and a SQLite file on one machine's disk; hosts
    elsewhere would each see their own copy, with no lease between them.
    """
