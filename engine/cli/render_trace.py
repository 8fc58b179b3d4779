"""``render GRAPH --trace SESSION:TURN``: a stored turn's path drawn on its graph.

The turn's record (its node trace) is read from ``--store`` without creating or
leasing anything, and drawn by :func:`engine.cli.trace_dot.traced_dot`: the same
picture as the web trace viewer's turn page.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import anyio

from engine.cli.common import UsageError, err, store_url

__all__ = ["parse_trace_spec", "traced_render"]


def parse_trace_spec(spec: str) -> tuple[str, int]:
    """``SESSION:TURN`` as ``(session id, turn from 1)``; :class:`UsageError` otherwise
    (an invalid session id raises the store's ``InvalidSessionId``)."""
    from sessions.store import validate_session_id

    sid, colon, turn = spec.rpartition(":")
    if not colon or not sid or not turn.isdigit() or int(turn) < 1:
        raise UsageError(f"--trace {spec!r}: expected SESSION:TURN, e.g. alice:3 (turns from 1)")
    return validate_session_id(sid), int(turn)


async def _read_trace(url: str, sid: str, n: int) -> tuple[str, Sequence[Mapping[str, Any]]]:
    """The turn's graph hash and node trace (``SessionNotFound``; :class:`UsageError`
    when the session has no such committed turn)."""
    from sessions.store import open_store

    async with open_store(url, create=False) as store:
        found = await store.turns(sid, n - 1, 1)
        if not found:
            await store.load(sid, recent=0)  # SessionNotFound when there is no such session
            raise UsageError(f"session {sid!r}: no turn {n} (not committed)")
    return found[0].graph_hash, found[0].trace


def traced_render(path: str, spec: str, store: str | None) -> str:
    """The graph at ``path`` as DOT with turn ``spec``'s path highlighted.

    A graph that fails validation cannot carry a trace (:class:`UsageError`; draw it
    without ``--trace`` to see its problems).  When the turn ran on another version of
    the graph, a warning says so and the current file is drawn.
    """
    from engine.cli.checks import check_file
    from engine.cli.trace_dot import traced_dot
    from handlers import build_registry

    sid, n = parse_trace_spec(spec)
    checked = check_file(path, build_registry())
    if checked.graph is None:
        raise UsageError(
            f"{path}: error: fails validation ({len(checked.issues)} problem(s)); "
            "render it without --trace to see them marked"
        )
    graph_hash, trace = anyio.run(_read_trace, store_url(store), sid, n)
    if graph_hash and graph_hash != checked.graph.source_hash:
        err(
            f"{path}: warning: turn {n} of {sid!r} ran on graph {graph_hash[:12]}, "
            f"not this file ({checked.graph.source_hash[:12]}); drawn on this file"
        )
    return traced_dot(checked.graph, trace)
