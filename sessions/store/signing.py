"""The HMAC chain that makes a session's history tamper-evident, and where its key lives.

Each appended record (message, turn record, summary) is stored with
``mac = HMAC-SHA256(key, prev_mac || body)`` where ``body`` is the record's canonical
JSON (which names its session, position ``rseq`` and kind) and ``prev_mac`` is the MAC of
record ``rseq - 1`` (32 zero bytes for record 0).  A body ends by naming the canonical
JSON format that wrote it (``,"v":2}``; format 1 named none), and verification accepts
every format in :data:`~sessions.store.codec.CODEC_VERSIONS`: a store keeps verifying
across an encoder change, while a body from a newer format is refused as such.

The session row keeps the head MAC and the record count, and its own mutable state is
MAC'd together with them, so an edit, a deletion, a swap, a truncation or data signed
with another key all fail verification.

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

from sessions.errors import (
    SessionTampered,
    StoreError,
    StoreKeyMissing,
    StoreVersionUnsupported,
)
from sessions.store.codec import CODEC_VERSION, CODEC_VERSIONS, record_suffix, record_version

__all__ = [
    "GENESIS",
    "Chain",
    "RawSlim",
    "Row",
    "Signer",
    "Slim",
    "data_dir",
    "derive_key",
    "key_file_path",
    "key_id",
    "load_key",
    "read_key_file",
    "verify_span",
]

GENESIS: Final = bytes(32)
"""The ``prev_mac`` of a session's first record."""

Row = tuple[int, str, int, str, bytes, bytes]
"""A stored chain record: ``(rseq, kind, key, body, prev_mac, mac)``."""

Slim = tuple[str, str, bytes]
"""A chain record as the fast path reads it: ``(kind, body, mac)``."""

Chain = list[Slim]
"""Verified records as ``(kind, body, mac)``, in chain order; bodies are parsed on demand."""

RawSlim = tuple[str, bytes, bytes]
"""A chain record as a bulk read fetches it: ``(kind, UTF-8 body, mac)``."""

_KEY_CONTEXT: Final = b"turngraph.key.v1\x00"
_KEY_ID_CONTEXT: Final = b"turngraph.key-id.v1\x00"
_BLOCK: Final = 64  # SHA-256's block size, HMAC's key pad length


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


def key_id(key: bytes) -> str:
    """A key's public name: 16 hex digits of a domain-separated SHA-256 of it.

    Safe to print and to put in export documents: it names the key without revealing
    it (a different hash domain than the HMAC's, so it is no MAC of anything).
    """
    return hashlib.sha256(_KEY_ID_CONTEXT + key).hexdigest()[:16]


def read_key_file(path: str | os.PathLike[str]) -> bytes:
    """The HMAC key held by a key file (``secret.key`` copied from another machine).

    :class:`~engine.errors.StoreError` naming the file if it is missing, empty or
    readable by group or others.
    """
    return derive_key(_read_key_file(Path(path)))


def load_key(secret: bytes | str | None = None, *, existing_store: str | None = None) -> bytes:
    """The store key: ``secret`` if given, else ``$TURNGRAPH_SECRET``, else the key file.

    The key file is created on first use with mode 0600, written whole to a private
    temp file, fsynced, hard-linked into place and its folder fsynced, so two processes
    racing to create it agree on one key, neither ever reads a half-written one, and a
    crash cannot lose a key a store already depends on.  A key file that group or others
    may read is refused with a :class:`~engine.errors.StoreError` saying how to fix it.

    ``existing_store`` (the URL of a store that already holds data) forbids creating
    the key: its absence is :class:`~engine.errors.StoreKeyMissing`, because a new key
    would make every stored session read as tampered.
    """
    if secret is None:
        secret = os.environ.get("TURNGRAPH_SECRET") or None
    if secret is not None:
        raw = secret.encode() if isinstance(secret, str) else bytes(secret)
        if not raw:
            raise StoreError("<secret>", "the store secret is empty")
        return derive_key(raw)
    path = key_file_path()
    if existing_store is not None and not path.exists():
        raise StoreKeyMissing(
            existing_store,
            f"the store exists but its key file {path} is missing; restore it (or set "
            "TURNGRAPH_SECRET to the store's secret): a new key would make every "
            "session read as tampered",
        )
    return derive_key(_read_or_create_key_file(path))


