"""The error types of mistakes a user can fix (a bad path, an unknown option value, the wrong checkpoint).

Every error mambakit raises on purpose derives from `MambakitError`: the CLI prints its message as one line and
exits with code 2. Any other exception that reaches the CLI is a bug in mambakit, and is reported as one."""

from __future__ import annotations


class MambakitError(Exception):
    """Base of the errors mambakit raises on purpose, each a one-line message saying what to do."""


class UserError(MambakitError, ValueError):
    """A mistake the user can fix; the CLI prints its message as one line and exits with code 2."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none), for one-line errors."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def described(error: BaseException) -> str:
    """ "Type: message" with the message's whitespace folded onto one line (its type's name when it has none)."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
