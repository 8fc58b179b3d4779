"""``python -m engine.run sessions ...``: list, show, verify, export, import, delete,
compact stored sessions, answer a paused turn's question, retry a failed turn, with rich
tables.  Every action opens the store named by ``--store``
(default ``$TURNGRAPH_STORE``, else SQLite in the data directory) and closes it.

Only ``import`` may create the store; the other actions refuse a store that does not
exist (``no such store: PATH``), so a mistyped path makes no folders or empty database.
``list`` shows a session whose metadata fails verification as ``ID (TAMPERED)``
(``"tampered": true`` with ``--json``, the id alone) and warns on stderr, so one edited
row never hides the rest (a row whose values cannot even be decoded, such as a MAC
stored as text or invalid UTF-8, is listed the same way).  ``list`` exits 0 when it
could list the store, tampered sessions or not: the warning says which.  ``show`` of
such a session is refused (exit 2, naming the problem), ``show --salvage`` reads it up
to its first bad record and ``verify`` names that record (:mod:`engine.cli.recovery`).
``import --key-file K`` takes an export signed on another machine: verified with that
machine's key file, re-signed with the local key.

``answer ID CHOICE [--node NODE]`` runs a turn paused at a human gate on along
``CHOICE`` (refused when ``NODE``, the gate you saw asking, is not the one waiting now:
a timeout took that question on) and ``retry
ID`` re-runs a failed turn from the node that failed (kept when the turn ran with
``--checkpoint``); both run the turn graph ``--graph`` (default the shipped
``turn.dot``: the graph the turn ran with, or the retry is refused), read in
``--dialect`` and with shell commands off unless ``--allow-shell`` (as the turn ran),
and report the turn as ``-m`` does.  A refused answer or retry is one line on stderr
and exit 2.  ``show`` says when a question waits or a failed turn can be retried.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from engine.cli.common import (
    PROG,
    Parser,
    add_dialect_option,
    add_llm_options,
    check_output,
    configure_logging,
    dialect_graph,
    err,
    model_of,
    print_json,
    printable,
    refuse_shell,
    shell_allowed,
    store_url,
)

__all__ = ["ACTIONS", "cmd_sessions"]


_LIST_LIMIT = 100
"""``sessions list``'s page size unless ``--limit`` says."""


