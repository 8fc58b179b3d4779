"""Data that moves between machines, and files and secrets handled safely (issues 11, 12).

Exports name their key; a document from another key is told apart from an edited one;
``rekey`` carries it over; the key file is durable and never silently replaced; store
paths, export targets and passwords in URLs get typed errors that leak nothing.
"""

from __future__ import annotations

import copy
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from sessions.errors import (
    ExportPathRefused,
    ImportKeyMismatch,
    ImportRejected,
    StoreError,
    StoreKeyMissing,
    StorePathInvalid,
)
from sessions.store import OpenStore, open_store, read_export, write_export
from sessions.store.codec import canonical_json
from sessions.store.export import rekey
from sessions.store.redact import redact_url, scrub
from sessions.store.signing import Signer, derive_key, key_file_path, load_key

from . import SECRET, fill

OTHER = b"the other machine's secret"


def _signer(secret: bytes) -> Signer:
    return Signer(derive_key(secret))


async def _export_from_other_machine(tmp_path: Path) -> dict[str, Any]:
    async with open_store(f"sqlite:///{tmp_path}/other.db", secret=OTHER) as other:
        await fill(other, "s1", 2)
        return await other.export("s1")


# --------------------------------------------------------------------------- key ids


async def test_export_names_its_key_not_the_key(store: OpenStore) -> None:
    await fill(store, "s1", 1)
    doc = await store.export("s1")
    assert doc["key_id"] == _signer(SECRET).key_id
    assert len(doc["key_id"]) == 16 and doc["key_id"] != _signer(OTHER).key_id
    text = repr(doc)
    assert derive_key(SECRET).hex() not in text and SECRET.decode() not in text
    # Exports written before key ids (no key_id) still import.
    await store.delete("s1")
    old = {k: v for k, v in doc.items() if k not in ("key_id", "signature")}
    old["signature"] = _signer(SECRET).tagged(b"export", canonical_json(old)).hex()
    assert (await store.import_(old)).turn_count == 1


async def test_another_key_is_a_key_mismatch_naming_both_ids(
    store: OpenStore, tmp_path: Path
) -> None:
    """Not "bad signature": the document names the key it was signed with."""
    doc = await _export_from_other_machine(tmp_path)
    with pytest.raises(ImportKeyMismatch) as info:
        await store.import_(doc)
    assert info.value.doc_key_id == _signer(OTHER).key_id
    assert info.value.key_id == _signer(SECRET).key_id
    assert _signer(OTHER).key_id in str(info.value) and _signer(SECRET).key_id in str(info.value)
    assert "--key-file" in str(info.value)
    assert not await store.exists("s1")


async def test_an_edited_document_is_not_a_key_mismatch(store: OpenStore) -> None:
    await fill(store, "s1", 2)
    doc = await store.export("s1")
    await store.delete("s1")
    doc["messages"][0]["content"] = "forged"
    with pytest.raises(ImportRejected, match="edited after key") as info:
        await store.import_(doc)
    assert not isinstance(info.value, ImportKeyMismatch)


async def test_rekey_verifies_with_the_source_key_and_resigns(
    store: OpenStore, tmp_path: Path
) -> None:
    doc = await _export_from_other_machine(tmp_path)
    local = _signer(SECRET)
    moved = rekey(doc, _signer(OTHER), local, "f.json")
    assert moved["key_id"] == local.key_id
    meta = await store.import_(moved)
    assert meta.turn_count == 2 and await store.verify("s1") >= 6
    with pytest.raises(ImportKeyMismatch):  # the wrong key file for this document
        rekey(doc, _signer(b"a third key"), local, "f.json")
    edited = copy.deepcopy(doc)
    edited["messages"][1]["content"] = "forged"
    with pytest.raises(ImportRejected, match="edited"):
        rekey(edited, _signer(OTHER), local, "f.json")


# --------------------------------------------------------------------------- nesting


def test_a_deeply_nested_export_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(ImportRejected, match="nests too deeply"):
        read_export(path)


async def test_a_deeply_nested_document_is_rejected(store: OpenStore) -> None:
    await fill(store, "s1", 1)
    doc = await store.export("s1")
    await store.delete("s1")
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    doc["meta"]["working_memory"] = {"x": deep}
    with pytest.raises(ImportRejected):
        await store.import_(doc)
    with pytest.raises(ImportRejected):
        rekey(doc, _signer(SECRET), _signer(OTHER), "deep.json")


# --------------------------------------------------------------------------- export -o


