"""What the hosted-model adapters share: endpoint, key and model defaults, and the one
mapping from an SDK's or HTTP library's exceptions to turngraph's typed errors.

The OpenAI and Anthropic SDKs draw the same exception tree (``APIConnectionError``,
``APITimeoutError``, ``APIStatusError`` with ``status_code``...), so one mapper serves
both; it reads attributes, never an SDK's private modules.  Messages name the provider,
the endpoint's host and the HTTP status, and never the key: any text that contains the
key has it replaced before it becomes an error.
"""

from __future__ import annotations

import datetime
import email.utils
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import anyio

from engine.errors import (
    AdapterError,
    MissingExtraError,
    ProviderAuthError,
    ProviderConnectionError,
    ProviderError,
    ProviderRequestError,
    ProviderResponseError,
    ProviderServerError,
    ProviderTimeout,
    RateLimited,
    StreamInterrupted,
)
from engine.messages import LLMResponse, ToolCall, Usage, estimate_tokens
from handlers.adapters.llm import DEFAULT_TIMEOUT, INVALID_ARGUMENTS, ChatRequest, count_tokens

__all__ = [
    "DEFAULT_TIMEOUT",
    "HostedModel",
    "dumps",
    "endpoint_host",
    "import_sdk",
    "parse_arguments",
    "retry_after_seconds",
]

NO_KEY = "no-key"
"""Sent as the key when none is configured: local servers (Ollama, vLLM, llama.cpp)
need none, and both SDKs refuse to build a client without one."""

_MAX_MESSAGE = 300
_CUT = frozenset({"RemoteProtocolError", "ReadError", "NetworkError", "StreamError"})
"""httpx's errors for a connection lost after the response began."""


def endpoint_host(url: str) -> str:
    """``host:port`` of ``url``, without any user or password in it."""
    parts = urlsplit(url)
    host = parts.hostname or url
    return f"{host}:{parts.port}" if parts.port else host


def _number(text: str | None) -> float | None:
    """``text`` as a finite number of at least 0; ``None`` when it is none ("inf" and
    "nan" say no wait one could honour)."""
    try:
        value = float(text) if text else math.nan
    except ValueError:
        return None
    return max(0.0, value) if math.isfinite(value) else None


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """A response's ``Retry-After`` (seconds or an HTTP date; ``retry-after-ms`` too);
    ``None`` when absent or unreadable."""
    if not headers:
        return None
    ms = _number(headers.get("retry-after-ms"))
    if ms is not None:
        return ms / 1000.0
    raw = headers.get("retry-after")
    if not raw:
        return None
    seconds = _number(raw)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (ValueError, TypeError, IndexError):  # neither seconds nor a date: no wait known
        return None
    if when.tzinfo is None:  # "-0000": a UTC time of unknown origin
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - time.time())


def _server_message(exc: BaseException) -> str:
    """The server's own message from an SDK error body, else the exception's text."""
    body = getattr(exc, "body", None)
    if isinstance(body, Mapping):
        error = body.get("error", body)
        if isinstance(error, Mapping) and isinstance(error.get("message"), str):
            return str(error["message"])
    return str(getattr(exc, "message", None) or exc)


