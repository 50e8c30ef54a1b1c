"""Errors the CLI turns into one line on stderr and an exit code.

Raise `InputError` for anything the user can fix by changing the command or its input
(exit 2), and `JaneLMError` for failures at run time (exit 1). Messages name the problem
and the fix in one line.
"""

import signal
from contextlib import contextmanager
from typing import Iterator


class JaneLMError(Exception):
    """A failure at run time: the command was fine but the work could not be done."""

    exit_code = 1


class InputError(JaneLMError):
    """Bad usage or bad input: a wrong flag value, a missing or malformed file."""

    exit_code = 2


class Interrupted(JaneLMError):
    """Training stopped by a signal after saving its state; exits 128 + the signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


def first_line(e: BaseException, limit: int = 120) -> str:
    """A short reason for an error from elsewhere: the first line of its message, with the type
    where the message is bare."""
    text = str(e).strip().splitlines()
    if not text:
        return type(e).__name__
    if isinstance(e, (KeyError, IndexError, TypeError, AttributeError)) or len(text[0]) < 8:
        return f"{type(e).__name__}: {text[0]}"[:limit]
    return text[0][:limit]


@contextmanager
def catch_stop_signals() -> Iterator[list[int]]:
    """Turn SIGINT/SIGTERM into a flag the loop checks between steps, so it can save first."""
    received: list[int] = []
    handler = lambda signum, frame: received.append(signum)  # noqa: E731
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, h in old.items():
            signal.signal(s, h)
