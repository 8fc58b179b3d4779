"""Loopback HTTP servers that speak the OpenAI Chat Completions and Anthropic Messages
wire formats, for tests and benchmarks: real sockets, real HTTP/1.1, real SSE.

A server plays a *script*: each request takes the next item (a :class:`Reply`, a
:class:`Fail`, a :class:`Cut` stream, a :class:`Held` stream, :class:`Raw` bytes or a
:class:`Hang`), or
``default`` when the script is empty.  Every request is recorded (path, headers, JSON
body) so tests can check what the adapter sent.  A reply is JSON or, when the request
asks ``"stream": true``, SSE in chunked transfer encoding, with tool calls and usage.
"""

from __future__ import annotations

import json
import socket
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Cut", "Fail", "Hang", "Held", "LLMServer", "Raw", "Reply", "Request"]


@dataclass(frozen=True)
class Reply:
    """A model's answer: text in ``tokens`` (streamed one by one), tool calls as
    ``(id, name, arguments JSON text)``, usage and model name."""

    tokens: tuple[str, ...] = ("Hello", ",", " world")
    tool_calls: tuple[tuple[str, str, str], ...] = ()
    usage: tuple[int, int] = (11, 3)
    model: str = "test-model"


@dataclass(frozen=True)
class Fail:
    """An HTTP error status with the provider's error body and extra headers."""

    status: int
    message: str = "failed"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Cut:
    """A streamed reply whose connection is dropped after ``after`` text tokens;
    ``clean=True`` ends the HTTP body properly but without the stream's final event."""

    reply: Reply = field(default_factory=Reply)
    after: int = 2
    clean: bool = False


@dataclass(frozen=True)
class Raw:
    """These bytes as the body, with this content type (malformed JSON or SSE)."""

    body: bytes
    content_type: str = "application/json"
    status: int = 200


@dataclass(frozen=True)
class Hang:
    """Wait ``seconds`` (or until the server stops) before answering ``then``."""

    seconds: float
    then: Reply = field(default_factory=Reply)


@dataclass(frozen=True, eq=False)
class Held:
    """A streamed reply that stops after ``after`` text tokens and holds the stream open
    until ``release`` is set (or the server stops), then sends the rest: a test proves a
    client saw the first tokens while the server had not finished."""

    reply: Reply = field(default_factory=Reply)
    after: int = 1
    release: threading.Event = field(default_factory=threading.Event)


Item = Reply | Fail | Cut | Raw | Hang | Held


