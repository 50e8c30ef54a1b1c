"""What the HTTP side and the batcher exchange: jobs in, events out, and the two refusals.

Plain Python, so the HTTP process of `janelm serve` never imports PyTorch (janelm.serving.decoder).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from janelm.config import SamplingOptions


@dataclass
class Event:
    """What a row delivers: text as it is decoded, then once `finish` ("stop", "length",
    "cancelled" once its row is freed, or "error" with `error` saying why) with the number of
    tokens generated."""

    text: str = ""
    finish: str | None = None
    tokens: int = 0
    error: str = ""


@dataclass(eq=False)
class Job:
    """One text to generate. `deliver` is called on the batcher's thread; setting `cancelled`
    (the client went away) frees the row at the next step."""

    prompt: Sequence[int]
    max_tokens: int
    opts: SamplingOptions
    seed: int
    stops: Sequence[str]
    deliver: Callable[[Event], None]
    cancelled: bool = False


class QueueFull(Exception):
    """More jobs waiting than the server takes."""


class Closed(Exception):
    """The server is shutting down."""
