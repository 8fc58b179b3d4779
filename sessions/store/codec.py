r"""Canonical JSON of store records, and the session-id rule every layer shares.

A record's *canonical JSON* is what the HMAC chain signs and what the durable backends
store verbatim, so verifying a stored record never re-serialises it.  One encoder
defines it, :func:`canonical_json`; everything else that writes signed text (the
record framing, :func:`message_json`, :func:`turn_json`, the ``json_*`` pieces a
session row's signed text is assembled from) produces the bytes that encoder would.

**Format 2** (:data:`CODEC_VERSION`), written by this code, is msgspec's JSON with keys
sorted:

* no whitespace; UTF-8; strings escaped only where JSON must (``"``, ``\``, and
  characters below U+0020 as ``\b \f \n \r \t`` or ``\u00XX``): non-ASCII as is;
* object keys are ``str`` and sorted by code point (the order of their UTF-8 bytes);
  any other key is a ``TypeError``, never silently turned into a string;
* values are ``dict`` (any ``Mapping``), ``list`` and ``tuple`` (arrays), ``str``,
  ``int`` of any size, finite ``float``, ``bool`` and ``None``; a subclass of ``str``,
  ``int`` or ``float`` is written as its base value; anything else is a ``TypeError``,
  NaN and infinities a ``ValueError`` (so are nesting past the recursion limit and a
  value that contains itself);
* a float is written in the fewest digits that read back to it: ``0.1``, ``1.0``,
  ``-0.0``, ``0.00001``, ``1e16``, ``1e-7``, ``1.5e300`` (fixed notation from 1e-5 up
  to 1e16, else an exponent with no ``+`` and no leading zero);
* decoding a text and encoding the result again gives the same text.

Each chain record's body names the format that wrote it (``"v":2``, see
:func:`record_body`), and an export names it by its schema, so a later change of the
encoder is a new version, never a silent break.  **Format 1**, written before, was the
standard library's encoder (``1e-05``, ``1e+16``; integer keys written as strings in
numeric order); its record bodies carry no ``"v"`` and still verify, since they are
stored verbatim; :func:`canonical_json_v1` remains only to check a signature over text
rebuilt from format-1 data (a format-1 export, a session row last written by it).

The ``*_to_dict`` / ``*_from_dict`` pairs are the one mapping between the frozen
records of :mod:`sessions.store.base` and JSON; the ``from`` side checks shape strictly
and raises :class:`ShapeError`, which callers translate into the error that fits
(``ImportRejected`` for an export, ``SessionTampered`` for a stored record).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from operator import itemgetter
from types import MappingProxyType
from typing import Any, AnyStr, Final, NamedTuple, get_args

import msgspec
from msgspec.structs import force_setattr

from engine.messages import MemoryItem
from sessions.errors import InvalidSessionId, Unstorable
from sessions.store.base import (
    EMPTY_META,
    Checkpoint,
    Message,
    Role,
    SessionMeta,
    SessionType,
    TurnCommit,
    TurnRecord,
)

__all__ = [
    "CODEC_VERSION",
    "CODEC_VERSIONS",
    "KIND_MESSAGE",
    "KIND_SUMMARY",
    "KIND_TURN",
    "CommitJson",
    "ShapeError",
    "canonical_json",
    "canonical_json_v1",
    "check_commit",
    "checkpoint_from_dict",
    "checkpoint_to_dict",
    "commit_json",
    "json_checked",
    "json_float",
    "json_int",
    "json_str",
    "message_from_dict",
    "message_json",
    "message_to_dict",
    "messages_from_dicts",
    "messages_of_bodies",
    "meta_from_dict",
    "meta_to_dict",
    "record_body",
    "record_body_json",
    "record_data",
    "record_datas",
    "record_suffix",
    "record_version",
    "turn_from_dict",
    "turn_json",
    "turn_to_dict",
    "validate_session_id",
]

CODEC_VERSION: Final = 2
"""The canonical JSON format this code writes (see the module docstring)."""
CODEC_VERSIONS: Final = (1, 2)
"""Every format this code verifies, oldest first."""

KIND_MESSAGE: Final = "message"
KIND_TURN: Final = "turn"
KIND_SUMMARY: Final = "summary"
_ROLES: Final = frozenset(get_args(Role))
_TYPES: Final = frozenset(get_args(SessionType))
_ID_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,128}")


class ShapeError(ValueError):
    """A JSON value does not have the shape of the record it claims to be."""


def validate_session_id(session_id: object) -> str:
    """Return ``session_id`` if it is safe as a key and a file name, else raise.

    Safe means 1..128 characters from ``[A-Za-z0-9._-]``, not starting with ``.``
    (so never ``..``, a hidden file, or a path), raising
    :class:`~engine.errors.InvalidSessionId` otherwise.  A ``str`` subclass is
    returned as its plain value.
    """
    if type(session_id) is not str:
        if not isinstance(session_id, str):
            raise InvalidSessionId(repr(session_id), "a session id must be a string")
        session_id = str.__str__(session_id)  # a subclass: its plain value, one key
    if not _ID_RE.fullmatch(session_id) or session_id.startswith("."):
        raise InvalidSessionId(
            session_id, "must be 1-128 characters of [A-Za-z0-9._-], not starting with '.'"
        )
    return session_id


# --------------------------------------------------------------------------- format 2


def _base_value(o: Any) -> Any:
    """msgspec's hook for what it does not write itself: the read-only mappings every
    loaded record holds, and subclasses of ``str`` / ``int`` / ``float``, written as
    their base value (the base type's own conversion: a subclass may override
    ``__str__``).  :func:`_check_plain` lets nothing else reach the encoder."""
    if isinstance(o, Mapping):
        return dict(o)
    if isinstance(o, str):
        return str.__str__(o)
    if isinstance(o, int):
        return int.__int__(o)
    if isinstance(o, float):
        return float.__float__(o)
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


_ENCODE: Final = msgspec.json.Encoder(order="sorted", enc_hook=_base_value).encode
_LEAF: Final = frozenset({str, int, bool, type(None)})


def _check_plain(value: Any) -> None:
    """Raise unless ``value`` is in format 2's domain (see the module docstring).

    msgspec also writes sets (in hash order: not canonical), bytes, dates, UUIDs,
    decimals, plain enums and dataclasses, and writes NaN as ``null``; format 2 refuses all
    of them, as format 1 did, so this walk runs before every general encoding.  Exact
    ``dict``, ``list`` and leaf types are tested first: they are nearly all it meets.
    """
    kind = type(value)
    if kind in _LEAF:
        return
    if kind is float or isinstance(value, float):
        if value - value != 0.0:  # NaN and infinities (any finite x - x is 0.0)
            raise ValueError(f"Out of range float values are not JSON compliant: {value!r}")
        return
    if kind is dict or isinstance(value, Mapping):
        leaf = _LEAF
        for key, item in value.items():
            if type(key) is not str and not isinstance(key, str):
                raise TypeError(f"keys must be str, not {type(key).__name__}")
            kind = type(item)
            if kind in leaf or (kind is float and item - item == 0.0):
                continue
            _check_plain(item)
        return
    if kind is list or kind is tuple or isinstance(value, list | tuple):
        _check_items(value)
        return
    if not isinstance(value, str | int):
        raise TypeError(f"Object of type {kind.__name__} is not JSON serializable")


def _check_items(items: Iterable[Any]) -> None:
    """:func:`_check_plain` of each item; leaves and finite floats pass without a call
    (the dict branch above inlines the same test)."""
    leaf = _LEAF
    for item in items:
        kind = type(item)
        if kind in leaf or (kind is float and item - item == 0.0):
            continue
        _check_plain(item)


def canonical_json(value: Any) -> str:
    """The one JSON text of ``value`` that is signed: canonical JSON format 2.

    Raises ``TypeError`` for a value outside the format's domain (a non-``str`` key, a
    set, bytes, any other object) and ``ValueError`` for NaN, infinities, a lone
    surrogate, or nesting too deep (a value that contains itself).
    """
    try:
        _check_plain(value)
        return _ENCODE(value).decode()
    except RecursionError:
        raise ValueError("value nests too deeply (or contains itself)") from None


def json_checked(value: Any) -> str:
    """:func:`canonical_json` of a value its caller has shown to be in the format's
    domain by exact type checks (``dict`` with ``str`` keys, ``str``, exact ``int``,
    finite exact ``float``): the same text without the walk."""
    return _ENCODE(value).decode()


def json_str(value: str) -> str:
    """A ``str`` as canonical JSON (the text :func:`canonical_json` writes for it)."""
    return _ENCODE(value).decode()


def json_int(value: object) -> str | None:
    """An exact ``int`` as canonical JSON; ``None`` for anything else (``bool``,
    subclasses): the caller takes the general path."""
    return _ENCODE(value).decode() if type(value) is int else None


def json_float(value: object) -> str | None:
    """A finite exact ``float`` as canonical JSON; ``None`` for anything else, so NaN
    and infinities still raise on the general path."""
    if type(value) is float and value - value == 0.0:
        return _ENCODE(value).decode()
    return None


class _FormatOne(json.JSONEncoder):
    """Format 1: the standard library's encoder, read-only mappings as objects."""

    def default(self, o: Any) -> Any:
        if isinstance(o, Mapping):
            return dict(o)
        return super().default(o)


