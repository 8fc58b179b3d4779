"""A witness of each session's chain head, kept outside the database: rollback detection.

The HMAC chain proves that what a store returns was written by a holder of the key, in
that order, up to the head the session row names.  It cannot tell that head from an
*earlier* one: a database file copied back from yesterday, an older session row put
back with the newer records deleted, a truncated write-ahead log all leave a session
that verifies, only shorter.  The witness remembers, outside the database, the newest
head this machine saw committed, ``(records, head MAC)`` per session, and a load that
finds the store behind it raises :class:`~engine.errors.RolledBack`.

Where: ``$TURNGRAPH_HOME/witness/<digest>.log``, beside the key file (an attacker who
can replace the database file but not the data directory cannot rewind both), one file
per store, named by the SHA-256 of the store's identity (a SQLite file's absolute path,
the database, user and schema options a PostgreSQL URL reaches, without its
password, TLS or timeout settings).

Format and cost: one line per advance, appended with ``O_APPEND`` (``A sid records mac``;
``R`` resets a session's head, for a create or an import; ``D`` forgets a deleted one).
An append is one ``write`` under a shared ``flock``, no ``fsync``: the witness is
written *after* the database commit, so a crash can only leave it behind the store,
which weakens the check for that session until its next write and never raises a false
alarm.  When the log passes :data:`COMPACT_BYTES` it is rewritten whole, one line per
session (a temp file, ``fsync``, ``rename``, ``fsync`` of the directory) under an
exclusive ``flock``; other processes notice the new file and reread it.

Several processes writing one store share the file: each append is atomic
(``O_APPEND``, one short ``write``), an ``A`` line never moves a head backwards (a
stale owner's late line is ignored), and a reader rereads what others appended.
A missing witness file means "nothing witnessed": those sessions are not checked (a
warning is logged once), never an error.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import hmac
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from sessions.errors import RolledBack, StoreError
from sessions.store.signing import GENESIS, data_dir

__all__ = ["COMPACT_BYTES", "Witness", "witness_path"]

COMPACT_BYTES: Final = 4 << 20
"""Log size past which an append first rewrites the log with one line per session."""

_HEADER: Final = b"# turngraph witness v1\n"
_log = logging.getLogger("turngraph.witness")

Head = tuple[int, bytes]
"""A witnessed head: ``(record count, MAC of the last record)``."""


def witness_path(identity: str) -> Path:
    """The witness file of the store named ``identity`` (its path or redacted URL)."""
    digest = hashlib.sha256(identity.encode()).hexdigest()[:32]
    return data_dir() / "witness" / f"{digest}.log"


class Witness:
    """The witnessed heads of one store's sessions, in the file at ``path``.

    ``url`` names the store in errors.  :meth:`open` before use; every method is
    synchronous and cheap (an append is one ``write``; a lookup reads only what was
    appended since the last one).
    """

    def __init__(self, path: Path, url: str) -> None:
        self.path, self.url = path, url
        self._heads: dict[str, Head] = {}
        self._fd = -1
        self._lock = -1
        self._ino = 0
        self._offset = 0
        self._partial = b""
        self._found = True
        self._read_only = False
        self._warned = False
        self._compacted = 0  # the size of the last compaction's file: grow past twice it

    def open(self) -> None:
        """Open (creating if needed, mode 0600 in a 0700 directory) and read the file."""
        try:
            try:
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                self._found = self.path.exists()
                self._lock = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:
                if exc.errno != errno.EROFS:
                    raise
                # A read-only mount (a backup being inspected): its stores can only be
                # read, so the witness is only read too; nothing to lock against.
                self._read_only = self._found = self.path.exists()
                if not self._read_only:
                    return  # nothing witnessed here: not checked
            self._reopen()
        except OSError as exc:
            self.close()
            raise StoreError(self.url, f"cannot open rollback witness {self.path}: {exc}") from exc

    def close(self) -> None:
        """Close the file.  Idempotent."""
        for fd in (self._fd, self._lock):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = self._lock = -1

    # ------------------------------------------------------------------ writing

    def seen(self, sid: str, records: int, mac: bytes) -> None:
        """Record that ``sid``'s head ``(records, mac)`` is committed (or verified)."""
        if self._heads.get(sid, (-1, b""))[0] >= records:
            return  # known already, or behind what is witnessed: nothing to add
        self._heads[sid] = (records, bytes(mac))
        self._append(b"A %s %d %s\n" % (sid.encode(), records, mac.hex().encode()))

    def seen_all(self, heads: Iterable[tuple[str, int, bytes]]) -> None:
        """:meth:`seen` for each ``(sid, records, mac)``, in one write to the file
        (a group commit's turns)."""
        lines = []
        for sid, records, mac in heads:
            if self._heads.get(sid, (-1, b""))[0] < records:
                self._heads[sid] = (records, bytes(mac))
                lines.append(b"A %s %d %s\n" % (sid.encode(), records, mac.hex().encode()))
        if lines:
            self._append(b"".join(lines))

    def reset(self, sid: str, records: int = 0, mac: bytes = GENESIS) -> None:
        """Set ``sid``'s head whatever it was (a session created or imported anew)."""
        self._heads[sid] = (records, bytes(mac))
        self._append(b"R %s %d %s\n" % (sid.encode(), records, mac.hex().encode()))

    def drop(self, sid: str) -> None:
        """Forget ``sid`` (the session was deleted through the store)."""
        self._heads.pop(sid, None)
        self._append(b"D %s\n" % sid.encode())

    def _append(self, line: bytes) -> None:
        if self._fd < 0 or self._read_only:
            return
        try:
            fcntl.flock(self._lock, fcntl.LOCK_SH)
            try:
                st = os.fstat(self._fd)
                if st.st_nlink == 0:  # replaced by another process's compaction
                    self._reopen()
                    st = os.fstat(self._fd)
                os.write(self._fd, line)
            finally:
                fcntl.flock(self._lock, fcntl.LOCK_UN)
            if st.st_size > max(COMPACT_BYTES, 2 * self._compacted):
                self._compact()
        except OSError as exc:
            # The commit is done; a witness that lags only weakens its own check.
            _log.warning("rollback witness %s not updated: %s", self.path, exc)

    def _compact(self) -> None:
        """Rewrite the log as one ``R`` line per session (exclusive lock, atomic)."""
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        try:
            if os.fstat(self._fd).st_nlink == 0:  # another process compacted first
                self._reopen()
            else:
                self._refresh()
            data = _HEADER + b"".join(
                b"R %s %d %s\n" % (s.encode(), n, m.hex().encode())
                for s, (n, m) in self._heads.items()
            )
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
            self._compacted = len(data)
            self._reopen()
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ reading

    def expected(self, sid: str, *, stored: bool = True) -> Head | None:
        """The witnessed head of ``sid`` (``None``: not witnessed, so not checked).

        ``stored``: the store holds the session, so a witness file that did not exist
        before this store opened it warrants the "not checked" warning (once)."""
        if self._fd < 0:
            return None
        try:
            if os.stat(self.path).st_ino != self._ino:
                self._reopen()
            else:
                self._refresh()
        except FileNotFoundError:  # deleted while open: nothing witnessed from now on
            self._missing()
            return None
        head = self._heads.get(sid)
        if head is None and stored and not self._found:
            self._missing()
        return head

    def check(self, sid: str, records: int, head_mac: bytes, mac_at: bytes | None) -> None:
        """Raise :class:`~engine.errors.RolledBack` unless the stored head ``(records,
        head_mac)`` is the witnessed one or a descendant of it (which then becomes the
        witnessed head: the store was written without the witness, or it lagged).

        ``mac_at`` is the stored MAC of record ``witnessed - 1`` when the store is ahead
        of the witness (:meth:`behind` says which record to read), else ignored.
        """
        w = self._heads.get(sid)
        if w is None:
            return
        count, mac = w
        if records < count:
            raise RolledBack(self.url, sid, count, records, "the store is behind it")
        if records == count and not hmac.compare_digest(head_mac, mac):
            raise RolledBack(self.url, sid, count, records, "the head differs")
        if records > count:
            if count and (mac_at is None or not hmac.compare_digest(mac_at, mac)):
                raise RolledBack(self.url, sid, count, records, "the witnessed head is not in it")
            self.seen(sid, records, head_mac)  # a descendant: witness it from now on

    def check_missing(self, sid: str) -> None:
        """Raise :class:`~engine.errors.RolledBack` if ``sid``, absent from the store,
        was witnessed with records: it vanished without a delete through a store (an
        older database file, say).  ``delete`` through the store clears the witness."""
        w = self.expected(sid, stored=False)
        if w is not None and w[0] > 0:
            raise RolledBack(self.url, sid, w[0], 0, "the session is missing from the store")

    def behind(self, sid: str, records: int) -> int | None:
        """The record whose MAC :meth:`check` needs (the store is ahead), else ``None``."""
        w = self.expected(sid)
        return w[0] - 1 if w is not None and 0 < w[0] < records else None

    def _missing(self) -> None:
        if not self._warned:
            self._warned = True
            _log.warning(
                "no rollback witness for %s at %s: sessions written before it existed are "
                "not checked for rollback until their next write",
                self.url,
                self.path,
            )

    def _reopen(self) -> None:
        """(Re)open the file and read it whole: first use, or replaced by a compaction."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._read_only:
            fd = os.open(self.path, os.O_RDONLY)
        else:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        self._fd, self._ino = fd, os.fstat(fd).st_ino
        self._heads, self._offset, self._partial = {}, 0, b""
        if os.fstat(fd).st_size == 0 and not self._read_only:
            os.write(fd, _HEADER)
        self._refresh()

    def _refresh(self) -> None:
        """Read the lines appended since the last read (by anyone)."""
        chunks = []
        while chunk := os.pread(self._fd, 1 << 16, self._offset):
            chunks.append(chunk)
            self._offset += len(chunk)
        if not chunks:
            return
        data = self._partial + b"".join(chunks)
        *lines, self._partial = data.split(b"\n")
        for line in lines:
            self._apply(line)

    def _apply(self, line: bytes) -> None:
        """One line; an unreadable one (torn by a crash, edited) is skipped."""
        parts = line.split()
        try:
            if parts[0] == b"D" and len(parts) == 2:
                self._heads.pop(parts[1].decode(), None)
                return
            op, sid, n, mac = (
                parts[0],
                parts[1].decode(),
                int(parts[2]),
                bytes.fromhex(parts[3].decode()),
            )
        except (IndexError, ValueError):
            return
        if len(parts) != 4 or len(mac) != 32 or n < 0:
            return
        if op == b"R" or (op == b"A" and self._heads.get(sid, (-1, b""))[0] < n):
            self._heads[sid] = (n, mac)
