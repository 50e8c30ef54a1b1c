"""Weight averaging: an exponential moving average of the weights, evaluated and saved as the model.

Many passes over a small corpus with dropout and small batches leave each step's weights carrying
the noise of their last batches; an average over the last few hundred steps sits nearer the middle
of where they wander and scores better on unseen text (docs/quality.md). The average is kept beside
the weights, which go on training undisturbed: evaluation and `best` see the average, `last` keeps
both, so a resumed run goes on exactly as it would have.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.nn as nn

EVERY = 4  # steps between updates, each with the decay to the 4th power: a quarter of the cost, the same average


class WeightAverage:
    """An exponential moving average of `model`'s parameters, with `decay` per step. Early on the
    decay is lowered to (1 + n) / (10 + n) after n updates, so the first weights do not linger."""

    def __init__(self, model: nn.Module, decay: float):
        self.params = list(model.parameters())
        self.decay = decay
        self.average = [p.detach().clone() for p in self.params]
        self.updates = 0

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Take in the weights after optimizer step `step` (1, 2, ...)."""
        if step % EVERY:
            return
        self.updates += 1
        keep = min(self.decay ** EVERY, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.average, [p.detach() for p in self.params], 1.0 - keep)

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The model holds the average inside the block and its own weights again after it."""
        own = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            torch._foreach_copy_(self.params, self.average)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.params, own)

    def state_dict(self) -> dict[str, Any]:
        """The average as a checkpoint holds it (written at once: the tensors themselves, not copies)."""
        return {"average": self.average, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        average = state["average"]
        if len(average) != len(self.params) or any(a.shape != p.shape for a, p in zip(average, self.params)):
            raise ValueError("the checkpoint's weight average does not match the model")
        self.average = [a.to(device=p.device, dtype=p.dtype) for a, p in zip(average, self.params)]
        self.updates = int(state["updates"])