class HostedModel:
    """Base of the adapters that call a provider over HTTP through its SDK.

    Subclasses set ``provider`` (also the SDK's module and the extra's name),
    ``key_env``, ``url_env`` and ``default_url``, and implement ``_client_of`` (the
    SDK's async client, built with its own retries off, ``max_retries=0``: the node's
    retry policy is the only retry loop), ``_arguments``, ``_create``, ``_parse`` and
    ``_collect``.
    """

    provider = ""
    key_env = ""
    url_env = ""
    default_url = ""

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.model = model
        self.base_url = base_url or os.environ.get(self.url_env) or self.default_url
        self.host = endpoint_host(self.base_url)
        self.timeout = timeout
        # The key is kept only to build the client and to scrub it from messages.
        self._key = api_key or os.environ.get(self.key_env) or ""
        self._client = self._client_of(import_sdk(self.provider, self.provider, self.provider))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.provider}:{self.model} at {self.host}>"

    @property
    def api_key(self) -> str:
        """The key to send (a placeholder when none is configured)."""
        return self._key or NO_KEY

    async def complete(
        self,
        messages: Any,
        *,
        system: str | None = None,
        tools: Any = None,
        max_tokens: int | None = None,
    ) -> LLMResponse:
        """The :class:`~handlers.adapters.LLM` call: :meth:`respond` without streaming."""
        return await self.respond(ChatRequest(messages, system, tools, max_tokens))

    async def respond(
        self, request: ChatRequest, on_text: Callable[[str], None] | None = None
    ) -> LLMResponse:
        """Answer ``request`` (see :class:`~handlers.adapters.StreamingLLM`): one call,
        streamed to ``on_text`` when given; failures as typed :class:`ProviderError`.
        A server that reports no usage gets estimated counts (four characters a token)."""
        kwargs = self._arguments(request)
        try:
            if on_text is None:
                response = self._parse(await self._create(kwargs, stream=False))
            else:
                response = await self._collect(await self._create(kwargs, stream=True), on_text)
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:
            mapped = self.error(exc, streaming=on_text is not None)
            if mapped is None or mapped is exc:
                raise
            raise mapped from exc
        u = response.usage
        if u.input_tokens or u.output_tokens or not (response.text or response.tool_calls):
            return response
        # Some servers (llama.cpp's among them) send no usage in a stream: estimate it
        # as the offline models do rather than record a visit that cost nothing.
        tokens_in = count_tokens(request.messages, request.system)
        usage = Usage(tokens_in, estimate_tokens(response.text), u.model)
        return LLMResponse(response.text, response.tool_calls, usage, response.model)

    # ------------------------------------------------------------------ per provider

    def _client_of(self, sdk: Any) -> Any:
        raise NotImplementedError

    def _arguments(self, request: ChatRequest) -> dict[str, Any]:
        raise NotImplementedError

    async def _create(self, kwargs: dict[str, Any], *, stream: bool) -> Any:
        raise NotImplementedError

    def _parse(self, response: Any) -> LLMResponse:
        raise NotImplementedError

    async def _collect(self, stream: Any, on_text: Callable[[str], None]) -> LLMResponse:
        raise NotImplementedError

    async def aclose(self) -> None:
        """Close the SDK client's connections (an adapter outliving its event loop
        should be closed on that loop first)."""
        await self._client.close()

    # ------------------------------------------------------------------ errors

    def _scrub(self, text: str) -> str:
        text = " ".join(text.split())
        if len(self._key) >= 4:
            text = text.replace(self._key, "***")
        return text[:_MAX_MESSAGE]

    def error(self, exc: BaseException, *, streaming: bool = False) -> AdapterError | None:
        """``exc`` as a typed :class:`ProviderError`, or ``None`` when it is not a
        provider failure (a bug of ours, which then propagates as is)."""
        if isinstance(exc, AdapterError):
            return exc
        p, host = self.provider, self.host
        status = getattr(exc, "status_code", None)
        if isinstance(status, int):
            return self._status_error(exc, status)
        name = type(exc).__name__
        cause = exc.__cause__ or exc.__context__
        detail = self._scrub(str(cause or exc) or name)
        if streaming and type(cause).__name__ in _CUT:
            name = type(cause).__name__  # an SDK's wrapper around a dropped stream
        if "Timeout" in name:
            return ProviderTimeout(p, host, None, f"no answer within {self.timeout:g}s")
        if name == "APIConnectionError" or name in ("ConnectError", "ConnectTimeout"):
            return ProviderConnectionError(p, host, None, f"cannot connect: {detail}")
        if name in _CUT:
            if streaming:
                return StreamInterrupted(p, host, None, f"stream cut mid-way: {detail}")
            return ProviderConnectionError(p, host, None, f"connection lost: {detail}")
        if name == "APIError":  # an error event inside a stream: the server gave up
            return ProviderServerError(p, host, None, self._scrub(_server_message(exc)))
        if isinstance(exc, ValueError) or name == "APIResponseValidationError":
            return ProviderResponseError(p, host, None, f"malformed response: {detail}")
        return None

    def _status_error(self, exc: BaseException, status: int) -> ProviderError:
        p, host = self.provider, self.host
        message = self._scrub(_server_message(exc))
        if status == 429:
            headers = getattr(getattr(exc, "response", None), "headers", None)
            return RateLimited(p, host, message, retry_after_seconds(headers))
        if status in (401, 403):
            hint = f"check {self.key_env}" if self._key else f"{self.key_env} is not set"
            return ProviderAuthError(p, host, status, f"{message} ({hint})")
        if status >= 500 or status in (408, 409):
            return ProviderServerError(p, host, status, message)
        return ProviderRequestError(p, host, status, message)

    def malformed(self, what: str) -> ProviderResponseError:
        """A response that parsed but is not the provider's shape."""
        return ProviderResponseError(self.provider, self.host, None, f"malformed response: {what}")

    def interrupted(self) -> StreamInterrupted:
        """A stream that ended before its final event."""
        return StreamInterrupted(
            self.provider, self.host, None, "stream ended before the reply was complete"
        )


def import_sdk(module: str, provider: str, extra: str) -> Any:
    """The SDK ``module``, imported now (only when its provider is chosen), or
    :class:`~engine.errors.MissingExtraError` naming the pip command."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(provider, extra) from exc


def dumps(value: Any) -> str:
    """``value`` as compact JSON text (tool arguments sent back to a provider)."""
    return json.dumps(value, ensure_ascii=False, default=str)


def parse_arguments(raw: str | None, name: str, call_id: str) -> ToolCall:
    """A tool call from the model's JSON argument text; text that is not a JSON object is
    kept under :data:`~handlers.adapters.llm.INVALID_ARGUMENTS` for ``dispatch_tools``."""
    text = raw or "{}"
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        return ToolCall(name=name, arguments={INVALID_ARGUMENTS: text}, id=call_id)
    return ToolCall(name=name, arguments=value, id=call_id)
