"""The pure half of the SQL backends: session state, commit plans, window decoding.

SQLite and PostgreSQL differ in how they talk to the database, not in what they
write.  This module holds what they share and touches no database: the session row
(:class:`StateRow`) and its MAC, the chain rows a turn appends (:func:`plan_turn`),
and turning verified chain data back into records (:func:`messages_of`).
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from types import MappingProxyType
from typing import Any, Final, NamedTuple

from sessions.errors import Fenced, SessionTampered, StoreError, Unstorable
from sessions.store.base import (
    Checkpoint,
    Message,
    SessionMatch,
    SessionMeta,
    TurnCommit,
    TurnRecord,
)
from sessions.store.codec import (
    KIND_MESSAGE,
    KIND_SUMMARY,
    KIND_TURN,
    ShapeError,
    canonical_json,
    canonical_json_v1,
    checkpoint_from_dict,
    checkpoint_to_dict,
    commit_json,
    json_checked,
    message_from_dict,
    message_to_dict,
    messages_from_dicts,
    record_body_json,
    record_data,
    record_datas,
    turn_from_dict,
)
from sessions.store.cursor import sql_cursor, sqlite_cursor
from sessions.store.export import ImportPlan, Parts, chain_items
from sessions.store.signing import GENESIS, Chain, Row, Signer, verify_span

__all__ = [
    "STATE_COLUMNS",
    "ListingSQL",
    "StateRow",
    "check_index",
    "checkpoint_body",
    "latest_summary",
    "listed_meta",
    "matched_sql",
    "messages_of",
    "messages_of_datas",
    "open_checkpoint",
    "plan_import",
    "plan_records",
    "plan_state",
    "plan_summary",
    "plan_turn",
    "scanned_to",
    "split_chain",
    "summary_of",
    "turns_of",
]

STATE_COLUMNS: Final = (
    "id, agent_id, type, created_at, updated_at, turn_count, message_count, record_count, "
    "head_mac, config, working_memory, goals, cognitive_mode, summary_upto, state_mac, "
    "version, owner, lease_expires"
)
"""The ``sessions`` columns, in :class:`StateRow` field order."""

_SIGNED: Final = STATE_COLUMNS.split(", ")[:14]

WRITTEN_COLUMNS: Final = (
    "updated_at",
    "turn_count",
    "message_count",
    "record_count",
    "head_mac",
    "working_memory",
    "goals",
    "cognitive_mode",
    "summary_upto",
    "state_mac",
)
"""The ``sessions`` columns a write (a turn, a summary, a state change) sets."""


@dataclass(slots=True)
class StateRow:
    """One ``sessions`` row.  JSON columns stay text: the MAC covers them verbatim."""

    id: str
    agent_id: str
    type: str
    created_at: float
    updated_at: float
    turn_count: int
    message_count: int
    record_count: int
    head_mac: bytes
    config: str
    working_memory: str
    goals: str
    cognitive_mode: str
    summary_upto: int
    state_mac: bytes
    version: int = 0
    owner: str | None = None
    lease_expires: float = 0.0

    @classmethod
    def new(
        cls, meta: SessionMeta, signer: Signer, url: str, *, now: float | None = None
    ) -> StateRow:
        """The row of a freshly created session (no records yet), sealed.

        Raises :class:`~engine.errors.StoreError` if its config, memory or goals are not
        JSON-serialisable.
        """
        try:
            return cls._new(meta, signer, time.time() if now is None else now)
        except (TypeError, ValueError) as exc:
            raise _not_json(url, meta.id, "session metadata", exc) from exc

    @classmethod
    def _new(cls, meta: SessionMeta, signer: Signer, now: float) -> StateRow:
        row = cls(
            id=meta.id,
            agent_id=meta.agent_id,
            type=meta.type,
            # float: the column stores a float, and the MAC must sign what is read back
            created_at=float(meta.created_at or now),
            updated_at=now,
            turn_count=0,
            message_count=0,
            record_count=0,
            head_mac=GENESIS,
            config=_json(meta.config),
            working_memory=_json(meta.working_memory),
            goals=_json(list(meta.goals)),
            cognitive_mode=meta.cognitive_mode,
            summary_upto=-1,
            state_mac=b"",
        )
        return row.sealed(signer)

    @classmethod
    def of(cls, values: Sequence[Any], url: str) -> StateRow:
        """A row fetched with ``SELECT {STATE_COLUMNS}``.

        Raises :class:`~engine.errors.SessionTampered` if a column holds a value of
        another type than the store writes (SQLite keeps whatever type an edit stores:
        a MAC as text, a count as text, a NULL where the constraint was dropped), so
        nothing downstream meets a type it cannot handle.
        """
        if len(values) != len(_COLUMN_TYPES) or not all(map(isinstance, values, _COLUMN_TYPES)):
            raise _bad_row(url, values)
        row = cls(*values)
        row.head_mac, row.state_mac = bytes(row.head_mac), bytes(row.state_mac)
        return row

    def values(self) -> tuple[Any, ...]:
        """Every column, in :data:`STATE_COLUMNS` order (what an ``INSERT`` writes)."""
        return _state_values(self)

    def copy(self) -> StateRow:
        """A copy to change: a cached, verified row itself is never modified."""
        return StateRow(*_state_values(self))

    def text(self) -> str:
        """The canonical JSON the state MAC signs (every commit writes one).

        Fields of the exact types the store writes go to the encoder as one dict, the
        type checks standing in for :func:`canonical_json`'s walk (same text); anything
        else takes :meth:`_slow_text`, whose text is the definition.
        """
        created, updated = self.created_at, self.updated_at
        if not (
            type(created) is float
            and created - created == 0.0  # NaN and infinities take the slow path
            and type(updated) is float
            and updated - updated == 0.0
            and type(self.turn_count) is int
            and type(self.message_count) is int
            and type(self.record_count) is int
            and type(self.summary_upto) is int
            and type(self.id) is str
            and type(self.agent_id) is str
            and type(self.type) is str
            and type(self.cognitive_mode) is str
            and type(self.config) is str
            and type(self.working_memory) is str
            and type(self.goals) is str
        ):
            return self._slow_text()
        return json_checked(
            {
                "agent_id": self.agent_id,
                "cognitive_mode": self.cognitive_mode,
                "config": self.config,
                "created_at": created,
                "goals": self.goals,
                "head_mac": self.head_mac.hex(),
                "id": self.id,
                "message_count": self.message_count,
                "record_count": self.record_count,
                "summary_upto": self.summary_upto,
                "turn_count": self.turn_count,
                "type": self.type,
                "updated_at": updated,
                "working_memory": self.working_memory,
            }
        )

    def _slow_text(self, encode: Callable[[Any], str] = canonical_json) -> str:
        """:meth:`text` through the encoder: the signed fields, ``head_mac`` in hex."""
        d = {name: getattr(self, name) for name in _SIGNED}
        d["head_mac"] = self.head_mac.hex()
        return encode(d)

    def sealed(self, signer: Signer) -> StateRow:
        """This row with its ``state_mac`` recomputed."""
        self.state_mac = signer.tagged(b"state", self.text())
        return self

    def check(self, signer: Signer, url: str) -> StateRow:
        """Raise :class:`~engine.errors.SessionTampered` unless the state MAC verifies
        over the row's canonical JSON: format 2, or format 1 for a row last written
        before format 2 (a timestamp such as ``1e-05`` is written differently); the
        row's next write seals it in format 2."""
        mac = self.state_mac
        if not mac or not (
            hmac.compare_digest(signer.tagged(b"state", self.text()), mac)
            or hmac.compare_digest(signer.tagged(b"state", self._slow_text(canonical_json_v1)), mac)
        ):
            raise SessionTampered(
                url,
                self.id,
                self.record_count,
                "session state MAC mismatch (metadata or head edited, or signed with another key)",
            )
        return self

    def fence(self, url: str, token: int) -> StateRow:
        """Raise :class:`~engine.errors.Fenced` unless ``token`` is the current version."""
        if self.version != token:
            raise Fenced(url, self.id, token, self.version)
        return self

    def to_meta(self, url: str) -> SessionMeta:
        """The public :class:`SessionMeta` of this row."""
        try:
            config, wm, goals = (
                json.loads(x) for x in (self.config, self.working_memory, self.goals)
            )
        except ValueError as exc:
            raise SessionTampered(url, self.id, -1, f"bad JSON in session row: {exc}") from None
        return SessionMeta(
            id=self.id,
            agent_id=self.agent_id,
            type=self.type,  # type: ignore[arg-type]  # the MAC vouches for it
            created_at=self.created_at,
            updated_at=self.updated_at,
            turn_count=self.turn_count,
            message_count=self.message_count,
            version=self.version,
            config=MappingProxyType(config),
            working_memory=MappingProxyType(wm),
            goals=tuple(goals),
            cognitive_mode=self.cognitive_mode,
            summary_upto=self.summary_upto,
        )


