"""The HMAC chain that makes a session's history tamper-evident, and where its key lives.

Each appended record (message, turn record, summary) is stored with
``mac = HMAC-SHA256(key, prev_mac || body)`` where ``body`` is the record's canonical
JSON (which names its session, position ``rseq`` and kind) and ``prev_mac`` is the MAC of
record ``rseq - 1`` (32 zero bytes for record 0).  The session row keeps the head MAC and
the record count, and its own mutable state is MAC'd together with them, so an edit, a
deletion, a swap, a truncation or data signed with another key all fail verification.

The key comes from configuration, never from code: ``TURNGRAPH_SECRET`` (any string),
else ``<data dir>/secret.key``, created on first use with mode 0600.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from engine.errors import SessionTampered, StoreError
from sessions.store.codec import record_suffix

__all__ = [
    "GENESIS",
    "Chain",
    "Row",
    "Signer",
    "data_dir",
    "derive_key",
    "key_file_path",
    "load_key",
    "verify_span",
]

GENESIS: Final = bytes(32)
"""The ``prev_mac`` of a session's first record."""

Row = tuple[int, str, int, str, bytes, bytes]
"""A stored chain record: ``(rseq, kind, key, body, prev_mac, mac)``."""

Chain = list[tuple[str, str]]
"""Verified records as ``(kind, body)``, in chain order; bodies are parsed on demand."""

_KEY_CONTEXT: Final = b"turngraph.key.v1\x00"


def data_dir() -> Path:
    """turngraph's data directory: ``$TURNGRAPH_HOME``, else ``~/.local/share/turngraph``."""
    home = os.environ.get("TURNGRAPH_HOME")
    return Path(home) if home else Path.home() / ".local" / "share" / "turngraph"


def key_file_path() -> Path:
    """Where the generated key lives when ``TURNGRAPH_SECRET`` is not set."""
    return data_dir() / "secret.key"


def derive_key(raw: bytes) -> bytes:
    """The 32-byte HMAC key derived from any secret string's bytes."""
    return hashlib.sha256(_KEY_CONTEXT + raw).digest()


def load_key(secret: bytes | str | None = None) -> bytes:
    """The store key: ``secret`` if given, else ``$TURNGRAPH_SECRET``, else the key file.

    The key file is created on first use with mode 0600, written whole to a private
    temp file and hard-linked into place, so two processes racing to create it agree
    on one key and neither ever reads a half-written one.  A key file that group or others
    may read is refused with a :class:`~engine.errors.StoreError` saying how to fix it.
    """
    if secret is None:
        secret = os.environ.get("TURNGRAPH_SECRET") or None
    if secret is not None:
        raw = secret.encode() if isinstance(secret, str) else bytes(secret)
        if not raw:
            raise StoreError("<secret>", "the store secret is empty")
        return derive_key(raw)
    return derive_key(_read_or_create_key_file(key_file_path()))


def _read_or_create_key_file(path: Path) -> bytes:
    if not path.exists():
        _create_key_file(path)
    return _read_key_file(path)


def _create_key_file(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):  # another process won: use its key
            os.link(tmp, path)
    finally:
        os.unlink(tmp)


def _read_key_file(path: Path) -> bytes:
    try:
        st = path.stat()
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise StoreError(
                str(path),
                f"key file has mode {stat.S_IMODE(st.st_mode):o}; group and others must "
                f"have no access (run: chmod 600 {path})",
            )
        raw = path.read_bytes().strip()
    except OSError as exc:
        raise StoreError(str(path), f"cannot read key file: {exc.strerror}") from exc
    if not raw:
        raise StoreError(str(path), "key file is empty")
    return raw


class Signer:
    """HMACs for one key.  Keeps a pre-keyed HMAC and ``copy()``s it per record."""

    __slots__ = ("_base",)

    def __init__(self, key: bytes) -> None:
        self._base = hmac.new(key, digestmod=hashlib.sha256)

    def mac(self, prev: bytes, body: str) -> bytes:
        """A chain record's MAC: ``HMAC(key, prev || body)``."""
        h = self._base.copy()
        h.update(prev)
        h.update(body.encode())
        return h.digest()

    def tagged(self, tag: bytes, text: str) -> bytes:
        """A MAC of ``text`` in the domain ``tag`` (session state, checkpoint, export)."""
        h = self._base.copy()
        h.update(tag + b"\x00")
        h.update(text.encode())
        return h.digest()

    def chain(self, prev: bytes, bodies: Iterable[str]) -> list[tuple[bytes, bytes]]:
        """``(prev_mac, mac)`` for consecutive bodies starting after ``prev``."""
        out: list[tuple[bytes, bytes]] = []
        for body in bodies:
            mac = self.mac(prev, body)
            out.append((prev, mac))
            prev = mac
        return out


def verify_span(
    signer: Signer,
    url: str,
    session_id: str,
    rows: Iterable[Row],
    *,
    first: int,
    prev: bytes | None = None,
    head: tuple[int, bytes] | None = None,
) -> Chain:
    """Verify consecutive chain records starting at ``rseq == first``; return them.

    ``prev`` is the MAC the first record must link to (``None``: trust its stored
    ``prev_mac``, which its own MAC still covers).  ``head = (count, mac)`` requires the
    span to end exactly at the session's head.  Raises
    :class:`~engine.errors.SessionTampered` naming the first bad record.  The
    ``key`` column is not signed: callers check the decoded ``seq`` / ``turn`` instead.
    """
    expect, r = prev, first
    out: Chain = []

    def bad(record: int, reason: str) -> SessionTampered:
        return SessionTampered(url, session_id, record, reason)

    for rseq, kind, _key, body, prev_mac, mac in rows:
        if rseq != r:
            raise bad(r, "record is missing (the chain has a gap)")
        if not mac or not prev_mac:
            raise bad(r, "record is unsigned")
        if expect is not None and not hmac.compare_digest(bytes(prev_mac), expect):
            raise bad(r, "record does not link to the previous one (deleted or reordered)")
        if not hmac.compare_digest(signer.mac(bytes(prev_mac), body), bytes(mac)):
            raise bad(r, "MAC mismatch (record edited, or signed with another key)")
        if not body.endswith(record_suffix(session_id, r, kind)):
            raise bad(r, "record belongs to another session or position")
        out.append((kind, body))
        expect, r = bytes(mac), r + 1
    if head is not None:
        count, head_mac = head
        if r != count:
            raise bad(r, f"chain ends at record {r} but the session has {count} (truncated?)")
        if expect is not None and not hmac.compare_digest(expect, head_mac):
            raise bad(r - 1, "last record does not match the session head")
    return out
