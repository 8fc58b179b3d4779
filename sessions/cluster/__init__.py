"""Sessions hosted across a Ray cluster (the optional ``turngraph[ray]`` extra).

::

    from sessions.cluster import RaySessions

    async with RaySessions("postgresql://app@db/turngraph", address="auto") as cluster:
        result = await cluster.send("alice", "hello")

Host actors, one per node by default, each run a :class:`~sessions.SessionManager`; a
session id maps to a host by rendezvous hashing over the live hosts; PostgreSQL's leases
and fencing decide who may write.  A top-layer client of the sessions package: nothing
else in :mod:`sessions` imports it, and Ray is imported only when a client is made.
:class:`ClusterManager` gives the HTTP server the same sessions (``python -m engine.run
serve --ray``).  See ``docs/cluster.md``.
"""

from sessions.cluster.client import RaySessions, check_store, import_ray
from sessions.cluster.errors import (
    INSTALL_HINT,
    ClusterStoreRefused,
    ClusterUnavailable,
    HostError,
    HostLost,
    RayNotInstalled,
)
from sessions.cluster.front import ClusterManager, ClusterSession
from sessions.cluster.hashing import owner_of, weight

__all__ = [
    "INSTALL_HINT",
    "ClusterManager",
    "ClusterSession",
    "ClusterStoreRefused",
    "ClusterUnavailable",
    "HostError",
    "HostLost",
    "RayNotInstalled",
    "RaySessions",
    "check_store",
    "import_ray",
    "owner_of",
    "weight",
]
