"""Canonical JSON format 2: its exact rules, and that every writer of signed text agrees."""

from __future__ import annotations

import datetime
import decimal
import enum
import json
import uuid
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sessions.store.codec import (
    CODEC_VERSION,
    canonical_json,
    canonical_json_v1,
    json_float,
    json_int,
    json_loads,
    json_str,
    record_body,
    record_suffix,
    record_version,
)

_KEYS = st.text(alphabet=st.characters(codec="utf-8"), max_size=5)
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(codec="utf-8"), max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=20,
)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ({"b": 1, "a": [1, 2], "é": None, "E": True}, '{"E":true,"a":[1,2],"b":1,"é":null}'),
        ({"\uffff": 1, "😀": 2, "z": 3}, '{"z":3,"\uffff":1,"😀":2}'),  # code point order
        ("é😀\u2028\x7f", '"é😀\u2028\x7f"'),  # UTF-8 as is
        ('"\\\b\f\n\r\t\x00\x1f', '"\\"\\\\\\b\\f\\n\\r\\t\\u0000\\u001f"'),
        ([0.1, 1.0, -0.0, 1e-05, 1.5e-06, 1e16, 1e15, 5e-324], None),
        (2**70, "1180591620717411303424"),
        ((1, (2,)), "[1,[2]]"),
        (MappingProxyType({"b": MappingProxyType({})}), '{"b":{}}'),
    ],
    ids=["sorted", "code-points", "utf8", "escapes", "floats", "big-int", "tuples", "proxies"],
)
def test_the_rules(value: Any, text: str | None) -> None:
    """Sorted keys, no spaces, UTF-8, JSON's escapes only, exact ints, mappings as objects."""
    floats = "[0.1,1.0,-0.0,0.00001,1.5e-6,1e16,1000000000000000.0,5e-324]"
    assert canonical_json(value) == (floats if text is None else text)


class _Str(str):
    def __str__(self) -> str:
        return "overridden"


class _Int(int):
    pass


class _Colour(enum.IntEnum):
    RED = 1


def test_subclasses_are_written_as_their_base_value() -> None:
    """As format 1 wrote them: a subclass's own ``__str__`` does not change its text."""
    assert canonical_json({"s": _Str("x"), "i": _Int(7), "e": _Colour.RED}) == (
        '{"e":1,"i":7,"s":"x"}'
    )


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (float("nan"), ValueError, "nan"),
        ([1, float("-inf")], ValueError, "-inf"),
        ({1: "a"}, TypeError, "keys must be str, not int"),
        ({"a": {None: 1}}, TypeError, "keys must be str, not NoneType"),
        ({"a": {1, 2}}, TypeError, "set"),
        (b"x", TypeError, "bytes"),
        (datetime.date(2020, 1, 1), TypeError, "date"),
        (decimal.Decimal("1.5"), TypeError, "Decimal"),
        (uuid.UUID(int=1), TypeError, "UUID"),
        (object(), TypeError, "object"),
        ("\ud800", ValueError, "surrogates"),
    ],
    ids=["nan", "inf", "int-key", "none-key", "set", "bytes", "date", "dec", "uuid", "obj", "sur"],
)
def test_what_is_refused(value: Any, error: type[Exception], match: str) -> None:
    """Outside the format's domain is an error, never a silent conversion (msgspec alone
    would write NaN as null, a set in hash order, bytes as base64, a date as text)."""
    with pytest.raises(error, match=match):
        canonical_json(value)


def test_a_value_that_contains_itself_is_a_value_error() -> None:
    """Too deep (or circular) is a ``ValueError``, which the stores turn into StoreError."""
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(ValueError, match="nests too deeply"):
        canonical_json(loop)


@given(_JSON)
def test_decoding_and_encoding_again_is_stable(value: Any) -> None:
    """A text decodes to values whose text is the same text, by either parser."""
    text = canonical_json(value)
    assert canonical_json(json_loads(text)) == text
    assert canonical_json(json.loads(text)) == text


@given(_JSON)
def test_format_1_and_2_differ_only_in_how_floats_are_written(value: Any) -> None:
    """The same values; format 1 wrote exponents Python's way (``1e-05``, ``1e+16``)."""
    one, two = canonical_json_v1(value), canonical_json(value)
    assert json.loads(one) == json.loads(two)
    if one != two:
        assert "e" in one


@given(st.floats(allow_nan=False, allow_infinity=False) | st.integers() | st.text())
def test_the_scalar_pieces_are_the_encoders_text(value: Any) -> None:
    """``json_float`` / ``json_int`` / ``json_str`` write what the encoder writes."""
    piece = {float: json_float, int: json_int, str: json_str}[type(value)](value)
    assert piece == canonical_json(value)


def test_the_scalar_pieces_decline_what_they_do_not_write() -> None:
    """NaN, bools and subclasses go to the general path, which decides."""
    assert json_float(float("nan")) is None and json_float(1) is None
    assert json_int(True) is None and json_int(_Int(1)) is None


def test_a_record_body_is_canonical_json_naming_its_format() -> None:
    """The framing is the encoder's text of the whole envelope, ``"v"`` last."""
    data = {"content": "é", "ts": 1e-05}
    body = record_body("s.1", 7, "message", data)
    envelope = {"data": data, "kind": "message", "rseq": 7, "session": "s.1", "v": CODEC_VERSION}
    assert body == canonical_json(envelope)
    assert body.endswith(record_suffix("s.1", 7, "message")) and record_version(body) == 2
    old = canonical_json_v1({"data": data, "kind": "message", "rseq": 7, "session": "s.1"})
    assert old.endswith(record_suffix("s.1", 7, "message", 1)) and record_version(old) == 1
