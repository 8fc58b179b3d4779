"""``python -m engine.run``: run, chat with, validate and render turn graphs; manage sessions.

::

    python -m engine.run [GRAPH.dot] -m TEXT [--json] [-v]  one turn, offline adapters
                                                            (-m -: the message from stdin)
    python -m engine.run [GRAPH.dot] [-v]                   chat: an in-memory session
                                                            (see :mod:`engine.cli.chat`)
    python -m engine.run [GRAPH.dot] [-m TEXT] --session ID [--store URL] [--checkpoint]
                                                            a turn (or a chat) of a stored
                                                            session, created if new
                                                            (--checkpoint: a failed turn
                                                            can be retried)
    python -m engine.run validate [--strict] GRAPH.dot...   every problem, compiler-style
                                                            (--strict: warnings fail too)
    ... [--dialect attractor] [--allow-shell]               run, validate and render read
                                                            Attractor's pipelines
                                                            (engine/attractor.py)
    python -m engine.run render GRAPH.dot [-o FILE]         .dot, or .svg/.png/.pdf (Graphviz);
                                                            a failing graph is drawn with its
                                                            problems in red (exit 2)
    python -m engine.run render GRAPH.dot --trace SESSION:TURN [--store URL] [-o FILE]
                                                            a stored turn's path highlighted
    python -m engine.run sessions [--store URL] list|show ID|export ID -o FILE|
                                  import FILE [--replace] [--key-file K]|delete ID|
                                  compact ID|verify [ID] [--json]|show --salvage ID|
                                  answer ID CHOICE [--graph G]|retry ID [--graph G]
                                                            (verify: exit 2 if any session
                                                            is tampered; --salvage: read a
                                                            tampered one up to its first bad
                                                            record)
    python -m engine.run serve [--host H] [--port P] [--store URL] [--llm SPEC] [--graph G]
                                                            the HTTP API (the serve extra;
                                                            see engine/cli/serve.py)

Without ``GRAPH.dot`` a turn runs the shipped ``turn.dot`` (:mod:`graphs`).  The
installed console script ``turngraph`` is this command.

``--llm SPEC`` (else ``$TURNGRAPH_LLM``, else ``echo``) picks the model of a run or a
chat: ``echo`` (offline), ``openai:MODEL`` or ``anthropic:MODEL``; ``--llm-base-url``
points it at any compatible server.  A hosted model's reply is printed as it streams.

The store defaults to ``$TURNGRAPH_STORE``, else SQLite under ``$TURNGRAPH_HOME``
(``~/.local/share/turngraph``); see :func:`sessions.store.open_store`.

``TURNGRAPH_OTEL=1`` traces session turns with OpenTelemetry (the ``otel`` extra), into
whatever tracer provider the process has (``opentelemetry-instrument`` configures one).

Exit status: 0 success; 1 a run failed at a node; 2 bad input (arguments, a missing,
empty, binary or malformed graph, a validation error, a bad or missing session id, a
corrupt or tampered store or export, a store's optional extra not installed, Graphviz
missing for images, a message with control characters or bytes that are not UTF-8,
output that cannot be written: a full disk, with one line naming the stream);
130 interrupted (``error: interrupted``); 143 and 129 a chat ended by SIGTERM or SIGHUP;
70 an internal bug.  A reader that leaves (``... | head -1``) is quiet, whatever the
command: its output is dropped and the command ends with its own code.
``--json`` prints the keys :data:`~engine.cli.common.JSON_KEYS`, with or without a
session, and for a command refused before it has a turn to report or interrupted too
(``status`` ``"error"``, ``error`` the stderr line; :func:`~engine.cli.common.error_json`);
``$TURNGRAPH_LEASE_TTL`` sets the lease of a stored session's turn or chat.  Errors
are one line on stderr (``path:line:col: error: ...`` for graphs), never a traceback
(``-v`` adds one for internal bugs, and node logs).

Start-up is kept short by importing rich, the handlers and the session machinery only
in the commands that use them.  Only this module configures structlog.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from engine.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_RUN_FAILED,
    JSON_KEYS,
    PROG,
    BadMessage,
    Parser,
    UsageError,
    add_dialect_option,
    add_llm_options,
    check_output,
    checked_message,
    configure_logging,
    dialect_graph,
    err,
    error_json,
    forget_printed,
    lease_ttl,
    model_of,
    one_line,
    print_json,
    quiet_std_streams,
    read_stdin_message,
    redact,
    refuse_shell,
    shell_allowed,
    stdout_error,
    store_url,
    wants_json,
)
from engine.errors import TurngraphError

if TYPE_CHECKING:
    from engine.cli.views import LivePrinter
    from engine.graph import Graph
    from engine.outcome import NodeRecord, RunResult
    from engine.registry import HandlerRegistry
    from engine.runner import Engine

__all__ = ["EXIT_BAD_INPUT", "EXIT_INTERRUPTED", "EXIT_RUN_FAILED", "main", "one_line"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    forget_printed()
    try:
        command = _COMMANDS.get(args[0]) if args else None
        return command(args[1:]) if command else _cmd_run(args)
    except BaseException as exc:  # every way out becomes one line and an exit code
        verbose = "-v" in args or "--verbose" in args
        return _exit_code(_leaf(exc), verbose=verbose, as_json=wants_json(args))


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups from task groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _exit_code(exc: BaseException, verbose: bool, as_json: bool = False) -> int:
    """Report ``exc`` as one stderr line (and, with ``--json``, one JSON object on
    stdout) and choose the exit code (re-raise the rest)."""
    if isinstance(exc, SystemExit):  # argparse's --help
        return exc.code if isinstance(exc.code, int) else 0
    code, kind = EXIT_BAD_INPUT, type(exc).__name__
    if isinstance(exc, KeyboardInterrupt):  # Ctrl-C: a script still reads why it ended
        line, code = "error: interrupted", EXIT_INTERRUPTED
    elif isinstance(exc, UsageError):
        line = str(exc)
    elif isinstance(exc, TurngraphError):
        line = one_line(exc)
    elif isinstance(exc, OSError | UnicodeError):
        line = f"error: {exc}"
    elif isinstance(exc, Exception):  # a bug of ours: say so in one line, no traceback
        line = f"error: internal error: {kind}: {exc} (rerun with -v for details)"
        code, kind = EXIT_INTERNAL, "InternalError"
    else:
        raise exc
    line = redact(line.replace("\n", " "))
    err(line)
    if verbose and code == EXIT_INTERNAL:
        import traceback

        traceback.print_exception(exc)
    if as_json:
        error_json(line, kind)
    return code


# --------------------------------------------------------------------------- shared


def _load(path: str, registry: HandlerRegistry, dialect: str | None = None) -> Graph:
    """The graph at ``path``, checked against ``registry``; only files, never DOT text."""
    from pathlib import Path

    from engine.loader import load_graph

    # A Path, not the str: load_graph reads a str holding "{" as DOT text.
    return load_graph(Path(path), registry=registry, cache_dir=_graph_cache_dir(), dialect=dialect)


def _graph_cache_dir() -> str:
    """Compiled graphs under the data directory (as ``sessions.store.data_dir`` finds it,
    without importing the session machinery, which a graph run does not need)."""
    home = os.environ.get("TURNGRAPH_HOME") or os.path.expanduser("~/.local/share/turngraph")
    return os.path.join(home, "graph-cache")


def _engine(registry: HandlerRegistry, verbose: bool, live: LivePrinter | None = None) -> Engine:
    from engine.runner import Engine

    observers: list[Any] = [live] if live is not None else []
    if verbose:
        from engine.events import StructlogObserver

        observers.append(StructlogObserver())
    return Engine(registry, observers=observers)


def live_printer(llm: Any, as_json: bool, prefix: str = "") -> LivePrinter | None:
    """A printer of streamed text, for a model that streams and output that is not JSON."""
    if llm is None or as_json or not hasattr(llm, "respond"):
        return None
    from engine.cli.views import LivePrinter

    return LivePrinter(prefix=prefix)


def print_reply(reply: Any, live: LivePrinter | None, prefix: str = "") -> None:
    """The reply, unless it was already printed as it streamed."""
    text = reply if reply is not None else ""
    if live is not None and live.started:
        live.end_line()
        if text == live.last_text:
            return
    print(f"{prefix}{text}")


def turn_context(
    text: str,
    *,
    history: Sequence[Any] = (),
    session_id: str = "cli",
    turn_count: int = 0,
) -> dict[str, Any]:
    """The ``session.*`` keys a turn graph expects (see :mod:`handlers`)."""
    return {
        "session.input": text,
        "session.history": history,
        "session.id": session_id,
        "session.turn_count": turn_count,
        "session.goals": (),
        "session.working_memory": {},
    }


def run_failure_line(graph: Graph, error: BaseException | None, status: str) -> str:
    """``path:line:col: error: ...`` for the node a run failed at."""
    node = graph.nodes.get(str(getattr(error, "node_id", "")))
    where = f"{graph.path}:{node.line}:{node.col}" if node else graph.path
    return f"{where}: error: {' '.join(str(error or status).split())}"


def report_turn(
    graph: Graph,
    *,
    status: str,
    reply: Any,
    trace: Sequence[NodeRecord],
    error: BaseException | None,
    as_json: bool,
    live: LivePrinter | None = None,
    **extra: Any,
) -> int:
    """Print a finished turn (reply and node table, or one JSON object); the exit code.

    A turn paused at a human gate prints its question and exits 0: it is waiting, not
    failed (``sessions answer ID CHOICE`` goes on)."""
    from engine.cli.views import nodes_table, print_renderable, trace_rows
    from engine.errors import GatePaused

    ok = status == "success"
    gate = error if isinstance(error, GatePaused) else None
    if as_json:
        # The same keys for every turn (JSON_KEYS, null when absent), with or without
        # a session, so a script reads one shape.
        doc: dict[str, Any] = dict.fromkeys(JSON_KEYS)
        doc.update(status=status, reply=reply, graph=graph.path, **extra)
        if doc["usage"] is None:
            from engine.outcome import total_usage

            doc["usage"] = total_usage(trace)
        doc["nodes"] = trace_rows(trace)
        if error is not None:
            doc["error"] = " ".join(str(error).split())
            doc["error_kind"] = type(error).__name__
        if gate is not None:
            doc["question"] = {
                "node": gate.node_id,
                "question": gate.question,
                "choices": list(gate.choices),
            }
        print_json(doc)
    else:
        if ok:
            print_reply(reply, live)
        elif live is not None:
            live.end_line()
        where = ""
        if "turn" in extra:
            where = f"session {extra['session_id']} · turn {extra['turn']} · "
        print_renderable(nodes_table(trace, title=f"{where}{graph.path} · {status}"))
        if gate is not None:
            sid = extra.get("session_id", "ID")
            print(
                f"waiting at node {gate.node_id!r}: {gate.question} [{' / '.join(gate.choices)}]"
                f" (answer: {PROG} sessions answer {sid} CHOICE)"
            )
    if gate is not None:
        return 0
    if not ok:
        err(run_failure_line(graph, error, status))
        return EXIT_RUN_FAILED
    return 0


def _report_run(
    graph: Graph, result: RunResult, as_json: bool, live: LivePrinter | None = None
) -> int:
    from engine.outcome import total_usage

    usage = result.context.get("llm.usage")
    per_node = total_usage(result.trace)
    if per_node is not None:
        usage = {**(usage or {}), **per_node}
    return report_turn(
        graph,
        status=result.status,
        reply=result.context.get("reply"),
        trace=result.trace,
        error=result.error,
        as_json=as_json,
        live=live,
        run_id=result.run_id,
        usage=usage,
    )


# --------------------------------------------------------------------------- run / chat


def _run_parser() -> Parser:
    p = Parser(
        prog=PROG,
        description="Run a turn graph (one turn with -m, else a chat).",
        epilog=f"other commands: {PROG} validate|render|sessions --help",
    )
    p.add_argument("graph", nargs="?", help="the .dot turn graph (default: the shipped turn.dot)")
    p.add_argument(
        "-m", "--message", help="run one turn with this input and exit (-: read standard input)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object (with -m)")
    p.add_argument("--session", metavar="ID", help="continue (or start) a stored session")
    p.add_argument("--store", metavar="URL", help="store URL (default: $TURNGRAPH_STORE)")
    p.add_argument(
        "--checkpoint",
        action="store_true",
        help="save a stored session's turn after every node (a failed turn can be retried)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="node logs on stderr")
    add_llm_options(p)
    add_dialect_option(p, shell=True)
    return p


def _cmd_run(argv: Sequence[str]) -> int:
    args = _run_parser().parse_args(argv)
    if args.json and args.message is None:
        raise UsageError(f"{PROG}: error: --json needs -m TEXT (see --help)")
    if args.graph is None and args.message is None and args.session is None:
        raise UsageError(f"{PROG}: error: a chat needs GRAPH.dot or --session ID (see --help)")
    if sys.stdin is None:  # started with standard input closed (`<&-`): nothing to read
        if args.message is None:
            raise UsageError(f"{PROG}: error: a chat reads standard input, which is closed")
        if args.message == "-":
            raise BadMessage("standard input: error: -m - reads standard input, which is closed")
    message = args.message = _message(args.message)
    if message is None and args.session is None and args.store is None:
        # A chat is a session kept in memory: the same history window, working
        # memory and compaction as a stored one, gone when the chat ends.
        args.session, args.store = "cli", "memory:"
    if message is None or args.session is not None or args.store is not None:
        return _run_session(args)
    from handlers import build_registry

    llm = model_of(args)
    allow = shell_allowed(args)
    options: dict[str, Any] = {} if llm is None else {"llm": llm}
    if allow:
        options["allow_shell"] = True
    registry = build_registry(**options)
    if args.graph is None:
        from engine.loader import load_graph
        from graphs import graph_source

        graph = load_graph(graph_source("turn.dot"), registry=registry, dialect=args.dialect)
    else:
        graph = _load(args.graph, registry, args.dialect)
    if not allow:
        refuse_shell(graph)
    live = live_printer(llm, args.json)
    engine = _engine(registry, args.verbose, live)
    configure_logging(args.verbose)
    return _one_turn(graph, engine, message, args.json, live, llm)


def _message(arg: str | None) -> str | None:
    """The message of ``-m``: checked, and read from standard input for ``-m -``."""
    if arg == "-":
        return read_stdin_message(sys.stdin.buffer)
    return arg if arg is None else checked_message(arg, "-m")


def _one_turn(
    graph: Graph,
    engine: Engine,
    text: str,
    as_json: bool,
    live: LivePrinter | None = None,
    llm: Any = None,
) -> int:
    import anyio

    async def turn() -> RunResult:
        try:
            return await engine.run(graph, turn_context(text))
        finally:
            await aclose_llm(llm)

    return _report_run(graph, anyio.run(turn), as_json, live)


async def aclose_llm(llm: Any) -> None:
    """Close a hosted model's connections on the loop that opened them."""
    close = getattr(llm, "aclose", None)
    if close is not None:
        await close()


