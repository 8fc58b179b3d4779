"""A model for the cluster tests: the echo model, slow for inputs that ask for it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio
import anyio.lowlevel

from engine.messages import LLMResponse
from handlers.adapters.llm import ChatRequest, EchoModel

SLOW = "slow:"
"""An input starting with this takes ``SlowOnRequest.seconds`` in the model."""


class SlowOnRequest(EchoModel):
    """Echoes at once, except inputs starting with :data:`SLOW` (a turn to freeze a host in)."""

    def __init__(self, seconds: float = 3.0) -> None:
        super().__init__()
        self.seconds = seconds

    async def complete(self, messages: Sequence[Mapping[str, Any]], **kw: Any) -> Any:
        """Echo the last user message, after a pause when it asks for one."""
        if messages and str(messages[-1].get("content", "")).startswith(SLOW):
            await anyio.sleep(self.seconds)
        return await super().complete(messages, **kw)

    async def respond(
        self, request: ChatRequest, on_text: Callable[[str], None] | None = None
    ) -> LLMResponse:
        """Answer like :meth:`complete`, streaming the reply word by word to ``on_text``
        (so a streamed turn has text deltas to carry across the hop)."""
        response: LLMResponse = await self.complete(
            request.messages, system=request.system, max_tokens=request.max_tokens
        )
        if on_text is not None:
            *words, last = response.text.split(" ")
            for piece in [*(w + " " for w in words), last]:
                on_text(piece)
                await anyio.lowlevel.checkpoint()
        return response
