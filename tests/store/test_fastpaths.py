"""The fast paths of reading a chain: they agree with the careful ones, byte for byte."""

from __future__ import annotations

import hashlib
import hmac
import json
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sessions.errors import SessionTampered
from sessions.store.base import Message, TurnRecord
from sessions.store.codec import (
    ShapeError,
    _checked_message,
    canonical_json,
    message_json,
    message_to_dict,
    messages_from_dicts,
    record_body,
    record_data,
    record_datas,
    turn_json,
    turn_to_dict,
)
from sessions.store.durable import StateRow
from sessions.store.signing import GENESIS, Row, Signer, verify_span

KEY = hashlib.sha256(b"k").digest()


@pytest.mark.parametrize("key", [KEY, b"", b"x" * 64, b"y" * 65, b"z" * 200])
def test_signer_is_rfc2104_hmac_sha256(key: bytes) -> None:
    """The precomputed-pad MAC equals the standard library's HMAC for any key length."""
    s = Signer(key)
    assert (
        s.mac(b"p" * 32, "héllo") == hmac.new(key, b"p" * 32 + "héllo".encode(), "sha256").digest()
    )
    assert s.tagged(b"state", "t") == hmac.new(key, b"state\x00t", "sha256").digest()


def _rows(sid: str, datas: list[dict[str, Any]], signer: Signer) -> list[Row]:
    rows: list[Row] = []
    prev = GENESIS
    for i, data in enumerate(datas):
        body = record_body(sid, i, "message", data)
        mac = signer.mac(prev, body)
        rows.append((i, "message", i, body, prev, mac))
        prev = mac
    return rows


def _msg(i: int, content: str = "hi") -> dict[str, Any]:
    return message_to_dict(Message(i, "user", content, 1, 1.5))


def test_check_chain_accepts_intact_and_refuses_any_change() -> None:
    """The fast check says True only for the exact records, links and positions."""
    s = Signer(KEY)
    rows = _rows("s1", [_msg(i) for i in range(4)], s)
    slim = [(k, b, m) for _, k, _, b, _, m in rows]
    assert s.check_chain("s1", slim, 0, GENESIS)
    assert s.check_chain("s1", slim[2:], 2, rows[2][4])
    edited = [*slim[:1], ("message", slim[1][1].replace("hi", "ho"), slim[1][2]), *slim[2:]]
    assert not s.check_chain("s1", edited, 0, GENESIS)
    assert not s.check_chain("s1", slim[1:], 1, GENESIS)  # wrong link
    assert not s.check_chain("s1", slim[1:], 0, rows[1][4])  # wrong position
    assert not s.check_chain("s2", slim, 0, GENESIS)  # another session
    assert not s.check_chain("s1", [("turn", *slim[0][1:])], 0, GENESIS)  # another kind
    assert not s.check_chain("s1", [(*slim[0][:2], None)], 0, GENESIS)  # type: ignore[list-item]


def test_verify_span_still_names_the_first_bad_record() -> None:
    """A failed fast check falls back to the record-by-record diagnosis."""
    s = Signer(KEY)
    rows = _rows("s1", [_msg(i) for i in range(5)], s)
    assert [b for _, b, _ in verify_span(s, "u", "s1", rows, first=0, prev=GENESIS)] == [
        r[3] for r in rows
    ]
    bad = list(rows)
    bad[3] = (3, "message", 3, rows[3][3].replace("hi", "yo"), rows[3][4], rows[3][5])
    with pytest.raises(SessionTampered) as info:
        verify_span(s, "u", "s1", bad, first=0, prev=GENESIS)
    assert info.value.record == 3 and "MAC mismatch" in info.value.reason
    relinked = list(rows)
    relinked[2] = (2, "message", 2, rows[2][3], bytes(32), rows[2][5])
    with pytest.raises(SessionTampered, match="does not link"):
        verify_span(s, "u", "s1", relinked, first=0, prev=GENESIS)
    with pytest.raises(SessionTampered, match="truncated"):
        verify_span(s, "u", "s1", rows[:4], first=0, prev=GENESIS, head=(5, rows[4][5]))


@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "content": st.text(),
                "meta": st.dictionaries(st.text(max_size=5), st.integers() | st.text(), max_size=2),
            }
        ),
        max_size=8,
    )
)
def test_record_datas_equals_parsing_each_body(items: list[dict[str, Any]]) -> None:
    """The batched parse returns exactly what parsing every body alone returns."""
    bodies = [record_body("s.1", i, "message", {**d, "seq": i}) for i, d in enumerate(items)]
    assert record_datas(bodies) == [record_data(b) for b in bodies]