# --------------------------------------------------------------------------- validate


def _cmd_validate(argv: Sequence[str]) -> int:
    p = Parser(prog=f"{PROG} validate", description="Check graphs; print every problem.")
    p.add_argument("graphs", nargs="+", metavar="GRAPH", help=".dot files")
    p.add_argument("--strict", action="store_true", help="treat warnings as errors (exit 2)")
    p.add_argument("-v", "--verbose", action="store_true", help=argparse.SUPPRESS)
    add_dialect_option(p)
    args = p.parse_args(argv)
    from engine.cli.checks import check_file, strict
    from engine.errors import GraphError
    from handlers import build_registry

    registry = build_registry()
    failed = False
    for path in args.graphs:
        try:
            checked = check_file(path, registry, args.dialect)
        except GraphError as exc:
            failed = True
            print(one_line(exc))
            continue
        issues = strict(checked.issues) if args.strict else checked.issues
        for issue in issues:
            print(issue)
        graph = checked.graph
        if graph is None or (args.strict and issues):
            failed = True
        else:
            print(f"{path}: ok ({len(graph.nodes)} nodes, {len(graph.edges)} edges)")
    return EXIT_BAD_INPUT if failed else 0


# --------------------------------------------------------------------------- render

_FORMATS = {".dot": "dot", ".gv": "dot", ".svg": "svg", ".png": "png", ".pdf": "pdf"}


