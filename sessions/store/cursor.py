"""A listing's keyset cursor as a value a SQL store binds: every string is a cursor
(an id, a deleted id, one beyond the last, any text), and the sessions above it are
the same on every backend.

Session ids are 1-128 ASCII characters of ``[A-Za-z0-9._-]``
(:func:`~sessions.store.codec.validate_session_id`), so a cursor's characters that no
id holds can be replaced by ones that rank the same against every id: PostgreSQL
refuses text holding NUL and neither driver binds a lone surrogate (what Python makes
of command-line bytes that are not UTF-8).  SQLite alone can hold ids that are not
UTF-8 (a row edited behind the store's back): they are listed as their
``backslashreplace`` decoding, and that text as a cursor stands for those bytes.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["sql_cursor", "sqlite_cursor"]

_ESCAPE: Final = re.compile(rb"\\x([0-9a-f]{2})")
"""A byte as :meth:`bytes.decode` with ``errors="backslashreplace"`` writes it."""


def sql_cursor(after: str) -> str:
    """``after`` as text any SQL driver binds, above exactly the ids above ``after``.

    Cut at a NUL: no id holds one, so an id is above ``"a\\0b"`` exactly when it is
    above ``"a"``.  From a surrogate on, ``"\\x7f"``: both rank above every character
    of an id."""
    after = after.split("\x00", 1)[0]
    for i, ch in enumerate(after):
        if "\ud800" <= ch <= "\udfff":
            return after[:i] + "\x7f"
    return after


def sqlite_cursor(after: str) -> bytes:
    """``after`` as the bytes SQLite compares ids with (bound as ``CAST(? AS TEXT)``).

    A listed id that is not UTF-8 comes back as its ``backslashreplace`` text (``b\\xff``
    for the bytes ``62 ff``): as a cursor it is those bytes again, so the walk goes on
    past that row instead of listing it anew (its escaped text ranks below it).  Text
    whose ``\\xNN`` escapes give valid UTF-8 was no such id: it stays as it is."""
    raw = sql_cursor(after).encode()
    if b"\\x" not in raw:
        return raw
    unescaped = _ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), raw)
    try:
        unescaped.decode()
    except UnicodeDecodeError:
        return unescaped
    return raw
