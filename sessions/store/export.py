"""The signed, portable export document of a session, and its atomic file form.

::

    {"format": "turngraph.session", "schema": 2, "exported_at": 1763700000.0,
     "key_id": "3f2a...",                                           # since 0.x; optional
     "meta": {...}, "messages": [...], "turns": [...],
     "summaries": [{"upto": 41, "message": {...}}], "checkpoint": {...},   # optional
     "memory": [{"text": "...", "kind": "exchange", "meta": {...}}],      # optional
     "signature": "<hex HMAC-SHA256 over the canonical JSON of everything else>"}

:func:`parse_doc` checks size, signature, schema and shape *before* anything is written,
so an import either stores a whole verified session or nothing.  The store re-chains
the records with its own key.

``key_id`` names the key that signed the document (:func:`~sessions.store.signing.key_id`,
never the key), so a document from another machine is refused as
:class:`~engine.errors.ImportKeyMismatch` naming both keys, not as an edited file;
:func:`rekey` verifies it with that machine's key and re-signs it with the local one.
Documents written before key ids (schema 1, and schema 2 without ``key_id``) still
import; the field is covered by the signature like every other.

The schema names the canonical JSON format the signature covers: schema 2 (written
now) is format 2, schema 1 (written before it) format 1
(:func:`~sessions.store.codec.canonical_json_v1`), and both import.  The file itself is
the document's format-2 text and a newline.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from engine.messages import MemoryItem
from sessions.errors import (
    ExportPathRefused,
    ImportKeyMismatch,
    ImportRejected,
    InvalidSessionId,
)
from sessions.store.base import Checkpoint, Message, SessionMeta, TurnRecord
from sessions.store.codec import (
    KIND_MESSAGE,
    KIND_SUMMARY,
    KIND_TURN,
    ShapeError,
    canonical_json,
    canonical_json_v1,
    checkpoint_from_dict,
    checkpoint_to_dict,
    message_from_dict,
    message_to_dict,
    messages_from_dicts,
    meta_from_dict,
    meta_to_dict,
    turn_from_dict,
    turn_to_dict,
)
from sessions.store.signing import Signer

__all__ = [
    "FORMAT",
    "SCHEMA",
    "ImportLimits",
    "ImportPlan",
    "Parts",
    "already_exists",
    "build_doc",
    "chain_items",
    "parse_doc",
    "read_export",
    "rekey",
    "sign_doc",
    "write_export",
]

FORMAT: Final = "turngraph.session"
SCHEMA: Final = 2
_SIGNED_TEXT: Final[dict[int, Callable[[Any], str]]] = {1: canonical_json_v1, 2: canonical_json}
"""The canonical JSON each schema's signature covers (schema 2: format 2)."""
_TAG: Final = b"export"


def already_exists(url: str, session_id: str) -> ImportRejected:
    """The refusal of an import onto a taken id, naming both ways to replace it."""
    return ImportRejected(
        url, f"session {session_id!r} already exists (replace it with --replace / replace=True)"
    )


@dataclass(frozen=True, slots=True)
class ImportLimits:
    """What an import accepts at most (a hostile or runaway document is refused)."""

    max_messages: int = 200_000
    max_turns: int = 200_000
    max_bytes: int = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ImportPlan:
    """A verified export, decoded into records, ready to be written."""

    meta: SessionMeta
    messages: tuple[Message, ...]
    turns: tuple[TurnRecord, ...]
    summaries: tuple[tuple[int, Message], ...]
    checkpoint: Checkpoint | None
    memory: tuple[MemoryItem, ...] = ()
    """The session's recall memory, oldest first (documents without ``memory``: none)."""