_NUMBER: Final = (int, float)
_MAC: Final = (bytes, memoryview)
_COLUMN_TYPES: Final[tuple[type | tuple[type, ...], ...]] = (
    str, str, str, _NUMBER, _NUMBER, int, int, int, _MAC, str, str, str, str, int, _MAC,
    int, (str, type(None)), _NUMBER,
)  # fmt: skip
"""The types a ``sessions`` row's columns hold as the store writes them, in
:data:`STATE_COLUMNS` order (PostgreSQL ``bytea`` may arrive as a ``memoryview``)."""


def _bad_row(url: str, values: Sequence[Any]) -> SessionTampered:
    """The error for a session row whose columns are not of the written types."""
    names = STATE_COLUMNS.split(", ")
    wrong = [
        f"{name} is {type(v).__name__}"
        for name, v, t in zip(names, values, _COLUMN_TYPES, strict=False)
        if not isinstance(v, t)
    ]
    first = values[0] if values else None
    sid = first if isinstance(first, str) else repr(first)
    what = ", ".join(wrong) or f"{len(values)} columns"
    return SessionTampered(url, sid, -1, f"session row edited in the database: {what}")


_state_values: Final[Callable[[StateRow], tuple[Any, ...]]] = attrgetter(*STATE_COLUMNS.split(", "))


