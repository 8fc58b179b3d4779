"""Library-side logging that never writes to stdout.

structlog, left unconfigured, prints every level to stdout: fine for a script, wrong for a
library whose host may be printing JSON there.  So turngraph's own warnings go through
:func:`log`: to structlog when the application configured it (``structlog.configure``),
else to the stdlib logger ``turngraph``, whose default output is stderr and only for
warnings and above.  Per-node logging is separate: :class:`engine.StructlogObserver`,
which a caller opts into.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["log"]

_stdlib = logging.getLogger("turngraph")
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def log(level: str, event: str, **fields: Any) -> None:
    """Log ``event`` with ``fields`` at ``level`` (debug, info, warning, error)."""
    import structlog

    if structlog.is_configured():
        getattr(structlog.get_logger("turngraph"), level)(event, **fields)
        return
    numeric = _LEVELS[level]
    if _stdlib.isEnabledFor(numeric):
        detail = " ".join(f"{k}={v!r}" for k, v in fields.items())
        _stdlib.log(numeric, "%s %s", event, detail)
