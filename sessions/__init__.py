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
from sessions.gates import Question
from sessions.heartbeat import Heartbeat
from sessions.history import HistoryView, MessagePage, MessageWindow
from sessions.limits import Limits, validate_session_id
from sessions.manager import SessionManager
from sessions.session import Session, SessionRuntime
from sessions.sessionlog import ReasoningStep
from sessions.stream import STREAM_BUFFER, TurnStream
from sessions.turns import Phase, TurnResult, checked_input
from sessions.usage import ModelUsage, UsageTotals

__all__ = [
    "STREAM_BUFFER",
    "CompactionResult",
    "Heartbeat",
    "HistoryView",
    "Limits",
    "MessagePage",
    "MessageWindow",
    "ModelUsage",
    "Phase",
    "Question",
    "ReasoningStep",
    "Session",
    "SessionManager",
    "SessionRuntime",
    "Summarizer",
    "TurnResult",
    "TurnStream",
    "UsageTotals",
    "checked_input",
    "extract_summarizer",
    "llm_summarizer",
    "validate_session_id",
]
