"""``sessions verify`` and ``sessions show --salvage``: check chains, recover what verifies.

``verify [ID]`` checks every session's chain (or one) and prints one line per session:
``ok ID (N records)`` or ``TAMPERED ID at record N: reason``; exit 0 when all are ok,
2 otherwise.  A listed row whose id no session can have (edited in the database: bytes
that are not UTF-8, listed as their ``backslashreplace`` text, or characters outside
an id's) is such a line too, its id escaped, and the others are still verified.
``show --salvage ID`` reads a tampered session read-only up to its first bad record
(:mod:`sessions.store.salvage`) and marks where and why it stops.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from engine.cli.common import EXIT_BAD_INPUT, PROG, print_json, printable

__all__ = ["compaction_note", "salvage_show", "summary_turns", "verify_sessions"]


async def verify_sessions(store: Any, session_id: str | None, as_json: bool) -> int:
    """Verify one session or all of ``store``'s; print a line (or JSON) each; exit code."""
    ids = [session_id] if session_id is not None else await _all_ids(store)
    results = [await _verify_one(store, sid, named=session_id is not None) for sid in ids]
    if as_json:
        print_json(results)
    elif not results:
        print(f"no sessions in {store.url}")
    for r in [] if as_json else results:
        if r["ok"]:
            print(f"ok        {r['id']} ({r['records']} records)")
        else:
            print(f"TAMPERED  {printable(r['id'])} {_where(r['record'])}: {r['reason']}")
    return 0 if all(r["ok"] for r in results) else EXIT_BAD_INPUT


async def _all_ids(store: Any) -> list[str]:
    from sessions.store.base import SessionMatch

    ids: list[str] = []
    after: str | None = ""
    while after is not None:  # by keyset cursor: each page one index range, not an offset
        metas = await store.list_sessions(0, 1000, match=SessionMatch(after=after))
        ids.extend(m.id for m in metas)
        after = metas.scanned_to
    return ids


async def _verify_one(store: Any, sid: str, *, named: bool) -> dict[str, Any]:
    from sessions.errors import InvalidSessionId, SessionNotFound, SessionTampered, StoreCorrupt

    try:
        return {"id": sid, "ok": True, "records": await store.verify(sid)}
    except SessionNotFound:
        if named:
            raise
        return {"id": sid, "ok": True, "records": 0}  # deleted since it was listed
    except InvalidSessionId as exc:  # listed from the store: its row's id was edited
        if named:
            raise
        reason = f"the stored id is not a valid session id ({exc.reason}; edited in the database)"
        return {"id": sid, "ok": False, "record": -1, "reason": reason}
    except (SessionTampered, StoreCorrupt) as exc:  # a verdict on this session's data
        record = getattr(exc, "record", -1)
        return {"id": sid, "ok": False, "record": record, "reason": _reason(exc)}
    # Other store errors (locked, unreachable) are no verdict: they end the command.


def _reason(exc: Any) -> str:
    """The part of a store error's reason after ``session 'ID' record N:``."""
    reason = str(exc.reason)
    return reason.split(": ", 1)[1] if reason.startswith("session ") and ": " in reason else reason


def _where(record: int) -> str:
    return f"at record {record}" if record >= 0 else "(record unknown)"


# --------------------------------------------------------------------------- salvage


async def salvage_show(args: argparse.Namespace, url: str) -> int:
    """``show --salvage``: print what verifies of a (tampered) session, read-only."""
    from sessions.store.salvage import salvage
    from sessions.store.signing import Signer, load_key

    signer = Signer(load_key(existing_store=url))  # never a new key: nothing would verify
    found = await salvage(url, signer, args.id)
    last = max(1, args.last)
    if args.json:
        print_json(_salvage_dict(found, last))
    else:
        _print_salvage(found, last)
    return 0


def _salvage_dict(s: Any, last: int) -> dict[str, Any]:
    return {
        "id": s.session_id,
        "salvaged": True,
        "intact": s.intact,
        "state_verified": s.state_ok,
        "verified_records": s.verified,
        "stored_records": s.stored,
        "stopped_at": s.stopped_at,
        "reason": s.reason,
        "summaries": [
            {"upto_seq": u, "content": m.content, "turns": summary_turns(s.messages, u)}
            for u, m in s.summaries
        ],
        "messages_shown": [
            {"seq": m.seq, "role": m.role, "content": m.content, "turn": m.turn}
            for m in s.messages[-last:]
        ],
        "turns_shown": [
            {"turn": t.turn, "status": t.status, "nodes": list(t.trace), "error": t.error}
            for t in s.turns[-last:]
        ],
    }


def summary_turns(messages: Sequence[Any], upto: int) -> list[int] | None:
    """``[first, last]`` turn of the messages ``0..upto`` a summary replaced (``None``
    when they are not all in ``messages``)."""
    if not 0 <= upto < len(messages):
        return None
    return [messages[0].turn, messages[upto].turn]


def compaction_note(upto: int, turns: Sequence[int] | None) -> str:
    """How a summary is titled: what it replaced."""
    span = f", turns {turns[0]}–{turns[1]}" if turns else ""
    return f"summary · replaces messages 0–{upto}{span}"


def _print_salvage(s: Any, last: int) -> None:
    from rich.table import Table

    from engine.cli.views import print_renderable, turns_table

    state = "verified" if s.state_ok else "NOT verified (metadata untrusted)"
    print(
        f"SALVAGE of session {s.session_id} (read-only): {s.verified} of {s.stored} "
        f"records verified; session row {state}"
    )
    for upto, m in s.summaries:
        print(f"[{compaction_note(upto, summary_turns(s.messages, upto))}] {m.content}")
    table = Table(title=f"messages (last {last} recovered)", title_justify="left")
    for name in ("seq", "turn", "role", "content"):
        table.add_column(name, justify="right" if name in ("seq", "turn") else "left")
    for m in s.messages[-last:]:
        table.add_row(str(m.seq), str(m.turn), m.role, m.content.replace("[", r"\["))
    print_renderable(table)
    print_renderable(turns_table(list(s.turns[-last:])))
    if s.stopped_at is not None:
        print(
            f"--- STOPPED at record {s.stopped_at}: {s.reason}. Records from here on "
            f"({s.stored - s.stopped_at} stored) are not shown: they cannot be trusted. "
            f"Save what is above, then `{PROG} sessions delete {s.session_id}`."
        )
    elif not s.state_ok:
        print(f"--- every record verified, but the session row did not: {s.reason}")
    else:
        print("--- every record verified: the session is intact")
