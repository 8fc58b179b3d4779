"""Plain server-rendered HTML for the trace viewer: a page shell, tables, links.

Every value that reaches a page goes through :func:`html.escape` here (``esc``), so
a session id, a message or a node label can never become markup.  No JavaScript but
the live page's own short script (:mod:`engine.server.routes.live`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape
from urllib.parse import quote

from starlette.responses import HTMLResponse

__all__ = ["esc", "link", "page", "path_part", "table"]

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:72em;color:#222}
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:.25em .6em;
text-align:left;vertical-align:top}th{background:#f3f3f3}td.num{text-align:right}
.fail{background:#ffd7d7}.retry{background:#fff1c9}.muted{color:#777}
.msg{border-left:4px solid #ccc;padding:.3em .8em;margin:.4em 0;white-space:pre-wrap}
.msg.user{border-color:#1f6feb}.msg.assistant{border-color:#2da44e}
.graph svg{max-width:100%;height:auto}nav a{margin-right:1em}
"""


def esc(value: object) -> str:
    """``value`` as text safe inside HTML (quotes escaped too)."""
    return escape(str(value), quote=True)


def link(href: str, text: object) -> str:
    """An ``<a>`` whose text is escaped (``href`` is built by the caller from quoted parts)."""
    return f'<a href="{esc(href)}">{esc(text)}</a>'


def path_part(value: str) -> str:
    """``value`` quoted for use as one URL path segment."""
    return quote(value, safe="")


def table(head: Sequence[str], rows: Iterable[Sequence[str]], cls: Sequence[str] = ()) -> str:
    """A table; ``head`` is escaped, cells are already HTML (use :func:`esc`); ``cls``
    gives each row's class (e.g. ``fail``)."""
    out = ["<table><tr>", *(f"<th>{esc(h)}</th>" for h in head), "</tr>"]
    classes = list(cls)
    for i, row in enumerate(rows):
        rc = f' class="{esc(classes[i])}"' if i < len(classes) and classes[i] else ""
        out.append(f"<tr{rc}>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>")
    out.append("</table>")
    return "".join(out)


def page(title: str, body: str, status: int = 200) -> HTMLResponse:
    """A whole page: ``title`` (escaped) over ``body`` (HTML)."""
    doc = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)} · turngraph</title><style>{_CSS}</style></head>"
        f'<body><nav><a href="/">sessions</a><a href="/graphs">graphs</a></nav>'
        f"<h1>{esc(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(doc, status)