def _not_json(url: str, sid: str, what: str, exc: Exception) -> StoreError:
    return Unstorable(url, sid, what, str(exc))


def _json(value: Any) -> str:
    return canonical_json(value)


def plan_records(
    state: StateRow, signer: Signer, items: Iterable[tuple[str, int, dict[str, Any]]]
) -> list[Row]:
    """Chain rows for ``(kind, key, data)`` items appended after ``state``'s head.

    Advances ``state.record_count`` and ``state.head_mac`` (the caller reseals).
    A summary's key is its own ``rseq``; pass ``-1`` for it.
    """
    return _chain_rows(state, signer, ((k, key, canonical_json(d)) for k, key, d in items))


def _chain_rows(
    state: StateRow, signer: Signer, items: Iterable[tuple[str, int, str]]
) -> list[Row]:
    """:func:`plan_records` of ``(kind, key, data as canonical JSON)`` items."""
    rows: list[Row] = []
    prev, r = state.head_mac, state.record_count
    for kind, key, data in items:
        body = record_body_json(state.id, r, kind, data)
        mac = signer.mac(prev, body)
        rows.append((r, kind, r if key < 0 else key, body, prev, mac))
        prev, r = mac, r + 1
    state.head_mac, state.record_count = prev, r
    return rows


def plan_turn(
    state: StateRow, commit: TurnCommit, signer: Signer, url: str, *, now: float
) -> list[Row]:
    """Check ``commit`` continues ``state``, advance ``state``, return the rows to insert.

    The turn must be ``turn_count + 1`` and the messages must continue ``seq`` densely;
    anything else is a caller bug and raises :class:`~engine.errors.StoreError`.
    """
    if commit.record.turn != state.turn_count + 1:
        raise StoreError(
            url,
            f"session {state.id!r}: turn {commit.record.turn} does not "
            f"follow turn_count {state.turn_count}",
        )
    for i, m in enumerate(commit.messages):
        if m.seq != state.message_count + i:
            raise StoreError(
                url,
                f"session {state.id!r}: message seq {m.seq} does not "
                f"follow message_count {state.message_count + i}",
            )
    encoded = commit_json(commit, url, state.id)  # before state changes: all or nothing
    rows = _chain_rows(state, signer, encoded.records)
    if encoded.working_memory is not None:
        state.working_memory = encoded.working_memory
    if encoded.goals is not None:
        state.goals = encoded.goals
    if commit.cognitive_mode is not None:
        state.cognitive_mode = commit.cognitive_mode
    state.turn_count = commit.record.turn
    state.message_count += len(commit.messages)
    state.updated_at = now
    state.sealed(signer)
    return rows