@pytest.mark.parametrize("kind", ["symlink", "directory", "fifo", "device"])
def test_export_replaces_only_a_regular_file(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "out.json"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    if kind == "symlink":
        target.symlink_to(victim)
    elif kind == "directory":
        target.mkdir()
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        if os.geteuid() != 0:
            pytest.skip("making a device node needs root")
        os.mknod(target, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # like /dev/null
    before = os.lstat(target)
    with pytest.raises(ExportPathRefused, match="refusing to replace") as info:
        write_export(target, {"a": 1})
    assert str(target) in str(info.value)
    after = os.lstat(target)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    assert victim.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "victim.txt"]


# --------------------------------------------------------------------------- key file


def test_key_file_is_fsynced_with_its_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    load_key()
    path = key_file_path()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert synced == ["file", "dir"]


async def test_missing_key_of_an_existing_store_is_an_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    async with open_store(url) as s:
        await fill(s, "s1", 1)
    key = key_file_path()
    saved = key.read_bytes()
    key.unlink()
    with pytest.raises(StoreKeyMissing, match=r"key file .* is missing") as info:
        async with open_store(url) as s:
            pass
    assert url in str(info.value)
    assert not key.exists()  # no new key made
    key.write_bytes(saved)
    key.chmod(0o600)
    async with open_store(url) as s:
        assert await s.verify("s1") == 3


# --------------------------------------------------------------------------- paths


async def test_store_folder_must_exist(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/no/such/folder/s.db"
    with pytest.raises(StorePathInvalid, match="does not exist"):
        async with open_store(url, secret=SECRET):
            pass
    assert not (tmp_path / "no").exists()
    # Only the data directory (the default store's home) is made when missing.
    from sessions.store import data_dir, default_store_url

    assert not data_dir().exists()
    async with open_store(default_store_url(), secret=SECRET):
        pass
    assert (data_dir() / "turngraph.db").is_file()


async def test_store_under_a_regular_file_names_the_url(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    url = f"sqlite:///{tmp_path}/plain/sub/s.db"
    with pytest.raises(StorePathInvalid, match="is a file, not a folder") as info:
        async with open_store(url, secret=SECRET):
            pass
    assert str(info.value).startswith(url)


# --------------------------------------------------------------------------- secrets


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@127.0.0.1:1/db?password=hunter2",
        "postgresql://u@127.0.0.1:1/db?sslmode=disable&PassWord=hunter2&x=1",
        "host=127.0.0.1 port=1 password=hunter2 dbname=db",
        "host=127.0.0.1 password='hunter2 x' dbname=db",
        # the client key's passphrase, and a parameter name libpq percent-decodes
        "postgresql://u@127.0.0.1:1/db?sslpassword=hunter2",
        "postgresql://u@127.0.0.1:1/db?pass%77ord=hunter2&sslmode=disable",
        "host=127.0.0.1 port=1 sslpassword=hunter2 dbname=db",
    ],
)
async def test_no_password_in_store_errors(url: str) -> None:
    assert "hunter2" not in redact_url(url)
    with pytest.raises(StoreError) as info:
        async with open_store(url, secret=SECRET):
            pass
    assert "hunter2" not in str(info.value) and "hunter2" not in info.value.url


def test_scrub_hides_passwords_a_driver_echoes() -> None:
    url = "postgresql://u:s3cr%40t@h/db?password=hunter2"
    text = 'bad "s3cr@t" near password=hunter2 and hunter2'
    assert "hunter2" not in scrub(text, url) and "s3cr@t" not in scrub(text, url)
    assert redact_url("sqlite:///a.db") == "sqlite:///a.db"
    # a socket URL (empty host) keeps its '//' when only its query is redacted
    assert redact_url("postgresql:///db?host=/run&password=pw") == (
        "postgresql:///db?host=/run&password=***"
    )


# --------------------------------------------------------------------------- PostgreSQL


@pytest.mark.postgres
async def test_missing_key_of_a_postgres_store_with_sessions(pg_url: str) -> None:
    """A store without sessions may make the key; one with sessions may not."""
    async with open_store(pg_url):
        pass
    key_file_path().unlink()  # an empty store: a new key harms nothing
    async with open_store(pg_url) as s:
        await fill(s, "s1", 1)
    key_file_path().unlink()
    with pytest.raises(StoreKeyMissing, match="is missing"):
        async with open_store(pg_url):
            pass
    assert not key_file_path().exists()


@pytest.mark.postgres
async def test_salvage_reads_a_tampered_postgres_session(pg_url: str) -> None:
    import psycopg

    from sessions.store.salvage import salvage

    async with open_store(pg_url, secret=SECRET) as s:
        await fill(s, "s1", 3)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE records SET body=replace(body, 'hello', 'HELLO') WHERE rseq=3")
    found = await salvage(pg_url, _signer(SECRET), "s1")
    assert (found.verified, found.stored, found.stopped_at) == (3, 9, 3)
    assert [m.seq for m in found.messages] == [0, 1] and [t.turn for t in found.turns] == [1]
    assert found.state_ok and "MAC mismatch" in (found.reason or "")


@pytest.mark.parametrize(
    ("edit", "stopped", "reason", "state_ok"),
    [
        ("DELETE FROM records WHERE rseq=4", 4, "gap", True),
        ("UPDATE records SET mac=hex(mac) WHERE rseq=2", 2, "unsigned", True),
        ("UPDATE sessions SET turn_count=99", None, "state MAC mismatch", False),
    ],
    ids=["deleted", "mac-as-text", "row-edited"],
)
async def test_salvage_of_sqlite_sessions(
    tmp_path: Path, edit: str, stopped: int | None, reason: str, state_ok: bool
) -> None:
    import sqlite3

    from sessions.store.salvage import salvage

    url = f"sqlite:///{tmp_path}/s.db"
    async with open_store(url, secret=SECRET) as s:
        await fill(s, "s1", 3)
    conn = sqlite3.connect(tmp_path / "s.db")
    with conn:
        conn.execute(edit)
    conn.close()
    found = await salvage(url, _signer(SECRET), "s1")
    assert found.stopped_at == stopped and reason in (found.reason or "")
    assert found.state_ok is state_ok and not found.intact
    assert found.verified == (9 if stopped is None else stopped)
