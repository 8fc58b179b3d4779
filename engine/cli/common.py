"""What every ``python -m engine.run`` command shares: exit codes, the argument parser
that raises instead of exiting, one-line error output, JSON output, logging set-up.

Kept apart from :mod:`engine.run` because that module runs as ``__main__``: a second
module importing from it would load a second copy (and its own ``UsageError``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, NoReturn

from engine.errors import GraphValidationError, TurngraphError

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_RUN_FAILED",
    "PROG",
    "Parser",
    "UsageError",
    "add_llm_options",
    "check_output",
    "configure_logging",
    "err",
    "model_of",
    "one_line",
    "print_json",
    "store_url",
]

EXIT_RUN_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130
PROG = "python -m engine.run"


class UsageError(TurngraphError):
    """Bad command-line arguments (argparse's complaint, as one line)."""


class Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing a usage block and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: error: {message} (see --help)")


def err(line: str) -> None:
    """Print one error line on stderr (newlines folded)."""
    print(line.replace("\n", " "), file=sys.stderr)


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


def print_json(doc: Any) -> None:
    """One JSON document on stdout: UTF-8 as is, else ASCII escapes (still valid JSON)."""
    utf = (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "") == "utf8"
    print(json.dumps(doc, ensure_ascii=not utf, default=str))


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


def model_of(args: argparse.Namespace) -> Any:
    """The model ``--llm`` (else ``$TURNGRAPH_LLM``) names; ``None`` for the offline default."""
    from handlers.adapters.spec import ENV_SPEC, from_spec

    spec = args.llm or os.environ.get(ENV_SPEC) or "echo"
    if spec.strip().lower() == "echo" and args.llm_base_url is None:
        return None
    return from_spec(spec, base_url=args.llm_base_url)
