"""The memory adapter protocol and :class:`KeywordMemory`, its in-process offline default."""

from __future__ import annotations

import re
from collections import Counter, OrderedDict
from collections.abc import Sequence
from functools import lru_cache
from operator import itemgetter
from sys import intern
from typing import Protocol, runtime_checkable

from engine.messages import MemoryItem

__all__ = ["STOP_WORDS", "KeywordMemory", "Memory", "distinct_keywords", "keywords"]


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


@lru_cache(maxsize=256)
def distinct_keywords(text: str) -> tuple[str, ...]:
    """:func:`keywords` without duplicates, in first-seen order, each word interned.

    Cached: within one turn the same input is looked up by recall, remembered and
    topic-tagged, and interned words let every index entry share one string.
    """
    return tuple(map(intern, dict.fromkeys(keywords(text))))


def _scored(item: MemoryItem, score: int) -> MemoryItem:
    # Direct construction: dataclasses.replace costs several times more per item.
    return MemoryItem(item.text, item.kind, float(score), item.meta)


class _Bucket:
    """One session's memory: items and their keywords by id (oldest first) and an
    inverted index.

    Postings are plain lists of ascending ids (a deque costs ~600 bytes even for one
    id, and a session holds thousands of postings); the evicted oldest id is always at
    the head of each of its postings.  Items and their keywords sit in two dicts rather
    than as pairs: the keyword tuples (strings only) are then left alone by the garbage
    collector.
    """

    __slots__ = ("items", "next_id", "postings", "words")

    def __init__(self) -> None:
        self.items: dict[int, MemoryItem] = {}
        self.words: dict[int, tuple[str, ...]] = {}
        self.postings: dict[str, list[int]] = {}
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
    Items are held as given, never copied: an item whose text is also a history
    message costs only its index entries.
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
            words = distinct_keywords(item.text)
            item_id = bucket.next_id
            bucket.next_id += 1
            bucket.items[item_id] = item
            bucket.words[item_id] = words
            for word in words:
                posting = postings.get(word)
                if posting is None:
                    postings[word] = [item_id]
                else:
                    posting.append(item_id)
            if len(bucket.items) > self.max_items:
                self._evict_oldest(bucket)

    @staticmethod
    def _evict_oldest(bucket: _Bucket) -> None:
        # Ids are consecutive and only the oldest ever leaves, so the oldest id is known
        # (next(iter(items)) would walk over every deleted slot at the dict's head).
        # It is at the head of every posting list it is in.
        old_id = bucket.next_id - len(bucket.items)
        del bucket.items[old_id]
        for word in bucket.words.pop(old_id):
            posting = bucket.postings[word]
            if len(posting) == 1:
                del bucket.postings[word]
            else:
                del posting[0]

    async def recall(self, query: str, *, session_id: str, limit: int = 5) -> Sequence[MemoryItem]:
        """Up to ``limit`` items sharing keywords with ``query``, best first."""
        bucket = self._sessions.get(session_id)
        if bucket is None or limit <= 0:
            return ()
        get = bucket.postings.get
        postings = [p for p in map(get, distinct_keywords(query)) if p]
        if not postings:
            return ()
        items = bucket.items
        if len(postings) == 1:  # every candidate scores 1: the window is the ranking
            newest = postings[0][-min(limit, self.scan) :]
            return tuple(_scored(items[i], 1) for i in reversed(newest))
        best = _best([p[-self.scan :] for p in postings], limit)
        return tuple(_scored(items[i], score) for i, score in best)

    def items(self, session_id: str) -> tuple[MemoryItem, ...]:
        """What ``session_id`` holds, oldest first (unscored)."""
        bucket = self._sessions.get(session_id)
        return tuple(bucket.items.values()) if bucket else ()

    def forget(self, session_id: str) -> None:
        """Drop everything ``session_id`` remembered."""
        self._sessions.pop(session_id, None)

    def count(self, session_id: str) -> int:
        """How many items ``session_id`` holds."""
        bucket = self._sessions.get(session_id)
        return len(bucket.items) if bucket else 0


def _best(windows: Sequence[list[int]], limit: int) -> list[tuple[int, int]]:
    """The ``limit`` best ``(id, score)`` pairs: highest score, then highest (newest) id.

    An id's score is the number of ``windows`` (ascending id lists) it is in.  Instead
    of counting every id in Python, the windows are folded into sets by level
    (``at_least[s]``: the ids in more than ``s`` windows) with C-speed set operations,
    and the best come from the top level down, each level's newest first.  Score 1,
    usually the biggest level, is never built: its newest ``need`` ids are within the
    last ``need + len(above)`` ids of their window, so only those tails are sorted.
    Past a handful of windows the quadratic folding loses to plain counting.
    """
    if len(windows) > _MAX_LEVELS:
        return _best_by_count(windows, limit)
    at_least: list[set[int]] = [set(windows[0])]
    last = len(windows) - 1
    for n in range(1, last + 1):
        window = windows[n]
        for s in range(len(at_least) - 1, -1, -1):  # top down: level s not yet updated
            more = at_least[s].intersection(window)
            if not more:
                continue
            if s + 1 == len(at_least):
                at_least.append(more)
            else:
                at_least[s + 1] |= more
        if n < last:  # the union is only needed to fold in later windows
            at_least[0].update(window)
    out: list[tuple[int, int]] = []
    above: set[int] = set()
    for s in range(len(at_least) - 1, -1, -1):
        need = limit - len(out)
        if s == 0:
            depth = need + len(above)
            level: set[int] = set()
            for window in windows:
                level.update(window[-depth:])
            level -= above
        else:
            level = at_least[s] - above if above else at_least[s]
        out.extend((i, s + 1) for i in sorted(level, reverse=True)[:need])
        if len(out) >= limit:
            break
        above = at_least[s]
    return out


_MAX_LEVELS = 6


def _best_by_count(windows: Sequence[list[int]], limit: int) -> list[tuple[int, int]]:
    """:func:`_best` by counting: ids newest first into a Counter (insertion order),
    then a stable sort by score alone keeps ties newest first."""
    ids: list[int] = []
    for window in windows:
        ids.extend(window)
    ids.sort(reverse=True)
    return sorted(Counter(ids).items(), key=_SCORE, reverse=True)[:limit]


_SCORE = itemgetter(1)
