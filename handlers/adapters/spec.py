"""``from_spec("openai:gpt-4.1-mini")``: a model adapter from a short text.

=====================  ======================================================
``echo``               :class:`~handlers.adapters.EchoModel`, offline (the default)
``openai:MODEL``       :class:`~handlers.adapters.openai.OpenAIModel`: Chat Completions
                       at ``base_url``, else ``OPENAI_BASE_URL``, else OpenAI
``anthropic:MODEL``    :class:`~handlers.adapters.anthropic.AnthropicModel`: the
                       Messages API at ``base_url``, else ``ANTHROPIC_BASE_URL``
=====================  ======================================================

A provider's SDK is imported only when its spec is chosen; when it is missing,
:class:`~engine.errors.MissingExtraError` names the pip command.
"""

from __future__ import annotations

from engine.errors import LLMSpecError
from handlers.adapters.llm import DEFAULT_TIMEOUT, LLM, EchoModel

__all__ = ["ENV_SPEC", "PROVIDERS", "from_spec"]

ENV_SPEC = "TURNGRAPH_LLM"
"""The environment variable the command line reads a spec from."""

PROVIDERS = ("echo", "openai", "anthropic")


def from_spec(
    spec: str,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> LLM:
    """The model adapter ``spec`` names (see the module); :class:`LLMSpecError` for a
    spec that names none.  ``base_url``, ``api_key`` and ``timeout`` (seconds, per
    request) go to a hosted model."""
    provider, sep, model = spec.strip().partition(":")
    provider = provider.lower()
    if provider == "echo":
        if base_url is not None:
            raise LLMSpecError(spec, "the echo model takes no base URL")
        return EchoModel(name=model or "echo")
    if provider not in PROVIDERS:
        raise LLMSpecError(
            spec, f"unknown provider {provider!r} (use echo, openai:MODEL or anthropic:MODEL)"
        )
    if not sep or not model.strip():
        raise LLMSpecError(spec, f"name the model: {provider}:MODEL")
    if provider == "openai":
        from handlers.adapters.openai import OpenAIModel

        return OpenAIModel(model.strip(), base_url=base_url, api_key=api_key, timeout=timeout)
    from handlers.adapters.anthropic import AnthropicModel

    return AnthropicModel(model.strip(), base_url=base_url, api_key=api_key, timeout=timeout)