_FORMAT_ONE: Final = _FormatOne(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def canonical_json_v1(value: Any) -> str:
    """``value`` as canonical JSON format 1, to check a signature made before format 2.

    Never used to write: a signature over format-1 text is checked against the text
    rebuilt from the data it signed (a format-1 export, a session row last written by
    format-1 code); what verifies is then written again in format 2.
    """
    return _FORMAT_ONE.encode(value)


def record_suffix(session_id: str, rseq: int, kind: str, version: int = CODEC_VERSION) -> str:
    """How the body of record ``rseq`` of ``kind`` in ``session_id`` must end, in
    canonical JSON format ``version`` (format 1 had no ``"v"``).

    Checking this suffix of a MAC-verified body proves the record sits where it was
    written (session, position, kind) without parsing it.
    """
    head = f',"kind":"{kind}","rseq":{rseq},"session":"{session_id}"'
    return head + "}" if version == 1 else f'{head},"v":{version}}}'


def record_body(session_id: str, rseq: int, kind: str, data: Mapping[str, Any]) -> str:
    """The signed body of chain record ``rseq``: binds it to its session and position.

    It equals ``canonical_json({"data": data, "kind": kind, "rseq": rseq, "session":
    session_id, "v": CODEC_VERSION})`` (keys sort in that order; a valid id and a kind
    need no escaping), so every body names the format that wrote it.
    """
    return record_body_json(session_id, rseq, kind, canonical_json(data))


def record_body_json(session_id: str, rseq: int, kind: str, data_json: str) -> str:
    """:func:`record_body` of data already written as canonical JSON (``data_json``)."""
    return '{"data":' + data_json + record_suffix(session_id, rseq, kind)


_VERSION_TAIL: Final = re.compile(r',"v":(\d{1,9})\}\Z')


def record_version(body: str) -> int:
    """The canonical JSON format a record body names (1 if it names none)."""
    found = _VERSION_TAIL.search(body)
    return int(found.group(1)) if found else 1


_DATA_HEAD: Final = '{"data":'
_SUFFIX_HEAD: Final = ',"kind":"'
_RAW_HEAD: Final = _DATA_HEAD.encode()
_RAW_SUFFIX: Final = _SUFFIX_HEAD.encode()


_DECODE: Final = msgspec.json.Decoder().decode


def json_loads(text: str | bytes) -> Any:
    """``json.loads(text)``, twice as fast on a large document (a load's joined records).

    msgspec parses what the standard parser accepts to the same values (ints of any
    size, correctly rounded floats, the last of duplicate keys), except what it
    refuses: NaN, infinities, floats out of range, lone surrogates, and bytes in
    another encoding than plain UTF-8 (a BOM, UTF-16, UTF-32), which the standard
    parser then reads (canonical JSON never holds them).  Tests compare the two.
    Raises ``ValueError`` (``UnicodeDecodeError`` included).
    """
    try:
        return _DECODE(text)
    except (msgspec.DecodeError, UnicodeError):  # the latter: a lone surrogate
        return json.loads(text)  # bytes too: its own encoding detection, BOM and all


def record_datas(bodies: list[str]) -> list[Any]:
    """The ``data`` values of many verified record bodies, parsed in one call.

    A body is ``{"data":`` + data + a suffix without ``,"kind":"`` after its start, so
    the data text is a slice; joining the slices into one JSON array costs one parser
    call instead of one per record (a third of the time for 10,000 messages).  If
    anything does not fit, each body is parsed alone so the error names the problem.
    """
    parts = _data_slices(bodies, _DATA_HEAD, _SUFFIX_HEAD)
    if parts is not None:
        try:
            out = json_loads("[" + ",".join(parts) + "]")
        except ValueError:
            out = None
        if isinstance(out, list) and len(out) == len(bodies):
            return out
    return [record_data(body) for body in bodies]


def _data_slices(bodies: list[AnyStr], head: AnyStr, suffix: AnyStr) -> list[AnyStr] | None:
    """Each body's ``data`` text: what lies between ``head`` and the last ``suffix``
    (str or UTF-8 bodies alike); ``None`` if a body does not start with ``head``."""
    start = len(head)
    parts = []
    for body in bodies:
        if not body.startswith(head):
            return None
        parts.append(body[start : body.rfind(suffix)])
    return parts


_MESSAGES: Final = msgspec.json.Decoder(list[Message])


def messages_of_bodies(bodies: list[bytes], first_seq: int) -> tuple[Message, ...] | None:
    """The messages of verified UTF-8 message-record bodies, which must be numbered
    ``first_seq...``; ``None`` if anything does not fit (the caller then parses them
    the careful way, which says what is wrong).

    The data slices are joined into one JSON array and decoded by msgspec straight
    into :class:`Message` structs: no dict per message, much cheaper than parsing
    dicts and checking them.  msgspec checks
    what :func:`messages_from_dicts` checks (``seq`` and ``turn`` ints, ``ts`` a
    number made float, ``content`` a string, ``role`` one of the roles, unknown keys
    ignored); ``seq`` continuity, ``turn >= 0`` and ``meta`` (made read-only, like
    every loaded message's) are checked here.  Tests compare it with the careful path.
    """
    parts = _data_slices(bodies, _RAW_HEAD, _RAW_SUFFIX)
    if parts is None:
        return None
    try:
        messages = _MESSAGES.decode(b"[" + b",".join(parts) + b"]")
    except msgspec.DecodeError:  # malformed, or a field of the wrong type
        return None
    empty, seq = EMPTY_META, first_seq
    try:
        for m in messages:
            if m.seq != seq or m.turn < 0:
                return None
            # Decoded as a fresh dict: loaded messages hold read-only metadata.
            force_setattr(m, "meta", _frozen(m.meta, "meta") if m.meta else empty)
            seq += 1
    except ShapeError:  # meta not an object
        return None
    return tuple(messages)


def record_data(body: str) -> dict[str, Any]:
    """The ``data`` object of a stored record body (:class:`ShapeError`)."""
    try:
        obj = json_loads(body)
    except (TypeError, ValueError) as exc:
        raise ShapeError(f"record body is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ShapeError("record body is not an object")
    return _dict(obj.get("data"), "data")


# --------------------------------------------------------------------------- checks


def _dict(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ShapeError(f"{name} must be an object")
    return value


def _int(d: Mapping[str, Any], key: str, minimum: int = 0) -> int:
    v = d.get(key)
    if type(v) is not int or v < minimum:
        raise ShapeError(f"{key!r} must be an integer >= {minimum}")
    return v


def _num(d: Mapping[str, Any], key: str) -> float:
    v = d.get(key)
    if not isinstance(v, int | float) or isinstance(v, bool):
        raise ShapeError(f"{key!r} must be a number")
    return float(v)


def _str(d: Mapping[str, Any], key: str, *, optional: bool = False) -> Any:
    v = d.get(key)
    if v is None and optional:
        return None
    if not isinstance(v, str):
        raise ShapeError(f"{key!r} must be a string")
    return v


def _frozen(value: Any, name: str) -> Mapping[str, Any]:
    return MappingProxyType(_dict(value, name))


def _trace(value: Any) -> tuple[Mapping[str, Any], ...]:
    if not isinstance(value, list):
        raise ShapeError("'trace' must be a list")
    return tuple(_frozen(step, "trace step") for step in value)


# --------------------------------------------------------------------------- records


def message_to_dict(m: Message) -> dict[str, Any]:
    """A JSON-ready dict of a message."""
    return {
        "seq": m.seq,
        "role": m.role,
        "content": m.content,
        "turn": m.turn,
        "ts": m.ts,
        "meta": dict(m.meta),
    }


def message_json(m: Message) -> str:
    """``canonical_json(message_to_dict(m))``, checked in O(1) (a turn commit writes two).

    A message of the exact types one normally holds, with no metadata, is in the
    format's domain by those checks alone, so the encoder writes it without the walk
    of :func:`canonical_json`; anything else takes that walk (same text, or the same
    error).
    """
    d = message_to_dict(m)
    ts = m.ts
    if (
        m.meta is EMPTY_META
        and type(m.seq) is int
        and type(m.turn) is int
        and type(ts) is float
        and ts - ts == 0.0
        and type(m.content) is str
        and type(m.role) is str
    ):
        return _ENCODE(d).decode()
    return canonical_json(d)


_MESSAGE_FIELDS: Final = ("seq", "role", "content", "turn", "ts", "meta")
_FIELDS_OF: Final = itemgetter(*_MESSAGE_FIELDS)


def message_from_dict(d: Any) -> Message:
    """The message a :func:`message_to_dict` dict describes (:class:`ShapeError`)."""
    [m] = messages_from_dicts([d])
    return m


def messages_from_dicts(ds: Iterable[Any]) -> tuple[Message, ...]:
    """:func:`message_from_dict` of each of ``ds`` (a load decodes thousands at once).

    What the store wrote itself (exact types, empty meta) takes one inline check;
    anything else goes through the field-by-field checks that say what is wrong.
    """
    fields_of, roles, empty = _FIELDS_OF, _ROLES, EMPTY_META
    out: list[Message] = []
    append = out.append
    for d in ds:
        try:
            seq, role, content, turn, ts, meta = fields_of(d)
        except (KeyError, TypeError):
            append(_checked_message(d))
            continue
        if not (
            type(seq) is int
            and type(turn) is int
            and type(ts) is float
            and type(content) is str
            and type(role) is str
            and type(meta) is dict
            and not meta
            and seq >= 0
            and turn >= 0
            and role in roles
        ):
            append(_checked_message(d))
            continue
        append(Message(seq, role, content, turn, ts, empty))  # type: ignore[arg-type]  # role checked above
    return tuple(out)


def _checked_message(d: Any) -> Message:
    d = _dict(d, "message")
    role = d.get("role")
    if not isinstance(d.get("role"), str) or role not in _ROLES:
        raise ShapeError(f"'role' must be one of {sorted(_ROLES)}")
    return Message(
        seq=_int(d, "seq"),
        role=role,
        content=_str(d, "content"),
        turn=_int(d, "turn"),
        ts=_num(d, "ts"),
        meta=_frozen(d.get("meta", {}), "meta"),
    )


def turn_to_dict(t: TurnRecord) -> dict[str, Any]:
    """A JSON-ready dict of a turn record."""
    return {
        "turn": t.turn,
        "status": t.status,
        "trace_id": t.trace_id,
        "graph_hash": t.graph_hash,
        "trace": [dict(step) for step in t.trace],
        "ts": t.ts,
        "error": t.error,
    }


def turn_json(t: TurnRecord) -> str:
    """``canonical_json(turn_to_dict(t))``, without copying each trace step first.

    The encoder writes any mapping as an object, so the steps go to it as they are.
    A record of the types the engine builds (:func:`_plain_turn`) is in the format's
    domain by that one flat check, and skips the general walk of :func:`canonical_json`
    (same text: the walk would pass it).
    """
    d = {
        "turn": t.turn,
        "status": t.status,
        "trace_id": t.trace_id,
        "graph_hash": t.graph_hash,
        "trace": t.trace,
        "ts": t.ts,
        "error": t.error,
    }
    return json_checked(d) if _plain_turn(t) else canonical_json(d)


def _plain_turn(t: TurnRecord) -> bool:
    """Whether ``t`` has exact leaf types, a finite ``ts`` and a trace of flat ``dict``
    steps (``str`` keys; values ``str``, ``int``, ``bool``, ``None``, finite ``float``
    or a ``list`` of ``str``): what the engine's steps are.  ``False`` sends the
    record through :func:`_check_plain` (which accepts more, or names what is wrong)."""
    ts = t.ts
    if not (
        type(t.turn) is int
        and type(ts) is float
        and ts - ts == 0.0
        and type(t.status) is str
        and type(t.trace_id) is str
        and type(t.graph_hash) is str
        and (t.error is None or type(t.error) is str)
        and type(t.trace) is tuple
    ):
        return False
    for step in t.trace:
        if type(step) is not dict:
            return False
        for key, value in step.items():
            kind = type(value)
            if type(key) is not str:
                return False
            if kind is str or kind is int or kind is bool or value is None:
                continue
            if kind is float:
                if value - value != 0.0:  # NaN and infinities
                    return False
            elif kind is list:
                for item in value:
                    if type(item) is not str:
                        return False
            else:
                return False
    return True


class CommitJson(NamedTuple):
    """A turn commit as the canonical JSON a store writes: ``records`` are
    ``(kind, key, data JSON)`` in chain order (messages, then the turn record);
    ``working_memory`` and ``goals`` are ``None`` when the commit leaves them."""

    records: list[tuple[str, int, str]]
    working_memory: str | None
    goals: str | None


def commit_json(commit: TurnCommit, url: str, session_id: str) -> CommitJson:
    """Encode everything ``commit`` would store, or raise
    :class:`~sessions.errors.Unstorable` naming the part that cannot be stored.

    Every store runs this before it writes anything (the memory store too, so a value
    is refused the same way everywhere): a commit that passes is readable by a later
    load.  The cognitive mode is stored as plain text, so only its encoding is checked.
    """
    what = "a message"
    try:
        records = [(KIND_MESSAGE, m.seq, message_json(m)) for m in commit.messages]
        what = "the turn's trace"
        records.append((KIND_TURN, commit.record.turn, turn_json(commit.record)))
        what = "working memory"
        wm = commit.working_memory
        wm_json = None if wm is None else canonical_json(wm)
        what = "goals"
        goals = commit.goals
        goals_json = None if goals is None else canonical_json(list(goals))
        mode = commit.cognitive_mode
        if mode is not None and not mode.isascii():
            what = "the cognitive mode"
            mode.encode()
        if commit.memory:
            what = "recall memory"
            _check_memory(commit.memory)
    except (TypeError, ValueError, RecursionError) as exc:
        raise Unstorable(url, session_id, what, str(exc)) from exc
    return CommitJson(records, wm_json, goals_json)


def check_commit(commit: TurnCommit, url: str, session_id: str) -> None:
    """Raise :class:`~sessions.errors.Unstorable` exactly when :func:`commit_json` would,
    without writing the JSON (the memory store keeps objects, not text).

    What the engine and the session build has fixed types (the trace's flat steps, a
    message without metadata): for those only the strings' encoding is checked, and
    ASCII needs no check at all.  Anything else (working memory, goals, message
    metadata, a step of another shape) takes :func:`commit_json`'s own encoding.
    """
    try:
        if (
            all(map(_plain_message, commit.messages))
            and all(map(_flat_step, commit.record.trace))
            and _flat_step(_turn_strings(commit.record))
        ):
            wm, goals = commit.working_memory, commit.goals
            if wm is not None:
                _check_plain(wm)
                _ENCODE(wm)  # the encoder refuses lone surrogates
            if goals is not None:
                _check_plain(goals)
                _ENCODE(goals)
            if commit.memory:
                _check_memory(commit.memory)
            mode = commit.cognitive_mode
            if mode is None or mode.isascii():
                return
    except (TypeError, ValueError, RecursionError):
        pass  # commit_json says what is wrong
    commit_json(commit, url, session_id)


def _check_memory(items: tuple[MemoryItem, ...]) -> None:
    """Raise ``TypeError`` or ``ValueError`` if an item of recall memory cannot be
    stored as :func:`~sessions.store.recall.row_of` stores it: a text or kind that is
    not a ``str`` or holds a lone surrogate, meta that is not JSON."""
    for item in items:
        for text in (item.text, item.kind):
            if type(text) is not str:
                raise TypeError(f"{type(text).__name__} where text was expected")
            if not text.isascii():
                text.encode()  # a lone surrogate cannot be stored (or bound by a driver)
        if item.meta:
            json.dumps(dict(item.meta), separators=(",", ":"))


def _turn_strings(t: TurnRecord) -> dict[str, Any]:
    return {"status": t.status, "trace_id": t.trace_id, "error": t.error}


def _plain_message(m: Message) -> bool:
    """A message of exact types without metadata whose content encodes."""
    content = m.content
    return (
        m.meta is EMPTY_META
        and type(content) is str
        and type(m.role) is str
        and (content.isascii() or _encodes(content))
    )


def _flat_step(step: Mapping[str, Any]) -> bool:
    """A flat mapping of ``str`` keys to leaves (finite floats, encodable strings, lists
    of encodable strings)."""
    for key, value in step.items():
        kind = type(value)
        if type(key) is not str or not key.isascii():
            return False
        if kind is str:
            if not value.isascii() and not _encodes(value):
                return False
        elif kind is float:
            if value - value != 0.0:
                return False
        elif kind is list:  # the context keys a visit changed
            for item in value:
                if type(item) is not str or not (item.isascii() or _encodes(item)):
                    return False
        elif kind is not int and kind is not bool and value is not None:
            return False
    return True


def _encodes(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def trace_json(trace: Iterable[Mapping[str, Any]]) -> str | None:
    """The canonical JSON of a turn's trace, or ``None`` if it has none (a value
    outside the format's domain): the caller's own encoding then says why."""
    try:
        return canonical_json(list(trace))
    except (TypeError, ValueError):
        return None


def turn_from_dict(d: Any) -> TurnRecord:
    """The turn record a :func:`turn_to_dict` dict describes (:class:`ShapeError`)."""
    d = _dict(d, "turn")
    return TurnRecord(
        turn=_int(d, "turn", 1),
        status=_str(d, "status"),
        trace_id=_str(d, "trace_id"),
        graph_hash=_str(d, "graph_hash"),
        trace=_trace(d.get("trace")),
        ts=_num(d, "ts"),
        error=_str(d, "error", optional=True),
    )


def checkpoint_to_dict(cp: Checkpoint) -> dict[str, Any]:
    """A JSON-ready dict of a checkpoint (a ``running`` one has the keys it always had,
    so stores written before paused and failed checkpoints read the same)."""
    d: dict[str, Any] = {
        "turn": cp.turn,
        "graph_hash": cp.graph_hash,
        "trace_id": cp.trace_id,
        "input": cp.input,
        "last_node": cp.last_node,
        "next_node": cp.next_node,
        "context": dict(cp.context),
        "trace": [dict(step) for step in cp.trace],
        "ts": cp.ts,
    }
    if cp.steps:  # absent when 0, as in records stored before it was counted
        d["steps"] = cp.steps
    if cp.kind != "running":
        d["kind"] = cp.kind
        d["question"] = cp.question
        d["choices"] = list(cp.choices)
        d["default"] = cp.default
        d["deadline"] = cp.deadline
        d["error"] = cp.error
    return d


def checkpoint_from_dict(d: Any) -> Checkpoint:
    """The checkpoint a :func:`checkpoint_to_dict` dict describes (:class:`ShapeError`)."""
    d = _dict(d, "checkpoint")
    return Checkpoint(
        turn=_int(d, "turn"),
        graph_hash=_str(d, "graph_hash"),
        trace_id=_str(d, "trace_id"),
        input=_str(d, "input"),
        last_node=_str(d, "last_node"),
        next_node=_str(d, "next_node"),
        context=_frozen(d.get("context"), "context"),
        trace=_trace(d.get("trace")),
        ts=_num(d, "ts"),
        steps=_int(d, "steps") if "steps" in d else 0,
        **_checkpoint_kind(d),
    )


def _checkpoint_kind(d: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a paused or failed checkpoint (none for a running one)."""
    kind = d.get("kind", "running")
    if kind == "running":
        return {}
    if kind not in ("paused", "failed"):
        raise ShapeError(f"checkpoint: kind {kind!r} is not running, paused or failed")
    choices = d.get("choices")
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise ShapeError("checkpoint: choices must be a list of strings")
    deadline = d.get("deadline")
    if deadline is not None:
        deadline = _num(d, "deadline")
    return {
        "kind": kind,
        "question": _str(d, "question"),
        "choices": tuple(choices),
        "default": _str(d, "default", optional=True),
        "deadline": deadline,
        "error": _str(d, "error", optional=True),
    }


def meta_to_dict(m: SessionMeta) -> dict[str, Any]:
    """A JSON-ready dict of session metadata (the lease ``version`` included)."""
    return {
        "id": m.id,
        "agent_id": m.agent_id,
        "type": m.type,
        "created_at": m.created_at,
        "updated_at": m.updated_at,
        "turn_count": m.turn_count,
        "message_count": m.message_count,
        "version": m.version,
        "config": dict(m.config),
        "working_memory": dict(m.working_memory),
        "goals": list(m.goals),
        "cognitive_mode": m.cognitive_mode,
        "summary_upto": m.summary_upto,
    }


def meta_from_dict(d: Any) -> SessionMeta:
    """The metadata a :func:`meta_to_dict` dict describes (:class:`ShapeError`).

    The id is checked with :func:`validate_session_id` (``InvalidSessionId``).
    """
    d = _dict(d, "meta")
    stype, goals = d.get("type"), d.get("goals")
    if stype not in _TYPES:
        raise ShapeError(f"'type' must be one of {sorted(_TYPES)}")
    if not isinstance(goals, list) or not all(isinstance(g, str) for g in goals):
        raise ShapeError("'goals' must be a list of strings")
    return SessionMeta(
        id=validate_session_id(d.get("id")),
        agent_id=_str(d, "agent_id"),
        type=stype,
        created_at=_num(d, "created_at"),
        updated_at=_num(d, "updated_at"),
        turn_count=_int(d, "turn_count"),
        message_count=_int(d, "message_count"),
        version=_int(d, "version"),
        config=_frozen(d.get("config"), "config"),
        working_memory=_frozen(d.get("working_memory"), "working_memory"),
        goals=tuple(goals),
        cognitive_mode=_str(d, "cognitive_mode"),
        summary_upto=_int(d, "summary_upto", -1),
    )
