"""A model for the cluster tests: the echo model, slow for inputs that ask for it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import anyio

from handlers.adapters.llm import EchoModel

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
