"""`--extra-weight`: the share of training windows drawn from a corpus's extra sources, fixed or moving.

A number W is a fixed share for the whole run, as it always was. A schedule moves it: `A:B` goes
linearly from A at the first step to B at the last (`1:0`: the period novels first, Austen by the
end: the measured pretrain-then-fine-tune recipe as one run), and `A:B@F` keeps A until fraction F
of the run and then B, a switch, which is what that recipe's two commands did. The run's position
is `janelm.schedule.mix_progress`: 0 through the warm-up (whose length does not depend on the run's,
so a time budget's warm-up, drawn before its steps are planned, draws as its `--max-iters N` replay
does), then on with the cosine to 1 at the last step.

Pure Python: `janelm train --help` and TrainConfig.validate read it.
"""

from __future__ import annotations

from dataclasses import dataclass

from janelm.errors import InputError

SCHEDULE_HELP = ("a share from 0 to 1 (0.3), a schedule A:B that moves it linearly from A at the first step to B "
                 "at the last (1:0: the extra text first, the main text by the end), or A:B@F: A until fraction F "
                 "of the run, then B (1:0@0.6)")


@dataclass(frozen=True)
class Share:
    """The share of extra windows over a run: `start` to `end`, linearly, or with `switch` (a fraction
    of the run in (0, 1)) `start` before it and `end` from it on."""

    start: float
    end: float
    switch: float | None = None

    def at(self, progress: float) -> float:
        """The share at `progress` (0: the start, 1: the last step). A fixed share is exactly itself."""
        if self.switch is not None:
            return self.start if progress < self.switch else self.end
        return self.start + (self.end - self.start) * progress

    @property
    def lowest(self) -> float:
        return min(self.start, self.end)

    @property
    def highest(self) -> float:
        return max(self.start, self.end)


def extra_weight_arg(text: str) -> float | str:
    """The flag's value as given: a number is a float (a fixed share, as the flag always took); anything
    else is kept as text, a schedule that TrainConfig.validate checks and the checkpoint records."""
    try:
        return float(text)
    except ValueError:
        return text


def parse_extra_weight(value: float | str) -> float | Share | None:
    """A fixed share (float), a schedule (Share), or None for a negative number: the corpus's own
    default. Anything else is refused in one line naming the flag."""
    if not isinstance(value, str):
        if value < 0:
            return None
        try:
            return _share(value)
        except ValueError:
            raise InputError(f"--extra-weight must be from 0 to 1 (the share of training windows drawn from the "
                             f"extra sources), got {value}") from None
    body, at, switch = value.partition("@")
    try:
        start, end = (_share(part) for part in body.split(":"))  # ValueError unless exactly two
        fraction = _share(switch) if at else None
        if fraction in (0.0, 1.0):  # a switch at either end is no schedule
            raise ValueError
    except ValueError:
        raise InputError(f"--extra-weight {value} is neither a share nor a schedule: give {SCHEDULE_HELP}, "
                         f"with F above 0 and below 1") from None
    return Share(start, end, fraction)


def _share(text: str | float) -> float:
    share = float(text)
    if not 0.0 <= share <= 1.0:  # NaN too
        raise ValueError(text)
    return share


def as_given(value: float | str) -> str:
    """The flag's value as the user typed it, for messages."""
    return value if isinstance(value, str) else f"{value:g}"
