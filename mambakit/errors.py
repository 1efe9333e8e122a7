"""The error type of mistakes a user can fix (a bad path, an unknown option value, the wrong checkpoint)."""

from __future__ import annotations


class UserError(ValueError):
    """A mistake the user can fix; the CLI prints its message as one line and exits with code 2."""