def _cmd_render(argv: Sequence[str]) -> int:
    p = Parser(prog=f"{PROG} render", description="Write a graph as normalised DOT or an image.")
    p.add_argument("graph", help="the .dot graph")
    p.add_argument(
        "-o", "--output", metavar="FILE", help=".dot/.gv/.svg/.png/.pdf (default: stdout)"
    )
    p.add_argument(
        "--trace",
        metavar="SESSION:TURN",
        help="highlight the path a stored turn took (visited nodes, retries, the failure)",
    )
    p.add_argument("--store", metavar="URL", help="the store holding --trace's session")
    p.add_argument("-v", "--verbose", action="store_true", help=argparse.SUPPRESS)
    add_dialect_option(p)
    args = p.parse_args(argv)
    out: str | None = args.output if args.output not in (None, "-") else None
    fmt = "dot" if out is None else _FORMATS.get(os.path.splitext(out)[1].lower())
    if fmt is None:
        known = ", ".join(_FORMATS)
        raise UsageError(f"{PROG} render: error: {out}: unknown output format (use {known})")
    if args.trace is not None:
        from engine.cli.render_trace import traced_render

        _require_file(args.graph)
        text, problems = traced_render(args.graph, args.trace, args.store), 0
    else:
        text, problems = _render_text(args.graph, args.dialect)
    if out is None:
        sys.stdout.write(text)
    else:
        check_output(out)
        data = text.encode() if fmt == "dot" else _graphviz(text, fmt, out)
        _write_atomic(out, data)
        print(f"wrote {out}")
    if problems:
        # Drawn so the user can look at what is wrong, but still a failure to scripts.
        err(f"{args.graph}: error: fails validation; {problems} problem(s) marked in red")
        return EXIT_BAD_INPUT
    return 0