def _read_or_create_key_file(path: Path) -> bytes:
    if not path.exists():
        _create_key_file(path)
    return _read_key_file(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    _fsync_dir(path.parent)  # the link (and the temp file's removal) survive a crash


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
    """HMAC-SHA256 for one key, with the key's two padded blocks hashed once.

    HMAC(k, m) = SHA256((k ^ opad) || SHA256((k ^ ipad) || m)) (RFC 2104).  The two
    SHA-256 states after the padded key are kept and ``copy()``'d per message: a copy of
    a bare hash state is far cheaper than copying an HMAC object (identical bytes).
    """

    __slots__ = ("_inner", "_outer", "key_id")

    def __init__(self, key: bytes) -> None:
        self.key_id = key_id(key)
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_BLOCK, b"\x00")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def mac(self, prev: bytes, body: str) -> bytes:
        """A chain record's MAC: ``HMAC(key, prev || body)``."""
        inner = self._inner.copy()
        inner.update(prev)
        inner.update(body.encode())
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def tagged(self, tag: bytes, text: str) -> bytes:
        """A MAC of ``text`` in the domain ``tag`` (session state, checkpoint, export)."""
        return self.mac(tag + b"\x00", text)

    def chain(self, prev: bytes, bodies: Iterable[str]) -> list[tuple[bytes, bytes]]:
        """``(prev_mac, mac)`` for consecutive bodies starting after ``prev``."""
        out: list[tuple[bytes, bytes]] = []
        for body in bodies:
            mac = self.mac(prev, body)
            out.append((prev, mac))
            prev = mac
        return out

    def check_chain(self, session_id: str, rows: Iterable[Slim], first: int, prev: bytes) -> bool:
        """The fast path of verification: whether ``rows`` are intact records.

        ``rows`` are ``(kind, body, mac)`` of records ``first, first + 1, ...`` in order,
        and ``prev`` is the MAC record ``first`` must link to.  One tight loop per record:
        recompute the MAC from the *expected* previous MAC (so a deleted, reordered or
        foreign record breaks it), compare it with the stored one, and check the body's
        suffix names this session, this position and this kind (in format 2, else 1).
        On ``False``, callers run :func:`verify_span` on full rows, which names the first
        bad record and why.  (A ``True`` lets callers use ``rows`` as they are: no copy per record.)
        """
        ipad, opad, compare, r = self._inner, self._outer, hmac.compare_digest, first
        tail = f',"session":"{session_id}","v":{CODEC_VERSION}}}'
        old = f',"session":"{session_id}"}}'  # format 1's bodies: no "v"
        try:
            for kind, body, mac in rows:
                inner = ipad.copy()
                inner.update(prev)
                inner.update(body.encode())
                outer = opad.copy()
                outer.update(inner.digest())
                prev = outer.digest()
                if not compare(prev, mac):
                    return False
                at = f',"kind":"{kind}","rseq":{r}'
                if not (body.endswith(at + tail) or body.endswith(at + old)):
                    return False
                r += 1
        # A NULL or a value of another type in a column (SQLite stores any): the
        # careful check names it.
        except (TypeError, AttributeError):
            return False
        return True

    def bodies_to_head(
        self, rows: list[RawSlim], first: int, prev: bytes, head: tuple[int, bytes], kind: str
    ) -> list[bytes] | None:
        """The bodies of ``kind`` among records ``first...`` that end at the session's
        head, if every record verifies; else ``None`` (the careful path then says why).

        ``rows`` are ``(kind, body, mac)`` with UTF-8 bodies, as a bulk read fetches them
        (no ``encode`` per record); ``head = (record_count, head_mac)`` comes from the
        verified session row.  The chain of MACs is recomputed from ``prev`` (the first
        record's stored link) and each compared with the stored MAC; then it must end at
        exactly ``head``.  A chain that does is the session's own chain, record for
        record: each MAC covers the previous one, so walking back from the trusted head,
        every body is the one signed at its position, in this session.  That is why,
        unlike :meth:`check_chain`, no body's suffix is checked here: a span that does
        not reach the head must use :meth:`check_chain`.  The ``kind`` column picks the
        bodies; a wrong one yields a body of another shape, which decoding refuses.
        """
        ipad, opad, compare = self._inner, self._outer, hmac.compare_digest
        picked: list[bytes] = []
        keep = picked.append
        try:
            for k, body, mac in rows:
                inner = ipad.copy()
                inner.update(prev)
                inner.update(body)
                outer = opad.copy()
                outer.update(inner.digest())
                prev = outer.digest()
                if not compare(prev, mac):
                    return None
                if k == kind:
                    keep(body)
        except TypeError:  # a NULL or non-bytes column: the careful path names it
            return None
        count, head_mac = head
        return picked if first + len(rows) == count and compare(prev, head_mac) else None


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

    Intact data takes :meth:`Signer.check_chain`'s tight loop; only a failure pays for
    the record-by-record diagnosis that names the reason.
    """
    rows = rows if isinstance(rows, list) else list(rows)
    out = _fast(signer, session_id, rows, first, prev)
    if out is not None:
        last = bytes(rows[-1][5]) if rows else prev
    else:
        out, last = _diagnose(signer, url, session_id, rows, first, prev)
    if head is not None:
        _check_head(url, session_id, first + len(out), last, head)
    return out


def _fast(
    signer: Signer, session_id: str, rows: list[Row], first: int, prev: bytes | None
) -> Chain | None:
    """:meth:`Signer.check_chain` plus the unsigned columns' consistency, or ``None``."""
    if not rows:
        return []
    if not all(map(_typed, rows)):
        return None
    if prev is None:
        prev = bytes(rows[0][4] or b"")
    links = [prev] + [m for *_, m in rows[:-1]]
    if not prev or [r[0] for r in rows] != list(range(first, first + len(rows))):
        return None
    if any(p != want for (*_, p, _m), want in zip(rows, links, strict=True)):
        return None
    slim = [(k, b, m) for _, k, _, b, _, m in rows]
    return slim if signer.check_chain(session_id, slim, first, prev) else None


