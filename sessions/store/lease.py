"""Leases and fencing, the rules every store keeps, written once.

A session's lease is three values: its ``version`` (the fencing token of the current
owner), its ``holder`` (``None`` when free) and when it ``expires`` (Unix seconds).
Each store reads them and writes them its own way (a dict, a SQLite row, a PostgreSQL
row locked ``FOR UPDATE``); what the values must become, and which errors a caller
gets, are decided here.  Time comes from a :data:`Clock` the store is given, so tests
move time forward instead of sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

from sessions.errors import Fenced, SessionBusy

__all__ = ["Clock", "Grant", "ManualClock", "check_token", "grant", "lease_end", "not_holder"]

Clock = Callable[[], float]
"""Returns the current Unix time in seconds; stores take one (default ``time.time``)."""


class Grant(NamedTuple):
    """A lease taken: the session's new ``version`` (the token) and its expiry time."""

    version: int
    expires: float


def grant(
    sid: str, version: int, holder: str | None, expires: float, owner: str, ttl: float, now: float
) -> Grant:
    """Take or renew the lease of ``sid`` (stored as ``version, holder, expires``) for
    ``owner`` at time ``now``, for ``ttl`` seconds.

    Raises :class:`~sessions.errors.SessionBusy` if another owner's lease is live.  A
    new ownership (the lease was free, expired, or another's) bumps the version, so
    every token issued before goes stale; the same owner renewing keeps it.
    """
    live = holder is not None and expires > now
    if live and holder != owner:
        raise SessionBusy(sid, f"leased by {holder!r} for {expires - now:.1f}s more")
    if not live or holder != owner:
        version += 1  # a new ownership: older tokens are now stale
    return Grant(version, now + ttl)


def lease_end(clock: Clock, ttl: float) -> float:
    """When a lease renewed now for ``ttl`` seconds expires."""
    return clock() + ttl


def check_token(url: str, sid: str, token: int, version: int) -> None:
    """Raise :class:`~sessions.errors.Fenced` unless ``token`` is the session's
    current ``version``: a stale token writes nothing."""
    if version != token:
        raise Fenced(url, sid, token, version)


def not_holder(url: str, sid: str, token: int) -> Fenced:
    """The error for a renewal whose token is current but whose owner is not the
    lease's holder (a caller bug, or an id reused by another owner)."""
    return Fenced(url, sid, token, token)


class ManualClock:
    """A :data:`Clock` that moves only when told (tests: expire a lease without sleeping).

    Starts at the real time, so timestamps it gives look ordinary.
    """

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``."""
        self.now += seconds
