"""Request and response helpers the routes share: bounded JSON bodies, paging, replies."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from engine.server.errors import BadRequest, BodyTooLarge, NotJson
from engine.server.sse import encode

if TYPE_CHECKING:
    from starlette.requests import Request

    from engine.server.state import ServerState

__all__ = ["json", "page", "path_number", "read_json", "state"]

_decode = msgspec.json.Decoder().decode


def state(request: Request) -> ServerState:
    """The server's shared state (set by :func:`engine.server.create_app`)."""
    found: ServerState = request.app.state.turngraph
    return found


def json(body: Any, status: int = 200) -> Response:
    """``body`` as a JSON response (msgspec: dataclasses and structs encode too)."""
    return Response(encode(body), status, media_type="application/json")


async def read_json(request: Request, max_body: int) -> Any:
    """The request's JSON body; :class:`NotJson` unless it says ``application/json``
    (or ``…+json``), :class:`BodyTooLarge` as soon as it passes ``max_body`` bytes (a
    declared ``Content-Length`` is checked before anything is read)."""
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        raise NotJson(f"expected Content-Type: application/json, got {media or 'none'!r}")
    try:
        return _decode(await read_body(request, max_body))
    except msgspec.DecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None


async def read_body(request: Request, max_body: int) -> bytes:
    """The request's body; :class:`BodyTooLarge` as soon as it passes ``max_body`` bytes
    (a declared ``Content-Length`` is checked before anything is read)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_body:
        raise BodyTooLarge(f"request body of {declared} bytes is over the limit of {max_body}")
    # The ASGI messages read straight off ``receive``: a turn's body is one message, and
    # ``request.stream()`` would wrap it in an async generator per request.
    chunks: list[bytes] = []
    size = 0
    receive = request.receive
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_body:
            raise BodyTooLarge(f"request body is over the limit of {max_body} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _number(raw: str, high: int) -> int | None:
    """``raw`` as an integer 0..``high``, or ``None``.  ASCII digits only, checked for
    length first: ``int()`` refuses "²" (a digit to ``str.isdigit``) and text of
    thousands of digits, each a 500 instead of a 400 if it got that far."""
    if not (raw.isascii() and raw.isdigit()) or len(raw.lstrip("0")) > len(str(high)):
        return None
    n = int(raw)
    return n if n <= high else None


def _int(request: Request, name: str, default: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    n = _number(raw, high)
    if n is None:
        raise BadRequest(f"query parameter {name}={raw!r}: expected an integer 0..{high}")
    return n


def path_number(request: Request, what: str, noun: str) -> int:
    """The path's ``n``, a number from 1; :class:`BadRequest` naming ``what`` otherwise
    (``turn '0': expected a turn number from 1``)."""
    raw = request.path_params["n"]
    n = _number(raw, 2**62)
    if not n:
        raise BadRequest(f"{what} {raw!r}: expected a {noun} number from 1")
    return n


def page(request: Request, default_limit: int = 100, max_limit: int = 1000) -> tuple[int, int]:
    """``(offset, limit)`` from the query string, checked (:class:`BadRequest`)."""
    return _int(request, "offset", 0, 2**62), _int(request, "limit", default_limit, max_limit)
