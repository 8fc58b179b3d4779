"""``sessions verify``, ``show --salvage``, compaction in ``show``, ``import --key-file``
and the last error cases of the command line (issues 11 and 12), as a user meets them.

Everything is real: SQLite files, key files, subprocesses of ``python -m engine.run``.
The only stand-in is an import blocker (a ``sitecustomize`` on ``PYTHONPATH``) that makes
an installed optional extra look missing.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from engine import run as cli

ROOT = Path(__file__).resolve().parent.parent
TURN = str(ROOT / "graphs" / "turn.dot")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This machine's data dir (its key file is made on first use)."""
    monkeypatch.setenv("TURNGRAPH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TURNGRAPH_SECRET", raising=False)
    monkeypatch.delenv("TURNGRAPH_STORE", raising=False)
    return tmp_path / "home"


def _url(tmp_path: Path, name: str = "s.db") -> str:
    return f"sqlite:///{tmp_path / name}"


def _turns(url: str, sid: str, n: int, capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(n):
        assert cli.main([TURN, "-m", f"message {i}", "--session", sid, "--store", url]) == 0
    capsys.readouterr()


def _one_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    [line] = captured.err.splitlines()
    assert "Traceback" not in captured.err
    return line


def _tamper(path: Path, sid: str, rseq: int) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "UPDATE records SET body=replace(body, 'message', 'MESSAGE') "
            "WHERE session_id=? AND rseq=?",
            (sid, rseq),
        )
    conn.close()


# --------------------------------------------------------------------------- verify


def test_verify_reports_each_session_and_exits_2_on_tampering(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = _url(tmp_path)
    _turns(url, "good", 1, capsys)
    _turns(url, "bad", 3, capsys)
    assert cli.main(["sessions", "verify", "--store", url]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "ok        bad (9 records)",
        "ok        good (3 records)",
    ]
    _tamper(tmp_path / "s.db", "bad", 3)
    assert cli.main(["sessions", "verify", "--store", url]) == 2
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("TAMPERED  bad at record 3: MAC mismatch")
    assert lines[1] == "ok        good (3 records)"
    assert cli.main(["sessions", "verify", "good", "--json", "--store", url]) == 0
    assert json.loads(capsys.readouterr().out) == [{"id": "good", "ok": True, "records": 3}]
    assert cli.main(["sessions", "verify", "bad", "--json", "--store", url]) == 2
    [result] = json.loads(capsys.readouterr().out)
    assert result["ok"] is False and result["record"] == 3 and "MAC" in result["reason"]


@pytest.mark.parametrize(
    ("stored", "shown"),
    [("CAST(x'62ff41' AS TEXT)", "b\\xffA"), ("'b d!'", "b d!"), ("'b\x1b[2J'", "b\\x1b[2J")],
    ids=["not-utf8", "not-an-id", "escape-sequence"],
)
def test_verify_all_reports_an_unreadable_id_and_goes_on(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], stored: str, shown: str
) -> None:
    """A session row whose id was edited in the database into bytes that are not UTF-8,
    or text no id may hold: ``verify`` of the whole store names that row (escaped, so
    its bytes reach no terminal as they are) as failing and verifies the others (it
    stopped at that row with the bad id as the command's error); exit 2.  ``list``
    shows it escaped too."""
    url = _url(tmp_path)
    for sid in ("a", "b", "c"):
        _turns(url, sid, 1, capsys)
    with sqlite3.connect(tmp_path / "s.db") as conn:
        conn.execute(f"UPDATE sessions SET id={stored} WHERE id='b'")
    conn.close()
    assert cli.main(["sessions", "verify", "--store", url]) == 2
    captured = capsys.readouterr()
    assert captured.err == ""
    ok_a, bad, ok_c = captured.out.splitlines()
    assert (ok_a, ok_c) == ("ok        a (3 records)", "ok        c (3 records)")
    assert bad.startswith(f"TAMPERED  {shown} (record unknown): ") and bad.isprintable()
    assert "not a valid session id" in bad
    assert cli.main(["sessions", "verify", "--json", "--store", url]) == 2
    a, b, c = json.loads(capsys.readouterr().out)
    assert (a["ok"], c["ok"], b["ok"], b["record"]) == (True, True, False, -1)
    assert b["id"] == shown.replace("\\x1b", "\x1b") and "not a valid session id" in b["reason"]
    assert cli.main(["sessions", "list", "--store", url]) == 0  # listed the same way
    listed = capsys.readouterr()
    assert "\x1b" not in listed.out + listed.err and "(TAMPERED)" in listed.out
    assert f"metadata not verified: {shown} " in listed.err


