"""Signed export documents: files, signatures, limits and shapes, checked before writing."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest

from sessions.errors import ImportRejected
from sessions.store import ImportLimits, OpenStore, open_store, read_export, write_export
from sessions.store.codec import canonical_json
from sessions.store.signing import Signer, derive_key

from . import SECRET, fill


def resign(doc: dict[str, Any], secret: bytes = SECRET) -> dict[str, Any]:
    """``doc`` with a valid signature under ``secret`` (to test checks past the signature)."""
    rest = {k: v for k, v in doc.items() if k != "signature"}
    rest["signature"] = Signer(derive_key(secret)).tagged(b"export", canonical_json(rest)).hex()
    return rest


def hidden_files(directory: Path) -> list[str]:
    """Names of dot files (left-over temp files) in ``directory``."""
    return [p.name for p in directory.iterdir() if p.name.startswith(".")]


@pytest.fixture
async def doc(store: OpenStore) -> dict[str, Any]:
    """An export of a 3-turn session, the session then deleted."""
    await fill(store, "s1", 3)
    exported = await store.export("s1")
    await store.delete("s1")
    return exported


async def test_file_roundtrip_across_backends(tmp_path: Path, store: OpenStore) -> None:
    """An export written to a file imports into another backend, verified."""
    await fill(store, "s1", 3)
    path = write_export(tmp_path / "s1.json", await store.export("s1"))
    assert hidden_files(tmp_path) == []
    async with open_store(f"sqlite:///{tmp_path}/other.db", secret=SECRET) as other:
        meta = await other.import_(read_export(path))
        assert meta.message_count == 6 and await other.verify("s1") == 9
        assert await other.messages("s1") == await store.messages("s1")


def test_write_export_replaces_atomically(tmp_path: Path) -> None:
    """Writing over an existing file replaces it whole and leaves no temp file."""
    path = tmp_path / "x.json"
    write_export(path, {"a": 1})
    write_export(path, {"b": 2})
    assert json.loads(path.read_text()) == {"b": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "cannot read"),
        (b'{"format": "turngraph.session", "messa', "not valid JSON"),
        (os.urandom(64) + b"\xff\xfe", "binary"),
        (b"hello there\n", "not valid JSON"),
        (b"[1, 2, 3]", "JSON object"),
        (b"", "not valid JSON"),
    ],
    ids=["missing", "truncated", "binary", "text", "array", "empty"],
)
def test_read_export_refuses_bad_files(tmp_path: Path, content: bytes | None, reason: str) -> None:
    """Missing, truncated, binary, non-JSON or non-object files: ImportRejected naming it."""
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImportRejected, match=reason) as info:
        read_export(path)
    assert str(path) in str(info.value)


def test_read_export_refuses_oversized_files(tmp_path: Path) -> None:
    """A file above the byte limit is refused before it is parsed."""
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"x": "y" * 1000}))
    with pytest.raises(ImportRejected, match="exceeds"):
        read_export(path, max_bytes=100)


async def _rejected(store: OpenStore, doc: Any, match: str) -> None:
    with pytest.raises(ImportRejected, match=match):
        await store.import_(doc)
    assert not await store.exists("s1")  # nothing written


async def test_edited_document_fails_its_signature(store: OpenStore, doc: dict[str, Any]) -> None:
    """Changing any content without re-signing is refused."""
    bad = copy.deepcopy(doc)
    bad["messages"][2]["content"] = "I never said that"
    await _rejected(store, bad, "bad signature")
    await _rejected(store, {k: v for k, v in doc.items() if k != "signature"}, "not signed")


async def test_document_signed_with_another_key(store: OpenStore, doc: dict[str, Any]) -> None:
    """A document signed with another key is refused."""
    await _rejected(store, resign(doc, b"someone else"), "bad signature")


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d.update(format="other"), "format"),
        (lambda d: d.update(schema=3), "schema 3 is not supported"),
        (lambda d: d.update(schema=True), "schema True is not supported"),
        (lambda d: d["messages"].pop(1), "seq"),
        (lambda d: d["messages"][0].pop("role"), "role"),
        (lambda d: d["turns"][0].update(turn="one"), "turn"),
        (lambda d: d["meta"].update(id="../etc"), "session id"),
        (lambda d: d["meta"].update(message_count=99), "counters"),
        (lambda d: d.update(messages="nope"), "must be a list"),
        (lambda d: d["summaries"].append({"upto": 50, "message": d["messages"][0]}), "summary"),
    ],
    ids=[
        "format",
        "schema",
        "schema-bool",
        "gap",
        "no-role",
        "bad-turn",
        "traversal",
        "counters",
        "shape",
        "summary",
    ],
)
async def test_bad_shapes_are_refused_even_when_signed(
    store: OpenStore, doc: dict[str, Any], edit: Any, match: str
) -> None:
    """Schema, shape and consistency are checked after the signature, before writing."""
    bad = copy.deepcopy(doc)
    edit(bad)
    await _rejected(store, resign(bad), match)


async def test_not_a_mapping(store: OpenStore) -> None:
    """A document that is not a JSON object is refused."""
    await _rejected(store, ["not", "a", "doc"], "not a JSON object")


async def test_size_limits(tmp_path: Path, doc: dict[str, Any]) -> None:
    """Configured limits on messages and bytes are enforced before anything is written."""
    url = f"sqlite:///{tmp_path}/l.db"
    async with open_store(url, secret=SECRET, limits=ImportLimits(max_messages=5)) as s:
        await _rejected(s, doc, "6 messages exceed the limit of 5")
    async with open_store(url, secret=SECRET, limits=ImportLimits(max_bytes=500)) as s:
        await _rejected(s, doc, "exceeds the limit of 500 bytes")
