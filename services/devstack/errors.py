"""What every part of the dev stack shares: the progress callback and the user-facing error."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str], None]
"""Receives one human-readable line at a time (the CLI prints it; tests collect it)."""


def silent(message: str) -> None:
    """A ``Progress`` that discards everything."""


class DevStackError(RuntimeError):
    """Something the user has to act on; the message says what to do next."""
