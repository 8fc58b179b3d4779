"""Errors about sessions and their durable stores: the sessions layer's branch of the
tree rooted at :class:`engine.errors.TurngraphError`.

::

    TurngraphError                 (engine.errors)
    ├── SessionError               session id, not found, busy, limits
    │   ├── InvalidSessionId
    │   ├── InvalidInput           send() input that is not a str, or cannot be encoded
    │   ├── SessionNotFound
    │   ├── SessionExists
    │   ├── SessionBusy
    │   │   └── Fenced             another process owns the session now
    │   ├── SessionLimitReached
    │   ├── SessionClosed
    │   ├── SessionPaused          a human gate's question waits: answer it first
    │   ├── NotPaused              answer() with no question waiting
    │   │   └── QuestionChanged    answer(node=...) while another gate's question waits
    │   ├── UnknownChoice          answer() with a choice the gate does not offer
    │   ├── GateTimedOut           answer() after the gate's timeout: its default was taken
    │   └── RetryRefused           retry_turn() with nothing to retry, or a changed graph
    └── StoreError                 the durable store
        ├── StoreCorrupt
        ├── Unstorable             a turn's values cannot be stored (not JSON, too deep)
        ├── StoreReadOnly          the store can be read but not written
        ├── StoreFull              the disk (or the database's size limit) is full
        ├── StoreLocked            a write waited too long for a row lock
        ├── CommitUnknown          the connection broke mid-commit and stayed broken
        ├── SessionTampered        an HMAC chain does not verify
        │   └── RolledBack         the chain verifies, but ends before its witnessed head
        ├── StoreVersionUnsupported
        ├── ThreadClosed           a call reached a stopped database thread (a caller bug)
        ├── StoreExtraMissing      the store's optional extra is not installed
        ├── StorePathInvalid       a store path whose folder is missing or not a folder
        ├── StoreKeyMissing        the key file of an existing store is gone
        ├── ExportPathRefused      ``export -o`` names something that is not a regular file
        └── ImportRejected
            └── ImportKeyMismatch  signed with another key (both key ids named)

``Fenced`` is a ``SessionBusy`` because to the caller both mean "someone else holds this
session"; it is also a ``StoreError`` because the store detected it.
"""

from __future__ import annotations

from engine.errors import TurngraphError

__all__ = [
    "CommitUnknown",
    "ExportPathRefused",
    "Fenced",
    "GateTimedOut",
    "ImportKeyMismatch",
    "ImportRejected",
    "InvalidInput",
    "InvalidSessionId",
    "NotPaused",
    "QuestionChanged",
    "RetryRefused",
    "RolledBack",
    "SessionBusy",
    "SessionClosed",
    "SessionError",
    "SessionExists",
    "SessionLimitReached",
    "SessionNotFound",
    "SessionPaused",
    "SessionTampered",
    "StoreCorrupt",
    "StoreError",
    "StoreExtraMissing",
    "StoreFull",
    "StoreKeyMissing",
    "StoreLocked",
    "StorePathInvalid",
    "StoreReadOnly",
    "StoreVersionUnsupported",
    "UnknownChoice",
    "Unstorable",
]


# --------------------------------------------------------------------------- sessions


class SessionError(TurngraphError):
    """Something about one session.  ``session_id`` names it (``repr``-safe)."""

    def __init__(self, session_id: str, reason: str) -> None:
        super().__init__(f"session {session_id!r}: {reason}")
        self.session_id = session_id
        self.reason = reason


class InvalidSessionId(SessionError):
    """A session id outside the safe charset or length (``../etc``, empty, NUL...)."""


class InvalidInput(SessionError):
    """A turn's input is not a ``str``, or is a ``str`` that cannot be encoded as UTF-8
    (a lone surrogate).  Refused before anything is written."""


class SessionNotFound(SessionError):
    """No session with that id exists."""


class SessionExists(SessionError):
    """A session with that id already exists (on ``create``)."""


class SessionBusy(SessionError):
    """The session cannot take this now: its queue is full or another owner holds it."""


class SessionLimitReached(SessionError):
    """A configured limit (active sessions per manager) would be exceeded."""


class SessionClosed(SessionError):
    """The session (or its manager) is closed."""


class SessionPaused(SessionError):
    """A turn waits at a human gate: no new turn until its question is answered.

    ``node``, ``question`` and ``choices`` are the gate's.
    """

    def __init__(self, session_id: str, node: str, question: str, choices: tuple[str, ...]) -> None:
        shown = ", ".join(choices)
        super().__init__(
            session_id, f"a question is waiting at node {node!r}: {question} [{shown}]"
        )
        self.node = node
        self.question = question
        self.choices = choices


class NotPaused(SessionError):
    """``answer()`` on a session with no question waiting."""


class QuestionChanged(NotPaused):
    """``answer(choice, node=...)`` when the question waiting is not the gate's the
    caller saw (a timeout took that one on to another gate): ``node`` is the gate that
    waits now, ``expected`` the one named.  Nothing ran; the question still waits."""

    def __init__(self, session_id: str, node: str, expected: str) -> None:
        super().__init__(
            session_id,
            f"the question waiting is at node {node!r}, not {expected!r} "
            "(the gate's timeout took it on): read the new question, then answer it",
        )
        self.node = node
        self.expected = expected


_CHOICE_SHOWN = 60
"""Characters of a refused choice its message shows."""