# --------------------------------------------------------------------------- salvage


def test_show_salvage_reads_up_to_the_first_bad_record(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = _url(tmp_path)
    _turns(url, "s1", 3, capsys)
    _tamper(tmp_path / "s.db", "s1", 6)  # turn 3's user message
    line = _one_error(capsys, ["sessions", "show", "s1", "--store", url])
    assert "record 6" in line and "--salvage" in line
    before = (tmp_path / "s.db").read_bytes()
    assert cli.main(["sessions", "show", "--salvage", "s1", "--store", url]) == 0
    out = capsys.readouterr().out
    assert "6 of 9 records verified" in out
    assert "message 1" in out and "message 2" not in out and "MESSAGE" not in out
    assert "STOPPED at record 6: MAC mismatch" in out
    assert cli.main(["sessions", "show", "--salvage", "s1", "--json", "--store", url]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["stopped_at"] == 6 and doc["verified_records"] == 6 and not doc["intact"]
    assert [m["content"] for m in doc["messages_shown"]][-2:] == [
        "message 1",
        "echo: message 1",
    ]
    assert [t["turn"] for t in doc["turns_shown"]] == [1, 2]
    assert (tmp_path / "s.db").read_bytes() == before  # read-only


# --------------------------------------------------------------------------- summaries


def test_show_names_the_compaction_summary_and_what_it_replaced(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = _url(tmp_path)
    _turns(url, "s1", 7, capsys)
    assert cli.main(["sessions", "compact", "s1", "--store", url]) == 0
    assert "compacted" in capsys.readouterr().out
    assert cli.main(["sessions", "show", "s1", "--json", "--store", url]) == 0
    summary = json.loads(capsys.readouterr().out)["summary"]
    assert summary["upto_seq"] == 5 and summary["turns"] == [1, 3] and summary["content"]
    assert cli.main(["sessions", "show", "s1", "--store", url]) == 0
    assert "summary · replaces messages 0–5, turns 1–3" in capsys.readouterr().out


# --------------------------------------------------------------------------- key files


def test_import_from_another_machine_needs_its_key_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TURNGRAPH_SECRET", raising=False)
    monkeypatch.setenv("TURNGRAPH_HOME", str(tmp_path / "a"))
    _turns(_url(tmp_path, "a.db"), "s1", 2, capsys)
    export = tmp_path / "s1.json"
    assert (
        cli.main(["sessions", "export", "s1", "-o", str(export), "--store", _url(tmp_path, "a.db")])
        == 0
    )
    key_a = json.loads(export.read_text())["key_id"]
    assert (tmp_path / "a" / "secret.key").read_text().strip() not in export.read_text()

    monkeypatch.setenv("TURNGRAPH_HOME", str(tmp_path / "b"))
    b = _url(tmp_path, "b.db")
    _turns(b, "mine", 1, capsys)  # machine b has its own key now
    line = _one_error(capsys, ["sessions", "import", str(export), "--store", b])
    assert key_a in line and "signed with key" in line and "--key-file" in line
    assert "edited" not in line
    key_file = str(tmp_path / "a" / "secret.key")
    loose = tmp_path / "loose.key"
    loose.write_bytes(Path(key_file).read_bytes())
    loose.chmod(0o644)  # readable by others: refused, naming the fix
    line = _one_error(
        capsys, ["sessions", "import", str(export), "--key-file", str(loose), "--store", b]
    )
    assert str(loose) in line and "chmod 600" in line
    argv = ["sessions", "import", str(export), "--key-file", key_file, "--store", b]
    assert cli.main(argv) == 0
    assert "imported session s1 (2 turns" in capsys.readouterr().out
    assert cli.main(["sessions", "verify", "--store", b]) == 0


def test_missing_key_file_of_an_existing_store_is_one_line(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = _url(tmp_path)
    _turns(url, "s1", 1, capsys)
    (home / "secret.key").unlink()
    line = _one_error(capsys, ["sessions", "show", "s1", "--store", url])
    assert "key file" in line and "is missing" in line and url in line
    assert not (home / "secret.key").exists()


# --------------------------------------------------------------------------- files


def test_export_refuses_a_symlink_and_a_device(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = _url(tmp_path)
    _turns(url, "s1", 1, capsys)
    victim = tmp_path / "victim"
    victim.write_text("keep")
    link = tmp_path / "link.json"
    link.symlink_to(victim)
    line = _one_error(capsys, ["sessions", "export", "s1", "-o", str(link), "--store", url])
    assert "symbolic link" in line and str(link) in line
    assert link.is_symlink() and victim.read_text() == "keep"
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    line = _one_error(capsys, ["sessions", "export", "s1", "-o", str(fifo), "--store", url])
    assert "named pipe" in line


def test_store_in_a_missing_folder_is_refused(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/typo/s.db"
    line = _one_error(capsys, [TURN, "-m", "hi", "--session", "s1", "--store", url])
    assert "folder" in line and "does not exist" in line
    assert not (tmp_path / "typo").exists()
    (tmp_path / "file").write_text("x")
    url = f"sqlite:///{tmp_path}/file/s.db"
    line = _one_error(capsys, [TURN, "-m", "hi", "--session", "s1", "--store", url])
    assert line.startswith(f"error: {url}: ") and "is a file, not a folder" in line


def test_a_data_directory_under_a_file_names_the_default_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """$TURNGRAPH_HOME under a regular file: the default store's URL and the file are
    named, not a bare "[Errno 20] Not a directory"."""
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("TURNGRAPH_HOME", str(tmp_path / "file" / "home"))
    monkeypatch.delenv("TURNGRAPH_SECRET", raising=False)
    monkeypatch.delenv("TURNGRAPH_STORE", raising=False)
    line = _one_error(capsys, [TURN, "-m", "hi", "--session", "s1"])
    url = f"sqlite:///{tmp_path}/file/home/turngraph.db"
    assert line.startswith(f"error: {url}: {tmp_path}/file is a file, not a folder"), line


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@127.0.0.1:1/test?password=hunter2",
        "host=127.0.0.1 port=1 password=hunter2",
        "postgresql://u:hunter2@127.0.0.1:1/test?password=hunter2",
    ],
)
def test_no_password_in_cli_errors(
    home: Path, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (
        ["sessions", "list", "--store", url],
        [TURN, "-m", "hi", "--session", "s", "--store", url],
    ):
        line = _one_error(capsys, argv)
        assert "hunter2" not in line


# --------------------------------------------------------------------------- extras


BLOCKER = """
import importlib.abc, os, sys

class _Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in os.environ["BLOCK_IMPORTS"].split(","):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _Blocked())
"""


@pytest.mark.parametrize(
    ("blocked", "argv", "extra"),
    [
        (
            "psycopg,psycopg_pool",
            ["sessions", "list", "--store", "postgresql://u:pw@h/db"],
            "postgres",
        ),
        (
            "psycopg,psycopg_pool",
            [TURN, "-m", "hi", "--session", "s", "--store", "postgres://h/db"],
            "postgres",
        ),
        ("starlette", ["serve", "--port", "0"], "serve"),
        ("uvicorn", ["serve", "--port", "0"], "serve"),
    ],
    ids=["postgres-sessions", "postgres-turn", "serve-starlette", "serve-uvicorn"],
)
def test_a_missing_extra_is_one_line_naming_pip_install(
    tmp_path: Path, blocked: str, argv: list[str], extra: str
) -> None:
    """Run as a user would, with the extra's modules made unimportable.  (A missing
    openai or anthropic SDK already says so: tests/test_cli_llm.py.)"""
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    env = {
        **os.environ,
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}",
        "BLOCK_IMPORTS": blocked,
        "TURNGRAPH_HOME": str(tmp_path / "home"),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "engine.run", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.splitlines()
    assert f"pip install 'turngraph[{extra}]'" in line
    assert "pw@" not in line and "internal error" not in line
