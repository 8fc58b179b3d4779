"""Adapters: how handlers reach a model, a memory and tools.

Each is a :class:`typing.Protocol` (runtime-checkable) with an offline default that
needs no network, no key and no randomness:

==========  ==================================  ==========================================
protocol    default                             notes
==========  ==================================  ==========================================
``LLM``     :class:`EchoModel`                  echoes the user; ``/tool NAME ARGS`` asks
                                                for a tool; optional simulated latency
``Memory``  :class:`KeywordMemory`              keyword-overlap recall, bounded per session
``Tools``   :class:`ToolBox`                    Python callables; ``calculator``, ``clock``
==========  ==================================  ==========================================

Hosted models: :func:`from_spec` (``"openai:MODEL"``, ``"anthropic:MODEL"``) builds
:class:`~handlers.adapters.openai.OpenAIModel` or
:class:`~handlers.adapters.anthropic.AnthropicModel`, importing the SDK only then.
:class:`ScriptedModel` plays back fixed answers for tests.  Adapter failures raise
:class:`engine.errors.AdapterError`, or :class:`engine.errors.TransientAdapterError`
when trying again may help (the engine retries those per node policy).
"""

from engine.messages import (
    ChatMessage,
    LLMResponse,
    MemoryItem,
    ToolCall,
    ToolResult,
    ToolSpec,
    Usage,
    estimate_tokens,
)
from handlers.adapters.llm import (
    LLM,
    ChatRequest,
    EchoModel,
    ScriptedModel,
    StreamingLLM,
    count_tokens,
)
from handlers.adapters.memory import KeywordMemory, Memory, keywords
from handlers.adapters.spec import from_spec
from handlers.adapters.tools import ToolBox, Tools, calculate, calculator, clock

__all__ = [
    "LLM",
    "ChatMessage",
    "ChatRequest",
    "EchoModel",
    "KeywordMemory",
    "LLMResponse",
    "Memory",
    "MemoryItem",
    "ScriptedModel",
    "StreamingLLM",
    "ToolBox",
    "ToolCall",
    "ToolResult",
    "ToolSpec",
    "Tools",
    "Usage",
    "calculate",
    "calculator",
    "clock",
    "count_tokens",
    "estimate_tokens",
    "from_spec",
    "keywords",
]
