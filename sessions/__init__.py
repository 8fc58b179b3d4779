"""Sessions: conversations that run a DOT turn graph per message, durably and concurrently.

::

    from sessions import SessionManager

    async with SessionManager() as manager:
        session = await manager.get_or_create("alice")
        result = await session.send("hello")
        page = await session.messages(0, 20)

Everything public is re-exported here; the submodules are implementation.
"""

from sessions.compaction import CompactionResult, Summarizer, extract_summarizer, llm_summarizer
from sessions.heartbeat import Heartbeat
from sessions.history import HistoryView, MessagePage, MessageWindow
from sessions.limits import Limits, validate_session_id
from sessions.manager import SessionManager
from sessions.session import Session, SessionRuntime
from sessions.sessionlog import ReasoningStep
from sessions.turns import Phase, TurnResult, checked_input

__all__ = [
    "CompactionResult",
    "Heartbeat",
    "HistoryView",
    "Limits",
    "MessagePage",
    "MessageWindow",
    "Phase",
    "ReasoningStep",
    "Session",
    "SessionManager",
    "SessionRuntime",
    "Summarizer",
    "TurnResult",
    "checked_input",
    "extract_summarizer",
    "llm_summarizer",
    "validate_session_id",
]
