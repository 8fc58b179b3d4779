"""What a turn's input may be: checked once, before anything of the turn is written."""

from __future__ import annotations

from sessions.errors import InvalidInput

__all__ = ["checked_input"]


def checked_input(text: object, session_id: str) -> str:
    """``text`` if it can be a turn's input, else :class:`~sessions.errors.InvalidInput`.

    Every entry that starts a turn (``send``, a stream, the CLI, chat) calls this before
    anything is written: a non-``str`` input would be committed and then fail every
    later load, and a ``str`` with a lone surrogate cannot be encoded at all.  A
    subclass of ``str`` is taken as its plain value.
    """
    if type(text) is not str:
        if not isinstance(text, str):
            raise InvalidInput(session_id, f"input must be a str, not {type(text).__name__}")
        text = str.__str__(text)
    if not text.isascii():  # ASCII (nearly every input) always encodes
        try:
            text.encode()
        except UnicodeEncodeError as exc:
            raise InvalidInput(
                session_id, f"input cannot be encoded as UTF-8 at index {exc.start}: {exc.reason}"
            ) from None
    return text