def test_record_datas_reports_a_bad_body_precisely() -> None:
    """A body that does not parse falls back to one-by-one parsing and its error."""
    good = record_body("s1", 0, "message", _msg(0))
    with pytest.raises(ShapeError, match="not JSON"):
        record_datas([good, '{"data":{"x":,"kind":"message","rseq":1,"session":"s1"}'])
    with pytest.raises(ShapeError, match="not an object"):
        record_datas([good, "[1]"])
    assert record_datas([]) == []


_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 3),
    st.floats(allow_nan=False),
    st.text(max_size=3),
    st.sampled_from(["user", "assistant", "tool", "bogus"]),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
)


@given(
    st.dictionaries(
        st.sampled_from(["seq", "role", "content", "turn", "ts", "meta", "extra"]), _VALUES
    )
    | st.integers()
)
def test_messages_from_dicts_equals_the_checked_decoder(d: Any) -> None:
    """Fast or not, decoding gives the same message, or the same error, as the checks."""
    try:
        want: Message | str = _checked_message(d)
    except ShapeError as exc:
        want = str(exc)
    try:
        got: Message | str = messages_from_dicts([d])[0]
    except ShapeError as exc:
        got = str(exc)
    assert got == want
    if isinstance(got, Message):
        assert type(got.meta) is type(Message(0, "user", "", 0, 0.0).meta)
        with pytest.raises(AttributeError):
            got.seq = 1  # type: ignore[misc]  # still frozen


def test_fast_messages_round_trip_exactly() -> None:
    """Messages written by the store decode to equal messages (the common case)."""
    msgs = [Message(i, "assistant", f"m{i}", 2, 1.0 + i) for i in range(50)]
    data = [message_to_dict(m) for m in msgs]
    assert messages_from_dicts(data) == tuple(msgs)
    assert canonical_json([message_to_dict(m) for m in messages_from_dicts(data)]) == (
        canonical_json(data)
    )


# ---------------------------------------------------------------- writing records fast

_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=6)
_NUM = st.one_of(
    st.integers(-3, 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
)


def _same_text_or_error(fast: Any, slow: Any) -> None:
    """``fast()`` and ``slow()`` return the same text, or both raise the same error type."""
    try:
        want: str | type[BaseException] = slow()
    except (TypeError, ValueError) as exc:
        want = type(exc)
    try:
        got: str | type[BaseException] = fast()
    except (TypeError, ValueError) as exc:
        got = type(exc)
    assert got == want


@given(
    seq=_NUM,
    role=st.sampled_from(["user", "assistant"]) | _TEXT,
    content=_TEXT | st.just('q"\\\n\x00é😀'),
    turn=_NUM,
    ts=_NUM,
    meta=st.sampled_from([None, {}, {"k": [1, "é"]}, {"b": 1, "a": None}]),
)
def test_message_json_is_the_canonical_json(
    seq: Any, role: Any, content: str, turn: Any, ts: Any, meta: Any
) -> None:
    """The hand-built message text equals the encoder's for any field values (or the
    same error): the chain signs these bytes."""
    m = Message(seq, role, content, turn, ts, *([] if meta is None else [meta]))
    _same_text_or_error(lambda: message_json(m), lambda: canonical_json(message_to_dict(m)))


@given(
    turn=_NUM,
    text=_TEXT,
    error=st.none() | _TEXT | st.integers(),
    ts=_NUM,
    trace=st.lists(
        st.dictionaries(
            _TEXT,
            _NUM | _TEXT | st.booleans() | st.none() | st.lists(_TEXT | _NUM, max_size=2),
            max_size=3,
        ).flatmap(lambda d: st.sampled_from([d, MappingProxyType(d)])),
        max_size=3,
    ),
)
def test_turn_json_is_the_canonical_json(
    turn: Any, text: str, error: Any, ts: Any, trace: list[Any]
) -> None:
    """The turn text equals the encoder's, or raises the same error (the engine's
    ``dict`` steps take a flat check instead of the walk; read-only steps, NaN, lists
    of other things than ``str`` take the walk)."""
    t = TurnRecord(turn, text, text + "-t", "g", tuple(trace), ts, error)
    _same_text_or_error(lambda: turn_json(t), lambda: canonical_json(turn_to_dict(t)))


_ANY_TEXT = st.text(alphabet=st.characters(exclude_categories=()), max_size=6)
_FLAT = st.one_of(
    _ANY_TEXT,
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1e-3, max_value=1e-3),
    st.booleans(),
    st.none(),
)