@dataclass(frozen=True)
class Request:
    """One request the server received."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]


# --------------------------------------------------------------------------- formats


def _openai_json(r: Reply) -> dict[str, Any]:
    calls = [
        {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
        for cid, name, args in r.tool_calls
    ]
    message: dict[str, Any] = {"role": "assistant", "content": "".join(r.tokens) or None}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": r.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if calls else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": r.usage[0],
            "completion_tokens": r.usage[1],
            "total_tokens": sum(r.usage),
        },
    }


def _openai_chunk(r: Reply, delta: dict[str, Any], finish: str | None = None) -> bytes:
    chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": r.model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def _openai_sse(r: Reply) -> tuple[list[bytes], list[bytes]]:
    """(frames with text, frames after the text) of a streamed reply."""
    head = [_openai_chunk(r, {"role": "assistant", "content": ""})]
    text = [_openai_chunk(r, {"content": t}) for t in r.tokens]
    tail: list[bytes] = []
    for i, (cid, name, args) in enumerate(r.tool_calls):
        function = {"name": name, "arguments": ""}
        start = {"index": i, "id": cid, "type": "function", "function": function}
        tail.append(_openai_chunk(r, {"tool_calls": [start]}))
        half = len(args) // 2
        for piece in (args[:half], args[half:]):
            tail.append(
                _openai_chunk(r, {"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
            )
    tail.append(_openai_chunk(r, {}, "tool_calls" if r.tool_calls else "stop"))
    usage = {"prompt_tokens": r.usage[0], "completion_tokens": r.usage[1]}
    last = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0}
    last.update({"model": r.model, "choices": [], "usage": usage})
    tail.append(b"data: " + json.dumps(last).encode() + b"\n\n")
    tail.append(b"data: [DONE]\n\n")
    return head + text, tail


def _anthropic_json(r: Reply) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if r.tokens:
        content.append({"type": "text", "text": "".join(r.tokens)})
    for cid, name, args in r.tool_calls:
        content.append({"type": "tool_use", "id": cid, "name": name, "input": json.loads(args)})
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": r.model,
        "content": content,
        "stop_reason": "tool_use" if r.tool_calls else "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": r.usage[0], "output_tokens": r.usage[1]},
    }


def _event(kind: str, data: dict[str, Any]) -> bytes:
    data = {"type": kind, **data}
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


def _anthropic_sse(r: Reply) -> tuple[list[bytes], list[bytes]]:
    message = _anthropic_json(Reply((), (), (r.usage[0], 1), r.model))
    message["content"], message["stop_reason"] = [], None
    head = [_event("message_start", {"message": message})]
    head.append(
        _event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
    )
    text = [
        _event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": t}})
        for t in r.tokens
    ]
    tail = [_event("content_block_stop", {"index": 0})]
    for i, (cid, name, args) in enumerate(r.tool_calls, 1):
        block = {"type": "tool_use", "id": cid, "name": name, "input": {}}
        tail.append(_event("content_block_start", {"index": i, "content_block": block}))
        half = len(args) // 2
        for piece in (args[:half], args[half:]):
            delta = {"type": "input_json_delta", "partial_json": piece}
            tail.append(_event("content_block_delta", {"index": i, "delta": delta}))
        tail.append(_event("content_block_stop", {"index": i}))
    stop = "tool_use" if r.tool_calls else "end_turn"
    tail.append(
        _event(
            "message_delta",
            {
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": r.usage[1]},
            },
        )
    )
    tail.append(_event("message_stop", {}))
    return head + text, tail


def _error_body(provider: str, status: int, message: str) -> dict[str, Any]:
    if provider == "anthropic":
        kind = "rate_limit_error" if status == 429 else "api_error"
        return {"type": "error", "error": {"type": kind, "message": message}}
    return {"error": {"message": message, "type": "error", "code": None}}


# --------------------------------------------------------------------------- server


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body are separate writes: without this, Nagle's algorithm and
        # the client's delayed ACK hold the body back by tens of milliseconds.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        owner = self.server.owner
        owner._record(Request(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        item = owner._next()
        if isinstance(item, Hang):
            owner._stopping.wait(item.seconds)
            item = item.then
        stream = bool(body.get("stream"))
        if isinstance(item, Fail):
            doc = _error_body(owner.provider, item.status, item.message)
            self._send(item.status, json.dumps(doc).encode(), "application/json", item.headers)
        elif isinstance(item, Raw):
            self._send(item.status, item.body, item.content_type)
        elif isinstance(item, Cut):
            self._stream(item.reply, cut=item)
        elif isinstance(item, Held):
            self._stream(item.reply, held=item)
        elif stream:
            self._stream(item)
        else:
            doc = (_anthropic_json if owner.provider == "anthropic" else _openai_json)(item)
            self._send(200, json.dumps(doc).encode(), "application/json")

    def _send(
        self, status: int, data: bytes, ctype: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _stream(self, reply: Reply, cut: Cut | None = None, held: Held | None = None) -> None:
        sse = _anthropic_sse if self.server.owner.provider == "anthropic" else _openai_sse
        head, tail = sse(reply)
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        frames = head + tail
        if cut is not None:
            frames = head[: len(head) - len(reply.tokens) + cut.after]
        if held is not None:
            split = len(head) - len(reply.tokens) + held.after
            self._chunks(frames[:split])
            owner = self.server.owner
            while not (held.release.wait(0.05) or owner._stopping.is_set()):
                pass
            frames = frames[split:]
        self._chunks(frames)
        if cut is not None and not cut.clean:
            # Drop the connection mid-body: no terminating chunk.
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _chunks(self, frames: list[bytes]) -> None:
        # All frames in one write: the server answers at once (each frame is still its
        # own chunk and SSE event, as a provider sends them).
        self.wfile.write(b"".join(b"%x\r\n%s\r\n" % (len(f), f) for f in frames))
        self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: LLMServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up (a timeout test) is not the server's failure


class LLMServer:
    """A scripted provider on ``127.0.0.1`` (a free port), served from a thread.

    ``with LLMServer("openai") as server:`` starts and stops it; ``server.url`` is the
    base URL an SDK takes (``/v1`` for OpenAI); ``server.script(...)`` queues answers;
    ``server.requests`` holds what arrived.
    """

    def __init__(self, provider: str = "openai", default: Item | None = None) -> None:
        if provider not in ("openai", "anthropic"):
            raise ValueError(provider)
        self.provider = provider
        self.default: Item = default or Reply()
        self.requests: list[Request] = []
        self._script: deque[Item] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """The base URL for the provider's SDK."""
        suffix = "/v1" if self.provider == "openai" else ""
        return f"http://127.0.0.1:{self.port}{suffix}"

    def script(self, *items: Item) -> LLMServer:
        """Queue answers for the next requests, in order."""
        with self._lock:
            self._script.extend(items)
        return self

    def _next(self) -> Item:
        with self._lock:
            return self._script.popleft() if self._script else self.default

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def start(self) -> LLMServer:
        """Serve from a daemon thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> LLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def closed_port() -> int:
    """A loopback port nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> None:
    """``python -m tests.llm_servers PROVIDER [TOKENS]``: serve replies of ``TOKENS``
    text tokens until stdin closes; prints the base URL first (for benchmarks, which
    want the server out of their own process)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    tokens = int(args[1]) if len(args) > 1 else 3
    reply = Reply(tokens=tuple(f"t{i % 10}" for i in range(tokens)))
    with LLMServer(args[0], default=reply) as server:
        print(server.url, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