def _render_text(path: str, dialect: str | None = None) -> tuple[str, int]:
    """The graph as DOT, and 0; or, when it fails validation, drawn with its problems
    marked, and how many there are (warnings are printed on stderr)."""
    from engine.cli.checks import check_file, marked_dot, parse_for_drawing
    from engine.cli.views import graph_to_dot
    from handlers import build_registry

    checked = check_file(path, build_registry(), dialect)
    if checked.graph is not None:
        for issue in checked.issues:
            err(str(issue))
        return graph_to_dot(checked.graph), 0
    return marked_dot(parse_for_drawing(path), checked.issues), len(checked.issues)


def _graphviz(dot_text: str, fmt: str, out: str) -> bytes:
    """``dot_text`` rendered by Graphviz's ``dot`` program (exit 2 when it is missing)."""
    import shutil
    import subprocess

    exe = shutil.which("dot")
    if exe is None:
        raise UsageError(
            f"{out}: error: rendering .{fmt} needs Graphviz's `dot` program, which is not "
            "installed (install graphviz, or write a .dot file)"
        )
    proc = subprocess.run(
        [exe, f"-T{fmt}"], input=dot_text.encode(), capture_output=True, timeout=120, check=False
    )
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip().splitlines()
        raise UsageError(f"{out}: error: dot failed: {detail[0] if detail else proc.returncode}")
    return proc.stdout


