"""What every command shares: one stderr console, clean failures that say what to do next,
settings read once with readable validation errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console

T = TypeVar("T")

console = Console(stderr=True)


def fail(message: str, hint: str | None = None) -> typer.Exit:
    """Print the error (and the next step) and return the exit to raise."""
    console.print(f"[bold red]error:[/] {message}")
    if hint:
        console.print(f"[yellow]next:[/] {hint}")
    return typer.Exit(code=1)


def read_settings(factory: Callable[[], T]) -> T:
    """Build a settings object, turning a validation error into a readable message."""
    try:
        return factory()
    except ValidationError as exc:
        lines = [f"  {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)]
        raise fail(f"invalid {exc.title} settings:\n" + "\n".join(lines),
                   "fix the environment variables named above") from None


def progress(message: str) -> None:
    console.print(f"[dim]•[/] {message}")
