"""Where human-facing output goes: stderr, so stdout stays clean for text and --json results."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console


def stderr() -> Console:
    """A rich console on the current stderr (looked up each time, so redirection is respected)."""
    return Console(file=sys.stderr, highlight=False)


def note(message: str) -> None:
    """One line of information for the user, on stderr."""
    print(message, file=sys.stderr, flush=True)


def progress_bar(**options: Any):
    """A tqdm bar on stderr, gone when done. Into a log file (stderr not a terminal) it writes a
    line every 30 s rather than ten a second."""
    from tqdm import tqdm

    return tqdm(**{"file": sys.stderr, "dynamic_ncols": True, "leave": False,
                   "mininterval": 0.1 if sys.stderr.isatty() else 30.0, **options})