def _write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` via a unique temp file, fsync and ``os.replace``."""
    import tempfile

    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".render-", suffix=".tmp")
    try:
        # mkstemp creates 0600; a rendered picture gets the mode any new file would.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _require_file(path: str) -> None:
    """Refuse a missing path containing ``{``: load_graph would read it as DOT text, but
    on the command line it is a path."""
    if "{" in path and not os.path.exists(path):
        from engine.errors import GraphFileError

        raise GraphFileError(path, "no such file")


# --------------------------------------------------------------------------- sessions


def _run_session(args: argparse.Namespace) -> int:
    """One turn (``-m``) or a chat on a stored session; history comes from the store."""
    if args.session is None:
        raise UsageError(f"{PROG}: error: --store needs --session ID (see --help)")
    from sessions.store import validate_session_id

    validate_session_id(args.session)
    llm = model_of(args)
    if args.graph is not None and "{" in args.graph and not os.path.exists(args.graph):
        # A path on the command line, never DOT text (see _load).
        from engine.errors import GraphFileError

        raise GraphFileError(args.graph, "no such file")
    configure_logging(args.verbose)
    if args.message is None:
        from engine.cli.chat import run_chat

        return run_chat(args, llm)
    import anyio

    return anyio.run(_session_turn, args, llm)


def session_manager(args: argparse.Namespace, llm: Any, live: LivePrinter | None) -> Any:
    """The :class:`~sessions.SessionManager` of a session's turn or chat: ``--store``,
    the graph, the model, ``$TURNGRAPH_LEASE_TTL``, and ``live`` printing the reply."""
    from sessions import SessionManager

    ttl = lease_ttl()
    options: dict[str, Any] = {} if ttl is None else {"lease_ttl": ttl}
    if getattr(args, "checkpoint", False):
        from sessions import Limits

        options["limits"] = Limits(checkpoint=True)
    allow = shell_allowed(args)
    if allow:
        options["allow_shell"] = True
    graph = dialect_graph(args.graph, args.dialect)
    manager = SessionManager(
        store_url(args.store), turn_graph=graph, log_nodes=args.verbose, llm=llm, **options
    )
    if not allow:
        refuse_shell(manager.turn_graph)
    if live is not None:
        manager.engine.observers = (*manager.engine.observers, live)
    return manager


async def _session_turn(args: argparse.Namespace, llm: Any) -> int:
    """One turn of a stored session, reported as a graph run is."""
    live = live_printer(llm, args.json)
    manager = session_manager(args, llm, live)
    try:
        async with manager:
            session = await manager.get_or_create(args.session)
            result = await session.send(args.message)
    finally:
        await aclose_llm(llm)
    return report_session_turn(manager.turn_graph, session.id, result, args.json, live)


def report_session_turn(
    graph: Graph, session_id: str, result: Any, as_json: bool, live: LivePrinter | None
) -> int:
    """Print a session's turn (a :class:`~sessions.TurnResult`) as a graph run is."""
    return report_turn(
        graph,
        status=result.status,
        reply=result.reply if result.ok else None,
        trace=result.trace,
        error=result.error,
        as_json=as_json,
        live=live,
        session_id=session_id,
        turn=result.turn,
        trace_id=result.trace_id,
        run_id=result.trace_id,
    )


def _cmd_sessions(argv: Sequence[str]) -> int:
    from engine.cli.sessions import cmd_sessions

    return cmd_sessions(argv)


def _cmd_serve(argv: Sequence[str]) -> int:
    from engine.cli.serve import cmd_serve

    return cmd_serve(argv)


_COMMANDS: Mapping[str, Callable[[Sequence[str]], int]] = {
    "validate": _cmd_validate,
    "render": _cmd_render,
    "sessions": _cmd_sessions,
    "serve": _cmd_serve,
}


def program() -> int:
    """``main`` as a process: unencodable output is escaped, and a reader that leaves
    (``... | head -1``) is quiet, whatever the command: it ends with its own exit code
    (:func:`~engine.cli.common.quiet_std_streams`)."""
    quiet_std_streams()
    code = main()
    # What is still buffered is written now, not at the interpreter's exit (where a
    # full disk would be a traceback and exit 120); a failure the command did not
    # report (input() swallows its flush's) fails it with one line.
    with contextlib.suppress(OSError):
        sys.stdout.flush()
    failed = stdout_error()
    if failed is not None and code == 0:
        code = _exit_code(failed, verbose=False)
    # Its report is out: a later Ctrl-C (while the interpreter waits for a worker thread
    # still in a busy SQLite open, say) ends the process at once, not with a traceback.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    return code
