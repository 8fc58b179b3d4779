"""The ``memory:`` store's listing index: session ids kept sorted, whole and per agent,
per type and per (agent, type), so a listing page is a binary search and a slice, as
the SQL stores' pages are one range scan of an index (schema 6, see
:mod:`sessions.store.migrations`).
"""

from __future__ import annotations

from bisect import bisect_right, insort
from collections.abc import Hashable

from sessions.store.base import SessionMatch

__all__ = ["SessionIndex"]


class SessionIndex:
    """Sorted ids under four keys: every id (``None``), an agent (``("a", agent)``), a
    type (``("t", type)``) and both (``("at", agent, type)``).

    Adding or removing an id moves the ids after it in each of its four lists (a memory
    move, no comparisons); a page costs a binary search plus its own length.
    """

    __slots__ = ("_lists",)

    def __init__(self) -> None:
        self._lists: dict[Hashable, list[str]] = {}

    @staticmethod
    def _keys(agent_id: str, type_: str) -> tuple[Hashable, ...]:
        return (None, ("a", agent_id), ("t", type_), ("at", agent_id, type_))

    def add(self, sid: str, agent_id: str, type_: str) -> None:
        """Index a new session (its id is not indexed yet)."""
        for key in self._keys(agent_id, type_):
            insort(self._lists.setdefault(key, []), sid)

    def remove(self, sid: str, agent_id: str, type_: str) -> None:
        """Forget an indexed session."""
        for key in self._keys(agent_id, type_):
            ids = self._lists[key]
            del ids[bisect_right(ids, sid) - 1]
            if not ids and key is not None:
                del self._lists[key]  # an agent with no sessions left costs nothing

    def page(self, match: SessionMatch, offset: int, count: int) -> list[str]:
        """Up to ``count`` ids above ``match.after`` with its exact ``agent_id`` and
        ``type``, the first ``offset`` skipped, in order (``match.text`` is not checked)."""
        if match.agent_id is not None and match.type is not None:
            key: Hashable = ("at", match.agent_id, match.type)
        elif match.agent_id is not None:
            key = ("a", match.agent_id)
        elif match.type is not None:
            key = ("t", match.type)
        else:
            key = None
        ids = self._lists.get(key, [])
        start = bisect_right(ids, match.after) + max(0, offset)
        return ids[start : start + max(0, count)]