def plan_state(
    state: StateRow,
    signer: Signer,
    url: str,
    *,
    working_memory: Mapping[str, Any] | None,
    goals: tuple[str, ...] | None,
    cognitive_mode: str | None,
    now: float,
) -> None:
    """Set the given session-state values on ``state`` (``None``: unchanged), reseal it.

    The caller has verified ``state`` (:meth:`StateRow.check`) and fenced it, and saves
    it in the same transaction: the row is never re-signed unverified.  Raises
    :class:`~engine.errors.StoreError` if a value is not JSON-serialisable.
    """
    try:
        if working_memory is not None:
            state.working_memory = _json(working_memory)
        if goals is not None:
            state.goals = _json(list(goals))
    except (TypeError, ValueError) as exc:
        raise _not_json(url, state.id, "session state", exc) from exc
    if cognitive_mode is not None:
        state.cognitive_mode = cognitive_mode
    state.updated_at = now
    state.sealed(signer)


def listed_meta(values: Sequence[Any], signer: Signer, url: str) -> SessionMeta:
    """A listing entry of a fetched ``sessions`` row: the verified metadata, or the id
    alone flagged ``tampered`` (an id that is not even text is shown as its ``repr``)."""
    try:
        return StateRow.of(values, url).check(signer, url).to_meta(url)
    except SessionTampered as exc:
        return SessionMeta(id=exc.session_id, tampered=True)


class ListingSQL(NamedTuple):
    """A listing page's SQL: ``rows`` and its ``params``; ``window`` (``FROM … LIMIT …
    OFFSET …``) and its ``window_params``, the range the page is read from; and with
    ``text``, ``span``: the count and last id of the window examined."""

    rows: str
    params: tuple[Any, ...]
    window: str
    window_params: tuple[Any, ...]
    text: bool

    @property
    def span(self) -> str:
        """The count and the last id of the window (``window_params``)."""
        return f"SELECT count(*), max(id) FROM (SELECT id {self.window}) AS w"


def matched_sql(
    match: SessionMatch, offset: int, limit: int, mark: str, *, sqlite: bool = False
) -> ListingSQL:
    """The SQL of a listing page (``mark``: the driver's placeholder).

    The window is the sessions with ``match``'s exact ``agent_id`` and ``type`` above
    ``match.after`` in id order, ``offset`` skipped: one range scan of the primary key
    or of the index on ``(agent_id, id)``, ``(type, id)`` or ``(agent_id, type, id)``
    (schema 6), read up to its ``LIMIT`` however rare the match.  Without ``text`` it
    is ``limit + 1`` rows, all listed (see :func:`~sessions.store.base.keyset_page`);
    with ``text`` it is ``limit`` rows, of which those whose id or agent id contains
    the text are listed.  The cursor is bound as :mod:`sessions.store.cursor` says
    (``sqlite``: as bytes, so an id that is not UTF-8 can be one)."""
    cursor: str | bytes = sqlite_cursor(match.after) if sqlite else sql_cursor(match.after)
    where = [f"id > CAST({mark} AS TEXT)" if sqlite else f"id > {mark}"]
    params: list[Any] = [cursor]
    if match.agent_id is not None:
        where.append(f"agent_id = {mark}")
        params.append(match.agent_id)
    if match.type is not None:
        where.append(f"type = {mark}")
        params.append(match.type)
    n = max(1, limit)
    window = f"FROM sessions WHERE {' AND '.join(where)} ORDER BY id LIMIT {mark} OFFSET {mark}"
    if not match.text:
        keyset = (*params, n + 1, max(0, offset))
        return ListingSQL(f"SELECT {STATE_COLUMNS} {window}", keyset, window, keyset, False)
    keyset = (*params, n, max(0, offset))
    like = f"LIKE {mark} ESCAPE '\\'"
    cond = f"(lower(id) {like} OR lower(agent_id) {like})"
    rows = f"SELECT * FROM (SELECT {STATE_COLUMNS} {window}) AS w WHERE {cond} ORDER BY id"
    return ListingSQL(rows, (*keyset, match.like(), match.like()), window, keyset, True)


