"""One redaction of store URLs and libpq connection strings, used wherever one is shown.

A PostgreSQL password can sit in three places: the URL's ``user:pw@``, a URL query
parameter (``?password=pw``, also ``sslpassword`` for the client key, the name possibly
percent-encoded, which libpq decodes), or a libpq keyword string (``host=h password=pw``,
the value possibly quoted: ``password='a b\\'c'``).  :func:`redact_url` replaces each with
``***``; errors, log lines and table titles print only its result.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

__all__ = ["REDACTED", "redact_text", "redact_url", "scrub"]

REDACTED: Final = "***"

# A keyword DSN's password value: single-quoted (backslash escapes) or bare.
_KEYWORD: Final = re.compile(
    r"(\b(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s]*)", re.IGNORECASE
)
# A URL query parameter (up to the next & or #): any name, matched once decoded.
_QUERY: Final = re.compile(r"((?:^|[?&;])([^=&#;?]*)=)([^&#]*)")
# Query parameters that hold a secret: libpq's (``sslpassword`` unlocks the client's
# key) and a model server's key or token (``?api_key=...``).
_SECRET_NAMES: Final = frozenset(
    {"password", "sslpassword", "api_key", "api-key", "apikey", "key", "token",
     "access_token", "access-token", "secret"}
)  # fmt: skip


def _is_secret(name: str) -> bool:
    return unquote(name).strip().lower() in _SECRET_NAMES


def _redact_query(query: str) -> str:
    return _QUERY.sub(
        lambda m: f"{m.group(1)}{REDACTED}" if _is_secret(m.group(2)) else m.group(0), query
    )


def redact_url(url: str) -> str:
    """``url`` (a store URL or a libpq keyword string) with every password as ``***``.

    Safe to print or log.  Anything not parseable as a URL is treated as a keyword
    string, so a malformed URL never leaks what it holds either.
    """
    if "://" not in url:
        return _KEYWORD.sub(rf"\g<1>{REDACTED}", url)
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # a malformed netloc (bad port, brackets): hide all credentials
        return _hide_userinfo(url)
    query = _redact_query(parts.query)
    if password is None and query == parts.query:
        return url  # nothing to hide: keep the text as given (sqlite:/// stays as is)
    if password is None:  # only the query: urlunsplit would drop an empty host's '//'
        return url.replace(f"?{parts.query}", f"?{query}", 1)
    host = parts.netloc.rsplit("@", 1)[1]
    parts = parts._replace(netloc=f"{parts.username or ''}:{REDACTED}@{host}")
    return urlunsplit(parts._replace(query=query))


# A URL anywhere in a line of text (up to a space or a quote).
_URL_IN_TEXT: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+")


def redact_text(text: str) -> str:
    """``text`` (an error line that may echo what was typed, such as argparse's
    "unrecognized arguments: ...") with the password of every URL in it, every
    ``password=`` keyword and every ``api_key``/``token``-like query value as ``***``."""
    text = _URL_IN_TEXT.sub(lambda m: redact_url(m[0]), text)
    return _KEYWORD.sub(rf"\g<1>{REDACTED}", text)


def _hide_userinfo(url: str) -> str:
    scheme, _, rest = url.partition("://")
    netloc, sep, tail = rest.partition("/")
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rsplit('@', 1)[1]}"
    tail = _redact_query(tail)
    return f"{scheme}://{netloc}{sep}{tail}"


def scrub(text: str, url: str) -> str:
    """``text`` (a driver's error message about ``url``) with ``url``'s passwords hidden.

    A driver may echo part of a connection string it could not parse; every password
    ``url`` holds is replaced wherever it appears, then keyword forms are redacted.
    """
    for secret in sorted(_passwords(url), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return _KEYWORD.sub(rf"\g<1>{REDACTED}", text)


def _passwords(url: str) -> set[str]:
    found = {m.group(2).strip("'") for m in _KEYWORD.finditer(url)}
    if "://" in url:
        try:
            parts = urlsplit(url)
            if parts.password:
                found |= {parts.password, unquote(parts.password)}
            found |= {v for k, v in parse_qsl(parts.query) if _is_secret(k)}
        except ValueError:
            pass
        for m in _QUERY.finditer(url):
            if _is_secret(m.group(2)):
                found |= {m.group(3), unquote(m.group(3))}
    return {s for s in found if s}