def build_doc(
    meta: SessionMeta,
    messages: Sequence[Message],
    turns: Sequence[TurnRecord],
    summaries: Sequence[tuple[int, Message]],
    checkpoint: Checkpoint | None,
    signer: Signer,
    memory: Sequence[MemoryItem] = (),
) -> dict[str, Any]:
    """The signed export document of a session's records (and recall ``memory``)."""
    return sign_doc(
        meta,
        Parts(
            [message_to_dict(m) for m in messages],
            [turn_to_dict(t) for t in turns],
            [{"upto": u, "message": message_to_dict(m)} for u, m in summaries],
        ),
        checkpoint,
        signer,
        memory,
    )


@dataclass(frozen=True, slots=True)
class Parts:
    """A session's records as the JSON-ready dicts an export holds."""

    messages: list[dict[str, Any]]
    turns: list[dict[str, Any]]
    summaries: list[dict[str, Any]]


def sign_doc(
    meta: SessionMeta,
    parts: Parts,
    checkpoint: Checkpoint | None,
    signer: Signer,
    memory: Sequence[MemoryItem] = (),
) -> dict[str, Any]:
    """The signed export document of records already in dict form, and the session's
    recall ``memory`` (a ``memory`` list only when there is any, so a document of a
    session without memory reads in code older than it)."""
    doc: dict[str, Any] = {
        "format": FORMAT,
        "schema": SCHEMA,
        "exported_at": time.time(),
        "key_id": signer.key_id,
        "meta": meta_to_dict(meta),
        "messages": parts.messages,
        "turns": parts.turns,
        "summaries": parts.summaries,
    }
    if checkpoint is not None:
        doc["checkpoint"] = checkpoint_to_dict(checkpoint)
    if memory:
        doc["memory"] = [memory_to_dict(item) for item in memory]
    doc["signature"] = signer.tagged(_TAG, canonical_json(doc)).hex()
    return doc


def parse_doc(doc: Any, signer: Signer, limits: ImportLimits, url: str) -> ImportPlan:
    """Check an export document completely; :class:`~engine.errors.ImportRejected`."""

    def reject(reason: str) -> ImportRejected:
        return ImportRejected(url, f"import rejected: {reason}")

    try:
        _check_signed(doc, signer, limits, url, reject)
        return _decode(doc)
    except InvalidSessionId as exc:
        raise reject(f"bad session id: {exc.reason}") from None
    except ShapeError as exc:
        raise reject(str(exc)) from None
    except RecursionError:  # a hostile document nested past what Python can walk
        raise reject("the document nests too deeply") from None


def _check_signed(
    doc: Any, signer: Signer, limits: ImportLimits, url: str, reject: Callable[[str], Exception]
) -> None:
    """Format, schema, sizes and signature (under ``signer``) of an export document."""
    if not isinstance(doc, Mapping):
        raise reject("the document is not a JSON object")
    if doc.get("format") != FORMAT:
        raise reject(f"format is {doc.get('format')!r}, expected {FORMAT!r}")
    schema = doc.get("schema")
    if type(schema) is not int or schema not in _SIGNED_TEXT:
        raise reject(f"schema {schema!r} is not supported (this code reads 1 to {SCHEMA})")
    kid = doc.get("key_id")
    if kid is not None and not (
        isinstance(kid, str) and len(kid) == 16 and all(c in "0123456789abcdef" for c in kid)
    ):
        raise reject("key_id must be 16 lowercase hex digits")
    _check_sizes(doc, limits, reject)
    _check_signature(doc, _SIGNED_TEXT[schema], signer, limits, url, reject)


def rekey(
    doc: Any, source: Signer, target: Signer, url: str, limits: ImportLimits | None = None
) -> dict[str, Any]:
    """``doc`` verified under ``source`` (the key it was signed with, e.g. from another
    machine's key file) and signed again under ``target`` (the local store's key).

    :class:`~engine.errors.ImportKeyMismatch` if ``doc`` names a key other than
    ``source``; :class:`~engine.errors.ImportRejected` if it fails verification.  The
    records are unchanged; only ``key_id`` and ``signature`` are replaced.
    """
    limits = limits or ImportLimits()

    def reject(reason: str) -> ImportRejected:
        return ImportRejected(url, f"import rejected: {reason}")

    try:
        _check_signed(doc, source, limits, url, reject)
    except RecursionError:
        raise reject("the document nests too deeply") from None
    rest = {k: v for k, v in doc.items() if k != "signature"}
    rest["key_id"] = target.key_id
    # Re-signed in the schema's own canonical format, so format-1 documents stay valid.
    rest["signature"] = target.tagged(_TAG, _SIGNED_TEXT[rest["schema"]](rest)).hex()
    return rest