def scanned_to(span: Sequence[Any], limit: int) -> str | None:
    """Where a listing with ``text`` stopped: the window's last id when it was full,
    else ``None`` (the end of its range)."""
    count, last = span
    return str(last) if count >= max(1, limit) else None


def plan_summary(
    state: StateRow, summary: Message, upto_seq: int, signer: Signer, url: str, *, now: float
) -> list[Row]:
    """Rows appending a compaction summary covering messages ``<= upto_seq``."""
    if not -1 <= upto_seq < state.message_count:
        raise StoreError(
            url,
            f"session {state.id!r}: summary upto_seq {upto_seq} is outside "
            f"the {state.message_count} messages",
        )
    try:
        data = {"upto": upto_seq, "message": message_to_dict(summary)}
        rows = plan_records(state, signer, [(KIND_SUMMARY, -1, data)])
    except (TypeError, ValueError) as exc:
        raise StoreError(
            url, f"session {state.id!r}: summary is not JSON-serialisable: {exc}"
        ) from exc
    state.summary_upto = upto_seq
    state.updated_at = now
    state.sealed(signer)
    return rows


def _dict_data(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ShapeError("data must be an object")
    return data


def _bad(url: str, sid: str, exc: ShapeError) -> SessionTampered:
    return SessionTampered(url, sid, -1, f"record does not decode: {exc}")


def messages_of(chain: Chain, url: str, sid: str, first_seq: int) -> tuple[Message, ...]:
    """The messages among verified chain data, checked to be ``first_seq...`` densely."""
    try:
        datas = record_datas([b for k, b, _ in chain if k == KIND_MESSAGE])
    except ShapeError as exc:
        raise _bad(url, sid, exc) from None
    return messages_of_datas(datas, url, sid, first_seq)


def messages_of_datas(datas: list[Any], url: str, sid: str, first_seq: int) -> tuple[Message, ...]:
    """The messages of verified records' decoded data, checked to be ``first_seq...``."""
    try:
        out = messages_from_dicts(datas)
    except ShapeError as exc:
        raise _bad(url, sid, exc) from None
    if [m.seq for m in out] != list(range(first_seq, first_seq + len(out))):
        i = next(i for i, m in enumerate(out) if m.seq != first_seq + i)
        raise SessionTampered(url, sid, -1, f"message {first_seq + i} is missing")
    return out


def turns_of(chain: Chain, url: str, sid: str, first_turn: int) -> tuple[TurnRecord, ...]:
    """The turn records among verified chain data, checked to be ``first_turn...``."""
    try:
        out = tuple(map(turn_from_dict, record_datas([b for k, b, _ in chain if k == KIND_TURN])))
    except ShapeError as exc:
        raise _bad(url, sid, exc) from None
    for i, t in enumerate(out):
        if t.turn != first_turn + i:
            raise SessionTampered(url, sid, -1, f"turn {first_turn + i} is missing")
    return out


def summary_of(body: str, url: str, sid: str) -> tuple[int, Message]:
    """``(upto_seq, message)`` of a verified summary record's body."""
    try:
        data = record_data(body)
        upto = data["upto"]
        if type(upto) is not int:
            raise ShapeError("'upto' must be an integer")
        return upto, message_from_dict(data.get("message"))
    except (KeyError, ShapeError) as exc:
        raise _bad(url, sid, ShapeError(str(exc))) from None


def latest_summary(row: Row | None, state: StateRow, signer: Signer, url: str) -> Message | None:
    """The session's latest summary from its newest summary record ``row`` (or
    ``None``), verified: ``SessionTampered`` if it is missing while the signed state
    says there is one, fails its MAC, or is not the one the state names."""
    if row is None:
        if state.summary_upto != -1:
            raise SessionTampered(url, state.id, -1, "the latest summary is missing")
        return None
    [(_, body, _)] = verify_span(signer, url, state.id, [row], first=row[0])
    upto, message = summary_of(body, url, state.id)
    if upto != state.summary_upto:
        raise SessionTampered(url, state.id, row[0], "summary is not the latest")
    return message


def checkpoint_body(sid: str, cp: Checkpoint, signer: Signer, url: str) -> tuple[str, bytes]:
    """The stored text of a checkpoint and its MAC (bound to the session)."""
    try:
        body = canonical_json({"session": sid, "checkpoint": checkpoint_to_dict(cp)})
    except (TypeError, ValueError) as exc:
        raise StoreError(
            url, f"session {sid!r}: checkpoint is not JSON-serialisable: {exc}"
        ) from exc
    return body, signer.tagged(b"checkpoint", body)


def open_checkpoint(sid: str, body: str, mac: bytes, signer: Signer, url: str) -> Checkpoint:
    """Verify and decode a stored checkpoint (:class:`~engine.errors.SessionTampered`)."""
    if type(body) is not str or not isinstance(mac, _MAC):
        raise SessionTampered(url, sid, -1, "checkpoint edited in the database (column types)")
    if not mac or not hmac.compare_digest(signer.tagged(b"checkpoint", body), bytes(mac)):
        raise SessionTampered(url, sid, -1, "checkpoint MAC mismatch")
    try:
        obj = json.loads(body)
        if not isinstance(obj, dict) or obj.get("session") != sid:
            raise ShapeError("checkpoint belongs to another session")
        return checkpoint_from_dict(obj.get("checkpoint"))
    except (ValueError, ShapeError) as exc:
        raise SessionTampered(url, sid, -1, f"checkpoint does not decode: {exc}") from None


def plan_import(plan: ImportPlan, signer: Signer, version: int) -> tuple[StateRow, list[Row]]:
    """The session row and re-chained records of a verified import."""
    meta = plan.meta
    state = StateRow._new(meta, signer, meta.updated_at)
    state.created_at = meta.created_at
    rows = plan_records(state, signer, chain_items(plan))
    state.turn_count = meta.turn_count
    state.message_count = meta.message_count
    state.summary_upto = meta.summary_upto
    state.version = version
    return state.sealed(signer), rows


def check_index(url: str, sid: str, rows: Iterable[Sequence[Any]]) -> None:
    """Check the unsigned columns of a whole verified chain: ``(rseq, kind, key,
    prev_mac, mac)`` rows.

    ``rseq`` counts from 0, a message's ``key`` is its ``seq`` (0, 1, ...), a turn
    record's its number (1, 2, ...), a summary's its own ``rseq``; ``prev_mac`` repeats
    the previous record's MAC.  The MACs do not cover these columns (the signed bodies
    and the chain itself say the same), so an edit of one cannot change what a read
    returns, only make a lookup miss; ``verify`` still refuses it.
    """
    next_key, prev = {KIND_MESSAGE: 0, KIND_TURN: 1}, GENESIS
    for at, (rseq, kind, key, prev_mac, mac) in enumerate(rows):
        want = rseq if kind == KIND_SUMMARY else next_key.get(kind)
        if rseq != at or want is None or key != want or type(key) is not int:
            raise SessionTampered(
                url, sid, at, f"index columns edited (rseq {rseq!r}, kind {kind!r}, key {key!r})"
            )
        if not isinstance(prev_mac, bytes | memoryview) or bytes(prev_mac) != prev:
            raise SessionTampered(url, sid, at, "prev_mac column edited")
        if kind != KIND_SUMMARY:
            next_key[kind] = key + 1
        prev = bytes(mac)


def split_chain(chain: Chain, url: str, sid: str) -> Parts:
    """A whole verified chain as export-ready dicts, checked to have no gaps.

    The bodies are MAC-verified, so their data goes to the export as decoded, without a
    round trip through the record classes (the importer checks every shape anyway).
    """
    parts = Parts([], [], [])
    by_kind = {KIND_MESSAGE: parts.messages, KIND_TURN: parts.turns, KIND_SUMMARY: parts.summaries}
    try:
        for kind, data in zip(
            (k for k, _, _ in chain), record_datas([b for _, b, _ in chain]), strict=True
        ):
            by_kind[kind].append(_dict_data(data))
    except ShapeError as exc:
        raise _bad(url, sid, exc) from None
    for i, m in enumerate(parts.messages):
        if m.get("seq") != i:
            raise SessionTampered(url, sid, -1, f"message {i} is missing")
    for i, t in enumerate(parts.turns, 1):
        if t.get("turn") != i:
            raise SessionTampered(url, sid, -1, f"turn {i} is missing")
    return parts
