"""``python -m engine.run serve``: the HTTP API on uvicorn (the ``serve`` extra).

::

    python -m engine.run serve [--host 127.0.0.1] [--port 8000] [--store URL] [--llm SPEC]
                               [--graph GRAPH.dot] [--grace 30] [--max-body BYTES]
                               [--max-sessions N] [--loop auto|asyncio|uvloop]
                               [--ray [ADDRESS]] [--dialect turngraph|attractor]
                               [--allow-shell]

Prints ``serving on http://HOST:PORT`` once listening (``--port 0``: a free port).
With ``$TURNGRAPH_API_TOKEN`` set every request needs ``Authorization: Bearer TOKEN``;
without it the server refuses any host but a loopback one (exit 2).  SIGTERM or Ctrl-C
drains it (see :mod:`engine.server.run`) and it exits 0.  ``--loop`` picks the event
loop: ``asyncio`` (the default), ``uvloop`` (installed separately; exit 2 without it),
or ``auto`` (uvloop when it is installed, else asyncio).  ``--dialect`` reads
``--graph`` in that dialect; shell commands (``tool_command``) stay off unless
``--allow-shell`` or ``TURNGRAPH_ALLOW_SHELL=1`` turns them on: a graph with a shell
node is refused at start otherwise (exit 2, naming its file, line and node).

``--ray [ADDRESS]`` serves sessions hosted on a Ray cluster (the ``ray`` extra; see
``docs/cluster.md``): the same API, with every turn run by the session's host actor
(:class:`sessions.cluster.ClusterManager`).  ``ADDRESS`` is Ray's (``auto``,
``HOST:PORT``); without it the local cluster is joined if one runs, else a local Ray is
started.  The store must be PostgreSQL, which every node shares.  ``--dialect`` and
``--allow-shell`` are refused with ``--ray`` (the hosts read the graph by its own
``dialect=`` and run no shell commands).
"""

from __future__ import annotations

import ipaddress
import os
from argparse import Namespace
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from engine.cli.common import (
    PROG,
    Parser,
    UsageError,
    add_dialect_option,
    configure_logging,
    refuse_shell,
    shell_allowed,
)

if TYPE_CHECKING:
    import asyncio

__all__ = ["cmd_serve", "is_loopback", "loop_factory"]


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parser() -> Parser:
    p = Parser(prog=f"{PROG} serve", description="Serve the HTTP API (needs the serve extra).")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free)")
    p.add_argument("--store", metavar="URL", help="store URL (default $TURNGRAPH_STORE)")
    p.add_argument("--llm", metavar="SPEC", help="model spec (default $TURNGRAPH_LLM, else echo)")
    p.add_argument("--graph", metavar="GRAPH.dot", help="turn graph (default turn.dot)")
    p.add_argument(
        "--grace", type=float, default=30.0, help="seconds running turns get at shutdown"
    )
    p.add_argument(
        "--max-body", type=int, default=1 << 20, metavar="BYTES", help="largest request body"
    )
    p.add_argument(
        "--max-sessions", type=int, default=1000, metavar="N", help="sessions hosted at once"
    )
    p.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="asyncio",
        help="event loop (default asyncio; auto: uvloop when installed)",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="host the sessions on a Ray cluster (PostgreSQL store; the ray extra)",
    )
    add_dialect_option(p, shell=True)
    p.add_argument("-v", "--verbose", action="store_true", help="log requests and node visits")
    return p


def _cluster(args: Namespace) -> Any:
    """The cluster's sessions behind the app (``--ray``): a ClusterManager."""
    from sessions.cluster import ClusterManager
    from sessions.store import default_store_url

    address = args.ray or None
    init: dict[str, Any] = {"configure_logging": False, "log_to_driver": args.verbose}
    host = urlsplit(f"//{address}").hostname if address and address != "auto" else None
    if host is not None and is_loopback(host):
        init["_node_ip_address"] = "127.0.0.1"  # a cluster on this machine's loopback
        # Read when ray is imported (below): without it Ray swaps a loopback bootstrap
        # address for this machine's outward one, where a loopback cluster never answers
        # and ray.init waits forever.  This process is the CLI's own: it may set it.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    manager = ClusterManager(
        args.store or os.environ.get("TURNGRAPH_STORE") or default_store_url(),
        address=address,
        llm=args.llm or os.environ.get("TURNGRAPH_LLM"),
        turn_graph=args.graph,
        cluster={"ray_init": init},
    )
    # Before the server installs its signal handlers: a Ray driver's own SIGTERM
    # handler exits at once, which would cut the graceful drain.
    manager.cluster.connect()
    return manager


def loop_factory(loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop ``--loop`` asks for: ``None`` for asyncio's own, else uvloop's
    constructor (``auto``: uvloop when it is installed).  The loop is made for this
    server's run only (a loop factory): no event-loop policy is set for the process."""
    if loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if loop == "auto":
            return None
        raise UsageError(
            f"{PROG} serve: error: --loop uvloop needs uvloop: pip install uvloop"
        ) from None
    return uvloop.new_event_loop


def cmd_serve(argv: Sequence[str]) -> int:
    """Run the server until SIGTERM/SIGINT; 0 after a graceful shutdown."""
    args = _parser().parse_args(argv)
    try:  # first: even TOKEN_ENV's module imports starlette
        import anyio

        from engine.server import create_app
        from engine.server.app import TOKEN_ENV
        from engine.server.run import Server, bind
    except ImportError as exc:
        raise UsageError(
            f"{PROG} serve: error: needs the `serve` extra ({exc.name} is not installed): "
            "pip install 'turngraph[serve]'"
        ) from None
    if not os.environ.get(TOKEN_ENV) and not is_loopback(args.host):
        raise UsageError(
            f"{PROG} serve: error: refusing to serve on {args.host} without "
            f"${TOKEN_ENV} (set a token, or bind a loopback address)"
        )
    if not 0 <= args.port <= 65535 or args.grace < 0 or min(args.max_body, args.max_sessions) < 1:
        raise UsageError(
            f"{PROG} serve: error: --port, --grace, --max-body or --max-sessions out of range"
        )
    factory = loop_factory(args.loop)
    configure_logging(args.verbose)
    if args.ray is not None and (args.dialect or args.allow_shell):
        raise UsageError(f"{PROG} serve: error: --dialect and --allow-shell do not work with --ray")
    allow = shell_allowed(args) and args.ray is None  # Ray hosts run no shell commands
    app = create_app(
        args.store,
        llm=args.llm,
        graph=args.graph,
        manager=None if args.ray is None else _cluster(args),
        max_body=args.max_body,
        grace=args.grace,
        max_sessions=args.max_sessions,
        dialect=args.dialect,
        allow_shell=allow,
    )
    if not allow:
        refuse_shell(app.state.turngraph.manager.turn_graph)
    server = Server(app, grace=args.grace, log_level="info" if args.verbose else "warning")
    sock = bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    print(f"serving on http://{host if ':' not in host else f'[{host}]'}:{port}", flush=True)
    anyio.run(server.serve, [sock], backend_options={"loop_factory": factory})
    if server.app_state.startup_error is not None:
        raise server.app_state.startup_error  # one line on stderr, exit 2
    return 0 if server.started else 2
