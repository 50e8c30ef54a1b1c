"""Held-out scoring: loss, perplexity, bits per character and per byte over a whole text.

Every token after the first is scored exactly once. Windows of `context` tokens advance by half a
context; each window scores only its second half (the first window scores everything), so every
scored token has at least half a context of history once the text allows it. Windows are scored in
batches, so memory stays bounded whatever the text's length.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F


@torch.no_grad()
def mean_loss(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], ctx) -> float:
    """Mean loss over fixed batches, in eval mode (no dropout, so no RNG is drawn)."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=batches[0][0].device)
    for x, y in batches:
        with ctx:
            _, loss = model(x, y)
        total += loss.double()
    model.train(was_training)
    return (total / len(batches)).item()


@dataclass(frozen=True)
class Score:
    nats: float  # summed negative log-likelihood of the scored tokens
    tokens: int  # tokens scored
    chars: int  # characters those tokens spell
    bytes: int  # UTF-8 bytes those tokens spell

    def as_dict(self) -> dict[str, float | int]:
        loss = self.nats / self.tokens if self.tokens else math.nan
        bits = self.nats / math.log(2)
        return {
            "loss": loss,
            "perplexity": math.exp(loss) if self.tokens else math.nan,
            "bits_per_char": bits / self.chars if self.chars else math.nan,
            "bits_per_byte": bits / self.bytes if self.bytes else math.nan,
            "tokens": self.tokens,
            "chars": self.chars,
        }


def encode_lines(tokenizer, lines: Iterable[str]) -> tuple[torch.Tensor, str]:
    """Encode text a paragraph at a time into a compact id array; returns (ids, first token's text).

    Paragraph boundaries are token boundaries for every tokenizer here (newlines are their own
    pre-tokens), so this equals encoding the whole text without holding it as Python ints."""
    ids = array("I")
    for line in lines:
        ids.extend(tokenizer.encode(line))
    first = tokenizer.decode(ids[:1]) if ids else ""
    return torch.frombuffer(ids, dtype=torch.int32).long() if ids else torch.zeros(0, dtype=torch.long), first


def windows(n_tokens: int, context: int) -> list[tuple[int, int, int]]:
    """(start, length, first scored position within the window) for each scoring window."""
    if n_tokens < 2:
        return []
    stride = max(1, context // 2)
    out, scored_to = [], 1  # next target position (absolute) still to score
    start = 0
    while scored_to < n_tokens:
        start = min(start, max(0, n_tokens - 1 - context))  # the last window ends at the text's end
        length = min(context, n_tokens - 1 - start)
        out.append((start, length, scored_to - 1 - start))
        scored_to = start + length + 1
        start += stride
    return out


@torch.inference_mode()
def score_ids(model, ids: torch.Tensor, *, batch_size: int = 16) -> tuple[float, int]:
    """Summed loss in nats and the number of tokens scored, over all of `ids` (1-D)."""
    device = model.tok_embed.weight.device
    plan = windows(len(ids), model.config.context)
    total, count = 0.0, 0
    # Windows of equal length batch together; only the last one can be shorter.
    for i in range(0, len(plan), batch_size):
        group = plan[i : i + batch_size]
        for length in sorted({g[1] for g in group}):
            same = [g for g in group if g[1] == length]
            rows = torch.stack([ids[s : s + length + 1] for s, _, _ in same]).to(device)
            logits, _ = model(rows[:, :-1])
            nll = F.cross_entropy(logits.float().transpose(1, 2), rows[:, 1:], reduction="none")
            for row, (_, _, first) in zip(nll, same):
                total += row[first:].double().sum().item()
                count += length - first
    return total, count