@given(
    trace=st.lists(st.dictionaries(_ANY_TEXT, _FLAT, max_size=6), max_size=8)
    | st.lists(
        st.fixed_dictionaries(
            {"id": _ANY_TEXT, "status": st.just("success"), "attempts": st.integers(1, 3)},
            optional={"duration_ms": st.floats(0, 1e6), "reason": _ANY_TEXT},
        ),
        max_size=8,
    )
)
def test_trace_json_is_the_canonical_json_or_declines(trace: list[dict[str, Any]]) -> None:
    """msgspec's trace text is used only when it is exactly the encoder's, for any
    keys and flat values (surrogates, huge ints, NaN, tiny and huge floats included)."""
    from sessions.store.codec import trace_json

    fast = trace_json(trace)
    if fast is not None:
        assert fast == canonical_json(trace)


def test_trace_json_takes_the_usual_trace() -> None:
    """An engine trace (plain dicts of names, counts and durations) is never declined."""
    from sessions.store.codec import trace_json

    trace: list[dict[str, Any]] = [
        {"id": n, "handler": n, "status": "success", "attempts": 1, "duration_ms": 0.0123}
        for n in ("classify", "recall", "llm_call", "format", "update_memory", "done")
    ]
    assert trace_json(trace) == canonical_json(trace)
    trace[0]["changed"] = ["intent", "input.text"]  # the keys a visit wrote
    assert trace_json(trace) == canonical_json(trace)


@given(
    created=_NUM,
    counts=st.lists(st.integers(-1, 10**6) | st.booleans(), min_size=4, max_size=4),
    text=_TEXT,
    agent=_TEXT | st.integers(),
)
def test_state_text_is_the_canonical_json(
    created: Any, counts: list[Any], text: str, agent: Any
) -> None:
    """The session row's signed text is the encoder's, whatever the field values."""
    row = StateRow(
        "s.1", agent, "chat", created, 2.5, counts[0], counts[1], counts[2], bytes(range(32)),
        text, '{"a":"' + text + '"}', "[]", text, counts[3], b"",
    )  # fmt: skip
    _same_text_or_error(row.text, row._slow_text)


def _raw(rows: list[Row]) -> list[tuple[str, bytes, bytes]]:
    return [(k, b.encode(), m) for _, k, _, b, _, m in rows]


def test_bodies_to_head_needs_every_mac_and_the_head() -> None:
    """The bulk check returns the chosen bodies only for the exact chain up to the head."""
    s = Signer(KEY)
    rows = _rows("s1", [_msg(i, "hé") for i in range(5)], s)
    raw = _raw(rows)
    head = (5, rows[4][5])
    assert s.bodies_to_head(raw, 0, GENESIS, head, "message") == [r[3].encode() for r in rows]
    assert s.bodies_to_head(raw[2:], 2, rows[2][4], head, "message") == [
        r[3].encode() for r in rows[2:]
    ]
    assert s.bodies_to_head(raw, 0, GENESIS, head, "turn") == []
    edited = [*raw[:3], ("message", raw[3][1].replace(b"h", b"H"), raw[3][2]), raw[4]]
    assert s.bodies_to_head(edited, 0, GENESIS, head, "message") is None
    bad_mac = [*raw[:3], ("message", raw[3][1], bytes(32)), raw[4]]
    assert s.bodies_to_head(bad_mac, 0, GENESIS, head, "message") is None
    assert s.bodies_to_head(raw[:4], 0, GENESIS, head, "message") is None  # short of the head
    assert s.bodies_to_head(raw, 0, GENESIS, (6, rows[4][5]), "message") is None  # count
    assert s.bodies_to_head(raw, 0, GENESIS, (5, rows[3][5]), "message") is None  # head mac
    assert s.bodies_to_head(raw[1:], 1, GENESIS, head, "message") is None  # wrong link
    null = [*raw[:4], ("message", raw[4][1], None)]
    assert s.bodies_to_head(null, 0, GENESIS, head, "message") is None  # type: ignore[arg-type]