def _check_sizes(doc: Mapping[str, Any], limits: ImportLimits, reject: Any) -> None:
    for key, limit in (
        ("messages", limits.max_messages),
        ("turns", limits.max_turns),
        ("summaries", limits.max_messages),
    ):
        items = doc.get(key)
        if not isinstance(items, list):
            raise reject(f"{key!r} must be a list")
        if len(items) > limit:
            raise reject(f"{len(items)} {key} exceed the limit of {limit}")
    memory = doc.get("memory", [])
    if not isinstance(memory, list):
        raise reject("'memory' must be a list")
    if len(memory) > limits.max_messages:
        raise reject(f"{len(memory)} memory items exceed the limit of {limits.max_messages}")


def _check_signature(
    doc: Mapping[str, Any],
    signed_text: Callable[[Any], str],
    signer: Signer,
    limits: ImportLimits,
    url: str,
    reject: Any,
) -> None:
    sig = doc.get("signature")
    if not isinstance(sig, str):
        raise reject("the document is not signed")
    rest = {k: v for k, v in doc.items() if k != "signature"}
    try:
        text = signed_text(rest)
    except (TypeError, ValueError) as exc:
        raise reject(f"the document is not plain JSON: {exc}") from None
    if len(text.encode()) > limits.max_bytes:
        raise reject(f"the document exceeds the limit of {limits.max_bytes} bytes")
    if hmac.compare_digest(signer.tagged(_TAG, text).hex(), sig):
        return
    kid = doc.get("key_id")
    if kid is None:  # written before key ids: the two causes cannot be told apart
        raise reject("bad signature (document edited, or signed with another key)")
    if kid != signer.key_id:
        raise ImportKeyMismatch(
            url, kid, signer.key_id, "import it with --key-file naming the exporting key"
        )
    raise reject(f"bad signature: the document was edited after key {kid} signed it")


def _decode(doc: Mapping[str, Any]) -> ImportPlan:
    meta = meta_from_dict(doc.get("meta"))
    messages = messages_from_dicts(doc["messages"])
    turns = tuple(turn_from_dict(t) for t in doc["turns"])
    summaries = tuple(_summary(s) for s in doc["summaries"])
    cp = doc.get("checkpoint")
    checkpoint = None if cp is None else checkpoint_from_dict(cp)
    if [m.seq for m in messages] != list(range(len(messages))):
        raise ShapeError("message seq must run 0, 1, 2... without gaps")
    if [t.turn for t in turns] != list(range(1, len(turns) + 1)):
        raise ShapeError("turns must run 1, 2, 3... without gaps")
    if meta.message_count != len(messages) or meta.turn_count != len(turns):
        raise ShapeError("meta counters do not match the records")
    if any(not -1 <= u < len(messages) for u, _ in summaries):
        raise ShapeError("a summary covers messages that do not exist")
    if meta.summary_upto != (summaries[-1][0] if summaries else -1):
        raise ShapeError("meta summary_upto does not match the last summary")
    memory = tuple(memory_from_dict(m) for m in doc.get("memory", ()))
    return ImportPlan(meta, messages, turns, summaries, checkpoint, memory)


def memory_to_dict(item: MemoryItem) -> dict[str, Any]:
    """A recall memory item as an export holds it (its score is not kept)."""
    return {"text": item.text, "kind": item.kind, "meta": dict(item.meta)}