def _page_size(text: str) -> int:
    """``--limit``'s value: a page of at least one session (a page of none has no cursor
    to continue from; ``GET /sessions`` refuses ``limit=0`` too)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a number of sessions from 1, not {text!r}")
    return n


def _sessions_parser() -> Parser:
    p = Parser(prog=f"{PROG} sessions", description="Inspect and manage stored sessions.")
    p.add_argument("--store", metavar="URL", help="store URL (default: $TURNGRAPH_STORE)")
    p.add_argument("-v", "--verbose", action="store_true", help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=Parser)
    ls = sub.add_parser("list", help="every session, a page at a time")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--limit", type=_page_size, default=_LIST_LIMIT, metavar="N")
    ls.add_argument("--after", metavar="ID", default="", help="list the sessions after ID")
    ls.add_argument("--agent", metavar="AGENT", help="only sessions of this agent")
    ls.add_argument(
        "--type", choices=("primary", "background", "delegation", "consultation"), default=None
    )
    show = sub.add_parser("show", help="a session's metadata, messages and turns (verified)")
    show.add_argument("id")
    show.add_argument("--json", action="store_true")
    show.add_argument("-n", "--last", type=int, default=20, help="messages/turns to show")
    show.add_argument(
        "--salvage", action="store_true", help="read a tampered session up to its first bad record"
    )
    ver = sub.add_parser("verify", help="check sessions' chains (exit 2 if any is tampered)")
    ver.add_argument("id", nargs="?", help="one session (default: all)")
    ver.add_argument("--json", action="store_true")
    exp = sub.add_parser("export", help="write a signed JSON export")
    exp.add_argument("id")
    exp.add_argument("-o", "--output", metavar="FILE", required=True, help="- for stdout")
    imp = sub.add_parser("import", help="verify and store an export file")
    imp.add_argument("file")
    imp.add_argument("--replace", action="store_true", help="overwrite an existing session")
    imp.add_argument(
        "--key-file", metavar="K", help="the exporting machine's key file (re-signed locally)"
    )
    sub.add_parser("delete", help="delete a session").add_argument("id")
    compact = sub.add_parser("compact", help="summarise old messages (with --llm, by the model)")
    compact.add_argument("id")
    add_llm_options(compact)
    answer = sub.add_parser("answer", help="answer the question a paused turn waits on")
    answer.add_argument("id")
    answer.add_argument("choice")
    answer.add_argument(
        "--node",
        metavar="NODE",
        help="the gate whose question you answer: refused if another gate waits now",
    )
    retry = sub.add_parser("retry", help="re-run a failed turn from the node that failed")
    retry.add_argument("id")
    for going_on in (answer, retry):
        going_on.add_argument(
            "--graph", metavar="GRAPH", help="the turn graph (default: the shipped turn.dot)"
        )
        going_on.add_argument("--json", action="store_true", help="print one JSON object")
        add_llm_options(going_on)
        add_dialect_option(going_on, shell=True)
    for action in sub.choices.values():  # the shared options work after the action too
        action.add_argument("--store", metavar="URL", default=argparse.SUPPRESS)
        action.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS)
    return p


def cmd_sessions(argv: Sequence[str]) -> int:
    args = _sessions_parser().parse_args(argv)
    import anyio

    if getattr(args, "id", None) is not None:
        from sessions.store import validate_session_id

        validate_session_id(args.id)
    configure_logging(args.verbose)
    return anyio.run(ACTIONS[args.action], args)


def _existing_store(args: argparse.Namespace) -> Any:
    """The ``--store`` store for a read-only action: never created if missing."""
    from sessions.store import open_store

    return open_store(store_url(args.store), create=False)


def _default_store_missing(args: argparse.Namespace) -> bool:
    """True on a fresh install: no store named anywhere, and the default file not made yet."""
    import os

    from sessions.store import data_dir

    if args.store or os.environ.get("TURNGRAPH_STORE"):
        return False
    return not (data_dir() / "turngraph.db").exists()


async def _sessions_list(args: argparse.Namespace) -> int:
    from engine.cli.views import print_renderable, sessions_table

    if _default_store_missing(args):
        # Nothing has run yet: an empty list is the truth, not an error.
        if args.json:
            print_json([])
        else:
            print("no sessions yet")
        return 0
    from sessions.store.base import Listed, SessionMatch

    match = SessionMatch(agent_id=args.agent, type=args.type, after=args.after)
    async with _existing_store(args) as store:
        metas = await store.list_sessions(0, args.limit, match=match)
        url = store.url
    if args.json:
        print_json([_listed_dict(m) for m in metas])
    else:
        print_renderable(sessions_table(list(map(_listed_row, metas)), title=f"sessions in {url}"))
    tampered = [m.id for m in metas if m.tampered]
    if tampered:
        err(
            f"warning: {len(tampered)} tampered session(s), metadata not verified: "
            f"{', '.join(map(printable, tampered))} (`{PROG} sessions show ID` says why)"
        )
    if isinstance(metas, Listed) and metas.scanned_to is not None:
        err(f"more sessions follow: `{_next_page(args, metas.scanned_to)}`")
    return 0


def _next_page(args: argparse.Namespace, after: str) -> str:
    """The ``list`` command of the page after ``after``: the same filters and page size
    (else the hint would list other agents' sessions), each value one shell word, the
    cursor as ``--after=ID`` (an id may start with ``-``).  The store URL is left out:
    it may hold a password."""
    import shlex

    words = [f"--after={after}"]
    words += [f"--{name}={value}" for name in ("agent", "type") if (value := getattr(args, name))]
    words += ["--json"] if args.json else []
    words += [f"--limit={args.limit}"] if args.limit != _LIST_LIMIT else []
    return f"{PROG} sessions list " + " ".join(map(shlex.quote, words))


def _listed_dict(meta: Any) -> dict[str, Any]:
    """A ``list --json`` entry: a tampered session is its id alone (nothing verified)."""
    if meta.tampered:
        return {"id": meta.id, "tampered": True}
    return {**_meta_dict(meta), "tampered": False}


def _listed_row(meta: Any) -> Any:
    """A table row's object: a tampered session shows its id marked, no values."""
    if not meta.tampered:
        return meta
    from types import SimpleNamespace

    unknown = "?"
    return SimpleNamespace(
        id=f"{printable(meta.id)} (TAMPERED)",
        type=unknown,
        turn_count=unknown,
        message_count=unknown,
        cognitive_mode=unknown,
        updated_at=0.0,
    )


def _meta_dict(meta: Any) -> dict[str, Any]:
    return {
        "id": meta.id,
        "agent_id": meta.agent_id,
        "type": meta.type,
        "turns": meta.turn_count,
        "messages": meta.message_count,
        "cognitive_mode": meta.cognitive_mode,
        "goals": list(meta.goals),
        "working_memory": dict(meta.working_memory),
        "created_at": meta.created_at,
        "updated_at": meta.updated_at,
    }


async def _sessions_show(args: argparse.Namespace) -> int:
    from engine.cli.recovery import salvage_show
    from sessions.gates import waiting_of
    from sessions.usage import stored_usage

    if args.salvage:
        return await salvage_show(args, store_url(args.store))
    last = max(1, args.last)
    async with _existing_store(args) as store:
        checked = await _verified(store, args.id)  # tampering is an error, not a display
        loaded = await store.load(args.id, recent=last)
        meta = loaded.meta
        turns = await store.turns(args.id, max(0, meta.turn_count - last), last)
        usage = (await stored_usage(store, args.id)).to_dict()  # every turn, not --last
        summary = None
        if loaded.summary is not None and meta.summary_upto >= 0:
            upto = meta.summary_upto
            # Only the two ends of the replaced span are read, not all of it.
            first = await store.messages(args.id, 0, 1)
            last_one = await store.messages(args.id, upto, 1)
            span = [first[0].turn, last_one[0].turn] if first and last_one else None
            summary = (upto, loaded.summary, span)
    waiting = waiting_of(meta.id, loaded.checkpoint)
    if args.json:
        doc = _meta_dict(meta)
        doc["verified_records"] = checked
        doc["usage"] = usage
        doc.update(waiting)
        doc["messages_shown"] = [
            {"seq": m.seq, "role": m.role, "content": m.content, "turn": m.turn}
            for m in loaded.recent
        ]
        doc["turns_shown"] = [
            {"turn": t.turn, "status": t.status, "nodes": list(t.trace), "error": t.error}
            for t in turns
        ]
        doc["summary"] = None
        if summary is not None:
            upto, message, span = summary
            doc["summary"] = {"upto_seq": upto, "turns": span, "content": message.content}
        print_json(doc)
        return 0
    _print_session(meta, loaded.recent, turns, checked, summary)
    _print_waiting(meta.id, waiting)
    if usage["calls"]:
        from engine.cli.views import print_renderable, usage_table

        print_renderable(usage_table(usage, title=f"usage · {usage['turns']} turns"))
    return 0


def _print_session(
    meta: Any,
    messages: Sequence[Any],
    turns: Sequence[Any],
    checked: int,
    summary: tuple[int, Any, list[int] | None] | None,
) -> None:
    from rich.table import Table

    from engine.cli.recovery import compaction_note
    from engine.cli.views import print_renderable, sessions_table, turns_table

    print_renderable(
        sessions_table([meta], title=f"session {meta.id} · {checked} records verified")
    )
    if summary is not None:
        upto, message, span = summary
        print(f"[{compaction_note(upto, span)}] {message.content}")
    table = Table(title="messages", title_justify="left")
    for name in ("seq", "turn", "role", "content"):
        table.add_column(name, justify="right" if name in ("seq", "turn") else "left")
    for m in messages:
        table.add_row(str(m.seq), str(m.turn), m.role, m.content.replace("[", r"\["))
    print_renderable(table)
    print_renderable(turns_table(turns))


def _print_waiting(session_id: str, waiting: Mapping[str, Any]) -> None:
    q, retry = waiting["question"], waiting["retry"]
    if q is not None:
        choices = " / ".join(q["choices"])
        print(
            f"turn {q['turn']} waits at node {q['node']!r}: {q['question']} [{choices}] "
            f"(answer: {PROG} sessions answer {session_id} CHOICE)"
        )
    if retry is not None:
        print(
            f"turn {retry['turn']} failed at node {retry['node']!r} "
            f"(retry: {PROG} sessions retry {session_id})"
        )


async def _verified(store: Any, session_id: str) -> int:
    """``store.verify``; a tampered session's error points at ``show --salvage``."""
    from sessions.errors import SessionTampered

    try:
        return int(await store.verify(session_id))
    except SessionTampered as exc:
        hint = f"`{PROG} sessions show --salvage {session_id}` shows what precedes it"
        raise SessionTampered(
            exc.url, session_id, exc.record, f"{exc.reason.split(': ', 1)[-1]} ({hint})"
        ) from None


async def _sessions_export(args: argparse.Namespace) -> int:
    from sessions.store import write_export

    async with _existing_store(args) as store:
        doc = await store.export(args.id)
    if args.output == "-":
        print_json(doc)
        return 0
    check_output(args.output)
    path = write_export(args.output, doc)
    print(f"exported session {args.id} to {path}")
    return 0


async def _sessions_import(args: argparse.Namespace) -> int:
    from sessions.store import open_store, read_export
    from sessions.store.export import rekey
    from sessions.store.signing import Signer, load_key, read_key_file

    doc = read_export(args.file)
    # The key file is read before the store opens: a bad one leaves nothing made.
    source = None if args.key_file is None else Signer(read_key_file(args.key_file))
    async with open_store(store_url(args.store)) as store:
        if source is not None:
            # The store is open, so the local key exists (or was refused as missing).
            doc = rekey(doc, source, Signer(load_key()), args.file)
        meta = await store.import_(doc, replace=args.replace)
    print(f"imported session {meta.id} ({meta.turn_count} turns, {meta.message_count} messages)")
    return 0


async def _sessions_verify(args: argparse.Namespace) -> int:
    from engine.cli.recovery import verify_sessions

    async with _existing_store(args) as store:
        return await verify_sessions(store, args.id, args.json)


async def _sessions_delete(args: argparse.Namespace) -> int:
    from sessions.errors import SessionNotFound

    async with _existing_store(args) as store:
        if not await store.delete(args.id):
            raise SessionNotFound(args.id, "no such session")
    print(f"deleted session {args.id}")
    return 0


async def _sessions_compact(args: argparse.Namespace) -> int:
    from sessions import SessionManager

    # The model a chat with --llm summarised with, so a compaction from here matches it.
    llm = model_of(args)
    try:
        async with _existing_store(args) as store, SessionManager(store, llm=llm) as manager:
            result = await manager.compact(args.id)
    finally:
        from engine.cli.main import aclose_llm

        await aclose_llm(llm)
    if result.messages_compacted == 0:
        print(f"session {args.id}: nothing compacted ({result.reason or 'nothing old enough'})")
    else:
        m = result.to_dict()
        print(
            f"session {args.id}: compacted {m['messages_compacted']} messages, "
            f"{m['tokens_before']} → {m['tokens_after']} tokens"
        )
    return 0


async def _sessions_answer(args: argparse.Namespace) -> int:
    return await _go_on(args, lambda session: session.answer(args.choice, node=args.node))


async def _sessions_retry(args: argparse.Namespace) -> int:
    return await _go_on(args, lambda session: session.retry_turn())


async def _go_on(args: argparse.Namespace, step: Callable[[Any], Awaitable[Any]]) -> int:
    """Load the session with the turn graph, run ``step`` on it, report the turn."""
    from engine.cli.main import aclose_llm, live_printer, report_session_turn
    from sessions import Limits, SessionManager

    llm = model_of(args)
    live = live_printer(llm, args.json)
    allow = shell_allowed(args)
    manager = SessionManager(
        _existing_store(args),
        turn_graph=dialect_graph(args.graph, args.dialect),
        log_nodes=args.verbose,
        llm=llm,
        limits=Limits(checkpoint=True),  # a retried turn that fails can be retried again
        allow_shell=allow,
    )
    if not allow:
        refuse_shell(manager.turn_graph)
    if live is not None:
        manager.engine.observers = (*manager.engine.observers, live)
    try:
        async with manager:
            result = await step(await manager.get(args.id))
    finally:
        await aclose_llm(llm)
    return report_session_turn(manager.turn_graph, args.id, result, args.json, live)


ACTIONS: Mapping[str, Callable[[argparse.Namespace], Awaitable[int]]] = {
    "list": _sessions_list,
    "show": _sessions_show,
    "verify": _sessions_verify,
    "export": _sessions_export,
    "import": _sessions_import,
    "delete": _sessions_delete,
    "compact": _sessions_compact,
    "answer": _sessions_answer,
    "retry": _sessions_retry,
}