_ROW_TYPES: Final[tuple[type | tuple[type, ...], ...]] = (
    int, str, int, str, (bytes, memoryview), (bytes, memoryview),
)  # fmt: skip
"""The types of a stored record's columns, as the store writes them."""
_COLUMNS: Final = ("rseq", "kind", "key", "body", "prev_mac", "mac")


def _typed(row: Row) -> bool:
    """Whether every column of ``row`` holds the type the store writes."""
    return len(row) == 6 and all(map(isinstance, row, _ROW_TYPES))


def _wrong_types(row: Row) -> str:
    """Which columns of ``row`` hold another type (a NULL, a MAC as text...)."""
    return ", ".join(
        f"{name} is {type(v).__name__}"
        for name, v, t in zip(_COLUMNS, row, _ROW_TYPES, strict=False)
        if not isinstance(v, t)
    )


def _diagnose(
    signer: Signer, url: str, session_id: str, rows: list[Row], first: int, prev: bytes | None
) -> tuple[Chain, bytes | None]:
    """Check record by record and raise naming the first bad one and why."""
    expect, r = prev, first
    out: Chain = []

    def bad(record: int, reason: str) -> SessionTampered:
        return SessionTampered(url, session_id, record, reason)

    for row in rows:
        if not _typed(row):
            at = row[0] if row and type(row[0]) is int else r
            raise bad(at, f"record edited in the database: {_wrong_types(row)}")
        rseq, kind, _key, body, prev_mac, mac = row
        if rseq != r:
            raise bad(r, "record is missing (the chain has a gap)")
        if not mac or not prev_mac:
            raise bad(r, "record is unsigned")
        if expect is not None and not hmac.compare_digest(bytes(prev_mac), expect):
            raise bad(r, "record does not link to the previous one (deleted or reordered)")
        if not hmac.compare_digest(signer.mac(bytes(prev_mac), body), bytes(mac)):
            raise bad(r, "MAC mismatch (record edited, or signed with another key)")
        if not any(body.endswith(record_suffix(session_id, r, kind, v)) for v in CODEC_VERSIONS):
            _refuse_newer(url, session_id, r, body)
            raise bad(r, "record belongs to another session or position")
        out.append((kind, body, bytes(mac)))
        expect, r = bytes(mac), r + 1
    return out, expect


def _refuse_newer(url: str, session_id: str, record: int, body: str) -> None:
    """Raise :class:`~engine.errors.StoreVersionUnsupported` if a signed ``body`` names
    a canonical JSON format newer than this code's (written by newer code)."""
    version = record_version(body)
    if version > CODEC_VERSION:
        raise StoreVersionUnsupported(
            url,
            f"session {session_id!r} record {record} is in canonical JSON format "
            f"{version}; this code reads formats up to {CODEC_VERSION} (upgrade turngraph)",
        )


def _check_head(
    url: str, session_id: str, end: int, last: bytes | None, head: tuple[int, bytes]
) -> None:
    """Raise unless a span ending before record ``end`` with MAC ``last`` is the head."""
    count, head_mac = head
    if end != count:
        raise SessionTampered(
            url,
            session_id,
            end,
            f"chain ends at record {end} but the session has {count} (truncated?)",
        )
    if last is not None and not hmac.compare_digest(last, head_mac):
        raise SessionTampered(
            url, session_id, end - 1, "last record does not match the session head"
        )
