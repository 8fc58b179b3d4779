"""The memory adapter protocol and :class:`KeywordMemory`, its in-process offline default."""

from __future__ import annotations

import re
from collections import Counter, OrderedDict, deque
from collections.abc import Sequence
from itertools import islice
from operator import itemgetter
from typing import Protocol, runtime_checkable

from handlers.adapters.types import MemoryItem

__all__ = ["STOP_WORDS", "KeywordMemory", "Memory", "keywords"]


@runtime_checkable
class Memory(Protocol):
    """Long-term memory, partitioned by session.

    ``recall`` returns at most ``limit`` items, most relevant first, with ``score`` set.
    Failures raise :class:`~engine.errors.AdapterError` (or the transient variant).
    """

    async def recall(self, query: str, *, session_id: str, limit: int = 5) -> Sequence[MemoryItem]:
        """Items relevant to ``query`` from ``session_id``'s memory."""
        ...

    async def remember(self, items: Sequence[MemoryItem], *, session_id: str) -> None:
        """Store ``items`` in ``session_id``'s memory."""
        ...


_STOP_WORDS_TEXT = """
a an the and or but if then else of to in on at by for with from about as into is
are was were be been being am do does did have has had i me my you your he she it
its we our they them their this that these those what which who whom how why when
where there here not no so can could would should will shall may might must just
than too very also echo user assistant
"""
STOP_WORDS = frozenset(_STOP_WORDS_TEXT.split())
"""Words too common to say what a text is about (``echo``, ``user`` and ``assistant``
are here because the offline model and exchange records repeat them in every item)."""

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def keywords(text: str) -> list[str]:
    """The lowercase content words of ``text``, in order, stop words and 1-letter words
    dropped (duplicates kept)."""
    return [w for w in _WORD.findall(text.lower()) if len(w) > 1 and w not in STOP_WORDS]


def _scored(item: MemoryItem, score: int) -> MemoryItem:
    # Direct construction: dataclasses.replace costs several times more per item.
    return MemoryItem(item.text, item.kind, float(score), item.meta)


class _Bucket:
    """One session's memory: items by id (oldest first) and an inverted index."""

    __slots__ = ("items", "next_id", "postings")

    def __init__(self) -> None:
        self.items: dict[int, tuple[MemoryItem, frozenset[str]]] = {}
        self.postings: dict[str, deque[int]] = {}
        self.next_id = 0


class KeywordMemory:
    """Recall by keyword overlap, kept in this process.

    An item's score for a query is the number of distinct query keywords it contains;
    ties go to the more recent item; items sharing no keyword are never returned.

    Cost is bounded however much a session remembers: an inverted index maps each
    keyword to the items containing it, and recall looks only at the ``scan`` most
    recent items for each query keyword (memory here is recency-biased on purpose; an
    item older than the last ``scan`` mentions of every keyword it shares with the
    query is not found).  Each session keeps its newest ``max_items`` items, and at
    most ``max_sessions`` sessions are kept (least recently used dropped first).
    """

    def __init__(
        self, *, max_items: int = 1000, max_sessions: int = 10_000, scan: int = 64
    ) -> None:
        if max_items < 1 or max_sessions < 1 or scan < 1:
            raise ValueError("max_items, max_sessions and scan must be >= 1")
        self.max_items = max_items
        self.max_sessions = max_sessions
        self.scan = scan
        self._sessions: OrderedDict[str, _Bucket] = OrderedDict()

    def _bucket(self, session_id: str) -> _Bucket:
        bucket = self._sessions.get(session_id)
        if bucket is None:
            bucket = self._sessions[session_id] = _Bucket()
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        else:
            self._sessions.move_to_end(session_id)
        return bucket

    async def remember(self, items: Sequence[MemoryItem], *, session_id: str) -> None:
        """Append ``items`` to the session's memory (the oldest fall off past the bound)."""
        bucket = self._bucket(session_id)
        postings = bucket.postings
        for item in items:
            words = frozenset(keywords(item.text))
            item_id = bucket.next_id
            bucket.next_id += 1
            bucket.items[item_id] = (item, words)
            for word in words:
                posting = postings.get(word)
                if posting is None:
                    posting = postings[word] = deque()
                posting.append(item_id)
            if len(bucket.items) > self.max_items:
                self._evict_oldest(bucket)

    @staticmethod
    def _evict_oldest(bucket: _Bucket) -> None:
        # Ids are consecutive and only the oldest ever leaves, so the oldest id is known
        # (next(iter(items)) would walk over every deleted slot at the dict's head).
        # It is at the head of every posting list it is in.
        old_id = bucket.next_id - len(bucket.items)
        _, words = bucket.items.pop(old_id)
        for word in words:
            posting = bucket.postings[word]
            posting.popleft()
            if not posting:
                del bucket.postings[word]

    async def recall(self, query: str, *, session_id: str, limit: int = 5) -> Sequence[MemoryItem]:
        """Up to ``limit`` items sharing keywords with ``query``, best first."""
        bucket = self._sessions.get(session_id)
        if bucket is None or limit <= 0:
            return ()
        postings = [p for p in map(bucket.postings.get, set(keywords(query))) if p]
        items = bucket.items
        if len(postings) == 1:  # every candidate scores 1: the window is the ranking
            newest = islice(reversed(postings[0]), min(limit, self.scan))
            return tuple(_scored(items[i][0], 1) for i in newest)
        best = _best(postings, self.scan, limit) if postings else ()
        return tuple(_scored(items[i][0], score) for i, score in best)

    def count(self, session_id: str) -> int:
        """How many items ``session_id`` holds."""
        bucket = self._sessions.get(session_id)
        return len(bucket.items) if bucket else 0


def _best(postings: Sequence[deque[int]], scan: int, limit: int) -> list[tuple[int, int]]:
    """The ``limit`` best ``(id, score)`` pairs: highest score, then highest (newest) id.

    An id's score is the number of windows (the newest ``scan`` ids of a posting) it
    is in.  First the cheap exact case: when ``limit`` ids are in every window, they
    are the best (no id can score more), found newest first without counting.
    Otherwise every id is counted, in C (``Counter``), newest first, and a stable sort
    by score alone keeps ties in that order.
    """
    newest = [islice(reversed(p), scan) for p in postings]
    in_rest = set(newest[1]).intersection(*newest[2:])
    top = list(islice(filter(in_rest.__contains__, newest[0]), limit))
    if len(top) == limit:
        return [(i, len(postings)) for i in top]
    ids: list[int] = []
    for p in postings:
        ids.extend(islice(reversed(p), scan))
    ids.sort(reverse=True)
    return sorted(Counter(ids).items(), key=_SCORE, reverse=True)[:limit]


_SCORE = itemgetter(1)