class UnknownChoice(SessionError):
    """``answer(choice)`` with a choice the waiting gate does not offer (the question
    still waits)."""

    def __init__(
        self, session_id: str, node: str, choice: object, choices: tuple[str, ...]
    ) -> None:
        shown = ", ".join(choices)
        if not isinstance(choice, str):  # its repr() is not ours to call: it may raise
            given = f"of type {type(choice).__name__} (a choice is a str)"
        elif len(choice) > _CHOICE_SHOWN:  # one short line, whatever was sent
            given = repr(choice[:_CHOICE_SHOWN])[:-1] + "…"
        else:
            given = repr(choice)
        super().__init__(session_id, f"node {node!r} has no choice {given}; choose one of: {shown}")
        self.node = node
        self.choice = choice
        self.choices = choices


class GateTimedOut(SessionError):
    """``answer()`` came after the gate's timeout: the turn went on without it, with
    the gate's ``default`` (``None``: the gate failed)."""

    def __init__(self, session_id: str, node: str, default: str | None) -> None:
        took = f"its default {default!r} was taken" if default is not None else "it failed"
        super().__init__(session_id, f"the question at node {node!r} timed out: {took}")
        self.node = node
        self.default = default


class RetryRefused(SessionError):
    """``retry_turn()`` has nothing it may re-run (``reason`` says why)."""


# --------------------------------------------------------------------------- stores


class StoreError(TurngraphError):
    """The durable store failed or refused.  ``url`` names the store (no password)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason


class StoreCorrupt(StoreError):
    """The store's data cannot be read (truncated, not a database, bad JSON...)."""


class Unstorable(StoreError):
    """What a turn would store cannot be stored: not JSON (a set, bytes, an object, a
    non-``str`` key), NaN, a lone surrogate, or nested too deeply.  Nothing is written."""

    def __init__(self, url: str, session_id: str, what: str, cause: str) -> None:
        super().__init__(url, f"session {session_id!r}: {what} is not JSON-serialisable: {cause}")
        self.session_id = session_id
        self.what = what


class StoreReadOnly(StoreError):
    """The store is read-only (a read-only file, directory, mount or database role):
    reads work, this write was refused."""


class StoreFull(StoreError):
    """The disk holding the store (or the database's size limit) is full; nothing was
    written.  ``url`` names the file."""


class StoreLocked(StoreError):
    """A write waited longer than the store's ``lock_timeout`` for a lock another
    writer holds; nothing was written."""


class CommitUnknown(StoreError):
    """The connection broke while a turn committed, and the store could not be reached
    again to find out whether the server stored it.  Not a failure: the turn may be
    stored.  The session reads what was stored before its next turn (and adopts the
    turn if it was), so sending again never leaves two copies of one commit."""


class SessionTampered(StoreError):
    """A session's HMAC chain does not verify: edited, deleted, reordered or re-keyed."""

    def __init__(self, url: str, session_id: str, record: int, reason: str) -> None:
        super().__init__(url, f"session {session_id!r} record {record}: {reason}")
        self.session_id = session_id
        self.record = record


class RolledBack(SessionTampered):
    """A session verifies, but it is older than the head its witness recorded: the
    database (or the session's rows) was put back to an earlier, validly signed state.

    ``witnessed`` and ``stored`` are the record counts of the witnessed head and of the
    store's head (``stored`` is 0 for a session missing from the store).
    """

    def __init__(self, url: str, session_id: str, witnessed: int, stored: int, why: str) -> None:
        super().__init__(
            url,
            session_id,
            max(0, witnessed - 1),
            f"rolled back: the witness recorded {witnessed} records, the store has "
            f"{stored} ({why})",
        )
        self.witnessed = witnessed
        self.stored = stored


class StoreVersionUnsupported(StoreError):
    """The store's schema is newer than this code (or unknown)."""


class ImportRejected(StoreError):
    """An export document failed its signature, schema or size checks."""


class ImportKeyMismatch(ImportRejected):
    """An export signed with another key than the one verifying it (not an edited file).

    ``doc_key_id`` is the id the document names, ``key_id`` the verifying key's.
    """

    def __init__(self, url: str, doc_key_id: str, key_id: str, hint: str) -> None:
        super().__init__(
            url,
            f"import rejected: the document was signed with key {doc_key_id}, "
            f"not with key {key_id} ({hint})",
        )
        self.doc_key_id = doc_key_id
        self.key_id = key_id


class StoreExtraMissing(StoreError):
    """The store's URL needs an optional extra that is not installed."""


class StorePathInvalid(StoreError):
    """A store path that cannot be used: its folder is missing, or is not a folder."""


class StoreKeyMissing(StoreError):
    """The key file of an existing store is missing (a new key would not verify it)."""


class ExportPathRefused(StoreError):
    """An export target that is not a regular file (a device, symlink, folder...)."""


class Fenced(SessionBusy, StoreError):
    """A commit carried a stale fencing token: another process owns the session now.

    Nothing was written.
    """

    def __init__(self, url: str, session_id: str, expected: int, actual: int) -> None:
        StoreError.__init__(
            self,
            url,
            f"session {session_id!r} is owned elsewhere "
            f"(fencing token {expected} is stale, store has {actual})",
        )
        self.session_id = session_id
        self.reason = "fenced"
        self.expected = expected
        self.actual = actual