def memory_from_dict(value: Any) -> MemoryItem:
    """An exported memory item back; :class:`ShapeError` if it is not one."""
    if (
        not isinstance(value, dict)
        or not isinstance(value.get("text"), str)
        or not isinstance(value.get("kind"), str)
        or not isinstance(value.get("meta"), dict)
    ):
        raise ShapeError("a memory item must be {'text': str, 'kind': str, 'meta': {...}}")
    return MemoryItem(value["text"], value["kind"], 0.0, value["meta"])


def _summary(value: Any) -> tuple[int, Message]:
    if not isinstance(value, dict) or type(value.get("upto")) is not int:
        raise ShapeError("a summary must be {'upto': int, 'message': {...}}")
    return value["upto"], message_from_dict(value.get("message"))


def chain_items(plan: ImportPlan) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """The plan's records as ``(kind, key, data)`` in chain order.

    Messages keep ``seq`` order (loads rely on it); a turn record follows the messages
    of its turn, a summary follows the last message it covers.
    """
    turns, sums = list(plan.turns), list(plan.summaries)
    ti = si = 0
    for m in plan.messages:
        while ti < len(turns) and 0 < turns[ti].turn < m.turn:
            yield KIND_TURN, turns[ti].turn, turn_to_dict(turns[ti])
            ti += 1
        while si < len(sums) and sums[si][0] < m.seq:
            yield KIND_SUMMARY, -1, {"upto": sums[si][0], "message": message_to_dict(sums[si][1])}
            si += 1
        yield KIND_MESSAGE, m.seq, message_to_dict(m)
    for t in turns[ti:]:
        yield KIND_TURN, t.turn, turn_to_dict(t)
    for upto, s in sums[si:]:
        yield KIND_SUMMARY, -1, {"upto": upto, "message": message_to_dict(s)}


# --------------------------------------------------------------------------- files


def write_export(path: str | os.PathLike[str], doc: Mapping[str, Any]) -> Path:
    """Write ``doc`` to ``path`` atomically, as canonical JSON; returns the path.

    ``TypeError`` / ``ValueError`` if ``doc`` is not plain JSON (nothing is written).
    Unique temp file in the same directory, write, flush, fsync, ``os.replace``, then
    fsync the directory: a crash leaves the old file or the new one, never half of one.
    """
    target = Path(path)
    data = canonical_json(doc) + "\n"
    _check_replaceable(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _check_replaceable(target)  # again, just before: the name may have changed since
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return target


def _check_replaceable(target: Path) -> None:
    """Refuse to replace anything but a regular file (``-o /dev/null`` as root must not
    swap the system's device node for a file; a symlink or folder is not ours either)."""
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise ExportPathRefused(str(target), f"refusing to replace it: it is {kind}")


_KINDS: Final = {
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFDIR: "a directory",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a named pipe",
    stat.S_IFSOCK: "a socket",
}


_MAX_FILE: Final = ImportLimits().max_bytes


def read_export(path: str | os.PathLike[str], *, max_bytes: int = _MAX_FILE) -> dict[str, Any]:
    """Read an export file; :class:`~engine.errors.ImportRejected` if it is not one.

    Refuses a missing, oversized, binary, truncated or non-JSON file with a one-line
    reason naming the path.  The signature is checked later, by ``import_``.
    """
    where = str(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError as exc:
        raise ImportRejected(where, f"cannot read export file: {exc.strerror}") from None
    if len(raw) > max_bytes:
        raise ImportRejected(where, f"export file exceeds {max_bytes} bytes")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise ImportRejected(where, "export file nests too deeply to be an export") from None
    except UnicodeDecodeError:
        raise ImportRejected(where, "export file is binary, not UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise ImportRejected(
            where,
            f"export file is not valid JSON (truncated?): {exc.msg} at "
            f"line {exc.lineno} column {exc.colno}",
        ) from None
    if not isinstance(doc, dict):
        raise ImportRejected(where, "export file does not hold a JSON object")
    return doc
