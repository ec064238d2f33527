"""Errors a user can act on.

Every error raised by the core is an ``OctoflashError``; its message is
written for the person at the printer and says what to do next.  The
``status`` is the HTTP code the Moonraker adapter answers with.
"""
from __future__ import annotations

from typing import List, Optional


def clip_text(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    dropped = len(text) - limit
    return text[:limit] + f" … ({dropped} more characters left out)"


class OctoflashError(Exception):
    status = 500

    def __init__(self, message: str, *, hint: Optional[str] = None) -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        msg = super().__str__()
        if self.hint:
            return f"{msg}\n{self.hint}"
        return msg


class ValidationError(OctoflashError):
    """Bad input: a profile, option or argument that cannot be used."""
    status = 400


class NotFoundError(OctoflashError):
    status = 404


class ConflictError(OctoflashError):
    """The request is sound but cannot run now (busy, printing, board held)."""
    status = 409


class UnavailableError(OctoflashError):
    """Something the request needs is not there (service control, a tool)."""
    status = 503


class ToolError(OctoflashError):
    """An external program failed; ``log_tail`` holds its last lines."""

    def __init__(self, message: str, *, log_tail: Optional[List[str]] = None,
                 returncode: Optional[int] = None, hint: Optional[str] = None) -> None:
        super().__init__(message, hint=hint)
        self.log_tail = list(log_tail or [])
        self.returncode = returncode

    def __str__(self) -> str:
        text = super().__str__()
        if self.log_tail:
            text += "\nLast lines of output:\n  " + "\n  ".join(self.log_tail)
        return text


class BuildError(ToolError):
    pass


class FlashError(ToolError):
    """A write failed or could not be confirmed; ``recovery`` says how to get the board back."""

    def __init__(self, message: str, *, recovery: Optional[str] = None,
                 log_tail: Optional[List[str]] = None, returncode: Optional[int] = None,
                 hint: Optional[str] = None) -> None:
        super().__init__(message, log_tail=log_tail, returncode=returncode, hint=hint)
        self.recovery = recovery


class CheckFailed(OctoflashError):
    """A check before writing refused the flash; nothing was written."""
    status = 409