@given(
    items=st.lists(
        st.fixed_dictionaries(
            {
                "content": _TEXT,
                "role": st.sampled_from(["user", "assistant", "tool", "system", "summary"]),
                "turn": st.integers(0, 2**40),
                "ts": st.floats(allow_nan=False, allow_infinity=False) | st.integers(0, 2**40),
                "meta": st.sampled_from([{}, {"k": [1, "é"]}, {"b": 1, "a": None}]),
            }
        ),
        max_size=8,
    ),
    first=st.integers(0, 10**6),
)
def test_messages_of_bodies_equals_the_careful_path(
    items: list[dict[str, Any]], first: int
) -> None:
    """Decoding bodies straight into messages gives exactly what parsing each body
    and checking its dict gives: same fields, same types, read-only metadata."""
    from sessions.store.codec import messages_of_bodies

    datas = [{**d, "seq": first + i} for i, d in enumerate(items)]
    bodies = [record_body("s1", i, "message", d) for i, d in enumerate(datas)]
    want = messages_from_dicts([record_data(b) for b in bodies])
    got = messages_of_bodies([b.encode() for b in bodies], first)
    assert got is not None and got == want
    for g, w in zip(got, want, strict=True):
        assert type(g.ts) is type(w.ts) is float and type(g.meta) is type(w.meta)
        assert dict(g.meta) == dict(w.meta)
        with pytest.raises(TypeError):
            g.meta["x"] = 1  # type: ignore[index]


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"seq": 5}, "a gap in seq"),
        ({"role": "bogus"}, "an unknown role"),
        ({"turn": -1}, "a negative turn"),
        ({"ts": True}, "a bool for a number"),
        ({"seq": 0.0}, "a float for an int"),
        ({"meta": [1]}, "meta not an object"),
        ({"content": 3}, "content not a string"),
    ],
)
def test_messages_of_bodies_declines_what_the_careful_path_must_judge(
    change: dict[str, Any], why: str
) -> None:
    """Anything unusual returns None, so the careful path names the problem."""
    from sessions.store.codec import messages_of_bodies

    good = {"seq": 0, "role": "user", "content": "hi", "turn": 1, "ts": 1.0, "meta": {}}
    bodies = [record_body("s1", 0, "message", {**good, **change}).encode()]
    assert messages_of_bodies(bodies, 0) is None, why
    assert messages_of_bodies([b"[1]"], 0) is None
    assert (
        messages_of_bodies([b'{"data":{"x":,"kind":"message","rseq":0,"session":"s1"}'], 0) is None
    )


def _exactly(a: Any, b: Any) -> bool:
    """Equal values of equal types all the way down (1 is not 1.0, -0.0 is not 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return repr(a) == repr(b)
    if isinstance(a, list):
        return len(a) == len(b) and all(map(_exactly, a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_exactly(a[k], b[k]) for k in a)
    return bool(a == b)


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**80), 2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | _ANY_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_ANY_TEXT, inner, max_size=4),
    max_leaves=12,
)


@given(value=_JSON, ascii_only=st.booleans(), spaced=st.booleans())
def test_json_loads_reads_exactly_what_the_standard_parser_reads(
    value: Any, ascii_only: bool, spaced: bool
) -> None:
    """The fast parser gives the standard library's values, types and key order, for
    any JSON text (escaped surrogates, NaN, huge numbers, duplicate-free objects), as
    str or as UTF-8 bytes; what the standard parser refuses, it refuses."""
    from sessions.store.codec import json_loads

    text = json.dumps(value, ensure_ascii=ascii_only, separators=None if spaced else (",", ":"))
    want = json.loads(text)
    assert _exactly(json_loads(text), want)
    try:
        raw = text.encode()
    except UnicodeEncodeError:  # a lone surrogate, unescaped: no UTF-8 form
        return
    assert _exactly(json_loads(raw), want)


@pytest.mark.parametrize(
    "raw",
    [
        b"\xef\xbb\xbf[1]",  # a UTF-8 byte-order mark
        "[1]".encode("utf-16"),
        "[1]".encode("utf-32-le"),
        b'["\xed\xa0\x80"]',  # a lone surrogate, encoded (json.loads: surrogatepass)
        b'{"a":NaN}',
    ],
)
def test_json_loads_reads_bytes_as_the_standard_parser_does(raw: bytes) -> None:
    """Bytes msgspec refuses are read by the standard parser: the same values."""
    from sessions.store.codec import json_loads

    want = json.loads(raw)
    assert _exactly(json_loads(raw), want)


@pytest.mark.parametrize("bad", ["[1,", "{", "[NaN", '"\\x"', "", "[1] 2"])
def test_json_loads_refuses_what_the_standard_parser_refuses(bad: str) -> None:
    """Broken JSON raises ValueError from both parsers."""
    from sessions.store.codec import json_loads

    with pytest.raises(ValueError, match=r"\w"):
        json.loads(bad)
    with pytest.raises(ValueError, match=r"\w"):
        json_loads(bad)
    with pytest.raises(ValueError, match=r"\w"):
        json_loads(bad.encode())
