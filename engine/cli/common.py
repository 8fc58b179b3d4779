"""What every ``python -m engine.run`` command shares: exit codes, the argument parser
that raises instead of exiting, one-line error output, JSON output, logging set-up.

Kept apart from :mod:`engine.run` because that module runs as ``__main__``: a second
module importing from it would load a second copy (and its own ``UsageError``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn

from engine.errors import GraphValidationError, TurngraphError

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

    from engine.graph import Graph

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_RUN_FAILED",
    "JSON_KEYS",
    "LEASE_TTL_ENV",
    "MAX_MESSAGE_BYTES",
    "PROG",
    "BadMessage",
    "Parser",
    "UsageError",
    "add_dialect_option",
    "add_llm_options",
    "check_output",
    "checked_message",
    "configure_logging",
    "dialect_graph",
    "err",
    "error_json",
    "forget_printed",
    "lease_ttl",
    "model_of",
    "one_line",
    "print_json",
    "printable",
    "quiet_std_streams",
    "read_stdin_message",
    "redact",
    "refuse_shell",
    "shell_allowed",
    "stdout_error",
    "store_url",
    "wants_json",
]

EXIT_RUN_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130
PROG = "python -m engine.run"
LEASE_TTL_ENV = "TURNGRAPH_LEASE_TTL"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
JSON_KEYS = (
    "status",
    "reply",
    "graph",
    "run_id",
    "session_id",
    "turn",
    "trace_id",
    "usage",
    "nodes",
    "error",
    "error_kind",
    "question",
)
"""The keys of a turn's ``--json`` object, in order, with or without ``--session``
(``error_kind``: the error's class name, as the HTTP API's ``kind``; ``question``: a
paused turn's ``{node, question, choices}``, else null).  A command refused before it
has a turn to report prints the same keys (:func:`error_json`)."""


class UsageError(TurngraphError):
    """Bad command-line arguments (argparse's complaint, as one line)."""


class BadMessage(UsageError):
    """A message (``-m``, standard input or a chat line) that cannot be a turn's input."""


class Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing a usage block and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: error: {message} (see --help)")


def err(line: str) -> None:
    """Print one error line on stderr (newlines folded, secrets hidden)."""
    print(redact(line).replace("\n", " "), file=sys.stderr)


def redact(line: str) -> str:
    """``line`` with every password or key a URL in it holds as ``***`` (an error may
    echo what was typed: ``unrecognized arguments: --stroe postgresql://me:pw@h/db``)."""
    if "://" not in line and "password" not in line.lower():
        return line
    from sessions.store.redact import redact_text

    return redact_text(line)


def one_line(exc: BaseException) -> str:
    """A turngraph error as the single line the CLI prints."""
    if isinstance(exc, GraphValidationError):
        errors = exc.errors or exc.issues
        if errors:
            more = len(errors) - 1
            suffix = f" (and {more} more: run `{PROG} validate {exc.path}`)" if more else ""
            return f"{errors[0]}{suffix}"
    text = " ".join(str(exc).split())
    return text if ": error: " in text else f"error: {text}"


def configure_logging(verbose: bool) -> None:
    """Quiet by default; ``-v``: node logs on stderr.  Only the CLI configures structlog.

    structlog is imported only when asked for or already loaded by someone else (so a
    plain run does not pay for it), and it always writes to stderr so ``--json`` output
    on stdout stays clean.
    """
    if not verbose and "structlog" not in sys.modules:
        return
    import logging

    import structlog

    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%H:%M:%S"),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.INFO if verbose else logging.WARNING
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


class _Printed:
    """Whether this run of the command line has begun a JSON document on stdout."""

    json = False


def print_json(doc: Any) -> None:
    """One JSON document on stdout: UTF-8 as is, else ASCII escapes (still valid JSON)."""
    utf = (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "") == "utf8"
    text = json.dumps(doc, ensure_ascii=not utf, default=str)
    _Printed.json = True  # before writing: a Ctrl-C may cut the document short
    print(text)


def forget_printed() -> None:
    """A new run of the command line: no JSON document printed yet (:func:`error_json`)."""
    _Printed.json = False


def printable(text: str) -> str:
    """``text`` as a line may show it: each character that is not printable (an escape
    sequence in an id edited in the database, say) as its escape, so what a store holds
    never acts on the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def wants_json(argv: Sequence[str]) -> bool:
    """Whether the command line asks for ``--json`` (an option, not an argument after
    ``--``), read from the words themselves: it holds even when parsing them failed.
    A word argparse takes for ``--json`` counts: its abbreviations (``--js``) too."""
    words = argv[: argv.index("--")] if "--" in argv else argv
    return any(len(w) > 2 and "--json".startswith(w.split("=", 1)[0]) for w in words)


def error_json(line: str, kind: str) -> None:
    """Print the ``--json`` object of a command that ended with an error instead of a
    turn: a turn's keys (:data:`JSON_KEYS`, null when absent) with ``status`` ``"error"``,
    ``error`` the line printed on stderr and ``error_kind`` its class, so a script reads
    one object whatever happened.  Nothing when this run had already begun a document
    (Ctrl-C while a long one was written): a second would leave no object at all to read."""
    if _Printed.json:
        return
    doc: dict[str, Any] = dict.fromkeys(JSON_KEYS)
    doc.update(status="error", error=line, error_kind=kind)
    print_json(doc)


def check_output(path: str) -> None:
    """Refuse an output path whose folder is missing, or that names a folder."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"{path}: error: folder {folder} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"{path}: error: is a directory")


def store_url(arg: str | None) -> str:
    """``--store``, else ``$TURNGRAPH_STORE``, else SQLite in the data dir."""
    from sessions.store import default_store_url

    return arg or default_store_url()


def add_llm_options(p: argparse.ArgumentParser) -> None:
    """``--llm SPEC`` and ``--llm-base-url URL``: every command that calls the model."""
    p.add_argument(
        "--llm",
        metavar="SPEC",
        help="echo (default), openai:MODEL or anthropic:MODEL (default: $TURNGRAPH_LLM)",
    )
    p.add_argument(
        "--llm-base-url", metavar="URL", help="the model server (an OpenAI-compatible one...)"
    )


def add_dialect_option(p: argparse.ArgumentParser, shell: bool = False) -> None:
    """``--dialect`` (and, for commands that run graphs, ``--allow-shell``)."""
    p.add_argument(
        "--dialect",
        choices=("turngraph", "attractor"),
        help="read graphs in this dialect (default: the graph's dialect= attribute, "
        "else turngraph)",
    )
    if shell:
        p.add_argument(
            "--allow-shell",
            action="store_true",
            help="let tool_command nodes run shell commands (also TURNGRAPH_ALLOW_SHELL=1)",
        )


def shell_allowed(args: argparse.Namespace) -> bool:
    """Whether ``--allow-shell`` or ``$TURNGRAPH_ALLOW_SHELL`` turns shell commands on."""
    env = os.environ.get("TURNGRAPH_ALLOW_SHELL", "").strip().lower()
    return bool(getattr(args, "allow_shell", False)) or env in ("1", "true", "yes")


def dialect_graph(graph: str | None, dialect: str | None) -> Any:
    """``--graph`` read in ``--dialect``; the path itself without ``--dialect`` (the
    session manager reads it then, by the graph's own ``dialect=``)."""
    if graph is None or dialect is None:
        return graph
    from pathlib import Path

    from engine.loader import load_graph

    return load_graph(Path(graph), dialect=dialect)  # the manager checks handlers


def refuse_shell(graph: Graph) -> None:
    """Stop before a run when a ``shell`` node (in ``graph`` or one of its sub-graphs)
    would be refused half-way through it; the error names its file, line and node."""
    from engine.errors import ShellDisabled

    for node in graph.nodes.values():
        if node.handler == "shell":
            raise UsageError(
                f"{graph.path}:{node.line}:{node.col}: error: {ShellDisabled(node.id)}"
            )
    for child in graph.subgraphs.values():
        refuse_shell(child)


def model_of(args: argparse.Namespace) -> Any:
    """The model ``--llm`` (else ``$TURNGRAPH_LLM``) names; ``None`` for the offline default."""
    from handlers.adapters.spec import ENV_SPEC, from_spec

    spec = args.llm or os.environ.get(ENV_SPEC) or "echo"
    if spec.strip().lower() == "echo" and args.llm_base_url is None:
        return None
    return from_spec(spec, base_url=args.llm_base_url)


# Control characters other than the line breaks and tab (as handlers/classify.py
# blocks them): a terminal's escape sequences, NULs and the like, refused here with a
# message before a turn is spent on them.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def checked_message(text: str, where: str) -> str:
    """``text`` if it can be a turn's input, else :class:`BadMessage` naming ``where``
    (``-m``, ``standard input``, ``chat``).  One check for every way a message arrives:
    bytes that were not UTF-8 (argv and stdin decode them to lone surrogates) and
    control characters other than tab and line breaks are refused before anything is sent."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadMessage(
            f"{where}: error: the message is not valid UTF-8 (at character {exc.start})"
        ) from None
    bad = _CONTROL.search(text)
    if bad is not None:
        raise BadMessage(
            f"{where}: error: the message contains a control character "
            f"({bad.group()!r} at character {bad.start()})"
        )
    return text


def read_stdin_message(stream: BinaryIO, limit: int = MAX_MESSAGE_BYTES) -> str:
    """The message ``-m -`` reads: all of ``stream``, UTF-8, at most ``limit`` bytes
    (``/dev/zero`` is refused, not read until memory runs out), one final newline
    dropped as a shell's ``$(...)`` does."""
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise BadMessage(f"standard input: error: the message is longer than {limit} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadMessage(
            f"standard input: error: the message is not valid UTF-8 (at byte {exc.start})"
        ) from None
    if text.endswith("\n"):
        text = text[:-1].removesuffix("\r")
    return checked_message(text, "standard input")


def lease_ttl() -> float | None:
    """``$TURNGRAPH_LEASE_TTL`` in seconds (how long a session stays ours without a
    renewal, and so how long a crashed chat's session stays busy), else ``None`` for the
    session manager's default."""
    raw = os.environ.get(LEASE_TTL_ENV)
    if raw is None or not raw.strip():
        return None
    try:
        ttl = float(raw)
    except ValueError:
        ttl = -1.0
    if not 0.1 <= ttl <= 86400:  # also refuses nan and inf
        raise UsageError(
            f"{PROG}: error: {LEASE_TTL_ENV}={raw!r} is not a number of seconds "
            "between 0.1 and 86400"
        )
    return ttl


def quiet_std_streams() -> None:
    """Make this process's standard output and error end quietly when their reader goes.

    A reader may leave in the middle of any command's output (``... | head -1``): the
    stream is then pointed at the null device and the command runs on to its own exit
    code (a tampered session still fails ``sessions verify``, a warning still reaches
    stderr), instead of a broken pipe ending it early with 0 or a traceback.  Any other
    failure to write (a full disk, ``> /dev/full``) is the command's error, reported once:
    the descriptor is then pointed at the null device too, so that the text still
    buffered does not fail again when the interpreter exits (a traceback and exit 120).
    A stream closed at start (``2>&-``) writes to the null device, so that an error line
    meant for it does not land on stdout (``print(file=None)``), inside ``--json``'s
    object.  Text the stream cannot encode is escaped.  The process's entry point calls
    this once, before anything is written: it replaces ``sys.stdout`` and ``sys.stderr``.
    """
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is None:  # closed at start (``2>&-``)
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))  # noqa: SIM115
            continue
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):  # not a file (captured): as it is
            continue
        stream.flush()
        raw = _QuietFile(fd, "w", closefd=False)
        raw.label = "standard output" if name == "stdout" else "standard error"
        # Unbuffered as the stream was (``python -u``, ``PYTHONUNBUFFERED``): a buffer
        # would hold back what a user or a log waits for, and lose it if the process is killed.
        unbuffered = not isinstance(getattr(stream, "buffer", None), io.BufferedIOBase)
        quiet = io.TextIOWrapper(
            raw if unbuffered else io.BufferedWriter(raw),
            encoding=stream.encoding,
            errors="backslashreplace",
            line_buffering=stream.line_buffering,
            write_through=getattr(stream, "write_through", False),
        )
        setattr(sys, name, quiet)


def stdout_error() -> OSError | None:
    """The first failure to write standard output other than its reader leaving (a
    full disk), after :func:`quiet_std_streams`; ``None`` when there was none."""
    binary = getattr(sys.stdout, "buffer", None)
    raw = getattr(binary, "raw", binary)
    return raw.error if isinstance(raw, _QuietFile) else None


class _QuietFile(io.FileIO):
    """A standard stream's file descriptor: when its reader has gone, the descriptor is
    pointed at the null device and the write counts as done; when the write fails
    otherwise, it is pointed there too and the write fails, once (:attr:`error`)."""

    label = "a standard stream"
    """What an error calls it (``standard output``)."""
    error: OSError | None = None
    """The first failure to write, other than the reader leaving."""

    def write(self, data: ReadableBuffer, /) -> int:
        """Write ``data``; nothing fails when the reader has gone."""
        try:
            return super().write(data)
        except BrokenPipeError:
            self._to_null()
            return memoryview(data).nbytes
        except OSError as exc:
            self._to_null()
            failed = OSError(exc.errno, exc.strerror, self.label)  # which stream: one line
            if self.error is None:
                self.error = failed
            raise failed from exc

    def _to_null(self) -> None:
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, self.fileno())
        finally:
            os.close(null)
