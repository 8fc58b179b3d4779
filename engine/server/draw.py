"""Graphviz from the server: DOT text in, SVG out, without blocking the event loop."""

from __future__ import annotations

import re
import shutil
import subprocess

import anyio

from engine.server.errors import GraphvizMissing

__all__ = ["draw_svg"]

# A DOT file's ``URL``/``href`` (and ``labelURL``, ``headURL``..., an HTML label's
# ``HREF``, a ``stylesheet``) become links in Graphviz's SVG, ``javascript:`` ones
# included, which would run on this server's origin when clicked.  The viewer links
# nothing from its drawings, so every link goes (Graphviz writes ``"`` in a value as
# ``&quot;``: a value never holds a quote).
_LINK = re.compile(rb'\s(?:xlink:)?href="[^"]*"')


async def draw_svg(dot_text: str, what: str) -> bytes:
    """``dot_text`` laid out by Graphviz's ``dot`` program as SVG, without the links a
    DOT file may ask for; ``GraphvizMissing`` (503) when ``dot`` is not installed or
    fails (``what`` names the picture)."""
    exe = shutil.which("dot")
    if exe is None:
        raise GraphvizMissing("drawing a graph needs Graphviz's `dot` program; install graphviz")
    proc = await anyio.run_process(
        [exe, "-Tsvg"], input=dot_text.encode(), check=False, stderr=subprocess.PIPE
    )
    if proc.returncode != 0:
        raise GraphvizMissing(f"dot failed to draw {what} (exit {proc.returncode})")
    return _LINK.sub(b"", proc.stdout)
