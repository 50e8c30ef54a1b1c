"""Where human-facing output goes: stderr, so stdout stays clean for text and --json results."""

from __future__ import annotations

import sys

from rich.console import Console


def stderr() -> Console:
    """A rich console on the current stderr (looked up each time, so redirection is respected)."""
    return Console(file=sys.stderr, highlight=False)


def note(message: str) -> None:
    """One line of information for the user, on stderr."""
    print(message, file=sys.stderr, flush=True)
