"""What crosses the Ray hop: turn results and errors as plain, picklable data.

turngraph's errors build their message from fields in ``__init__`` and do not survive
pickling as they are (``Exception.__reduce__`` calls the class with the message alone),
and a Ray task error wraps whatever it carries.  So a host sends an error as its class
path, message and scalar fields (and tuples of scalars), and the client builds the
same class again: callers catch :class:`~sessions.errors.SessionBusy` or
:class:`~sessions.errors.Fenced` across the cluster exactly as in one process.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, replace
from typing import Any

from engine.errors import TurngraphError
from sessions.cluster.errors import HostError
from sessions.session import TurnResult

__all__ = ["PackedError", "Reply", "pack_error", "turn_reply", "unpack_error"]

_SCALARS = (str, int, float, bool, type(None))
_OURS = ("engine.", "sessions.", "handlers.")


@dataclass(frozen=True, slots=True)
class PackedError:
    """An exception as data: ``module.qualname``, its message, its scalar fields."""

    path: str
    message: str
    fields: tuple[tuple[str, Any], ...]


@dataclass(frozen=True, slots=True)
class Reply:
    """A host's answer: a value, or the error to raise on the client."""

    value: Any = None
    error: PackedError | None = None
    cause: PackedError | None = None
    """A failed turn's error (the value is then a :class:`TurnResult` without it)."""
    moved: bool = False
    """The host refused: by the members it was last told, another host serves the
    session now (the caller routes again)."""

    def unwrap(self) -> Any:
        """The value (a failed turn's error put back), or raise the host's error."""
        if self.error is not None:
            raise unpack_error(self.error)
        if self.cause is not None:
            return replace(self.value, error=unpack_error(self.cause))
        return self.value


def _plain(value: Any) -> bool:
    """A scalar, or a tuple of scalars (a gate's choices)."""
    if isinstance(value, tuple):
        return all(isinstance(v, _SCALARS) for v in value)
    return isinstance(value, _SCALARS)


def pack_error(exc: BaseException) -> PackedError:
    """``exc`` as picklable data (only scalar fields and tuples of them travel)."""
    cls = type(exc)
    fields = tuple((k, v) for k, v in getattr(exc, "__dict__", {}).items() if _plain(v))
    return PackedError(f"{cls.__module__}:{cls.__qualname__}", str(exc), fields)


def unpack_error(packed: PackedError) -> TurngraphError:
    """The error again: the same turngraph class with its fields, else a HostError."""
    module, _, name = packed.path.partition(":")
    cls: Any = None
    if module.startswith(_OURS) and "." not in name:
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            cls = None
    if not (isinstance(cls, type) and issubclass(cls, TurngraphError)):
        return HostError(name or packed.path, packed.message)
    err: TurngraphError = cls.__new__(cls)
    Exception.__init__(err, packed.message)
    err.__dict__.update(packed.fields)
    return err


def turn_reply(result: TurnResult) -> Reply:
    """A turn's result for the hop: a failed turn's error travels packed."""
    if result.error is None:
        return Reply(result)
    return Reply(replace(result, error=None), cause=pack_error(result.error))
