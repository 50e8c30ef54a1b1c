"""An ensemble: several GPTs of one shape, trained side by side, whose predictions are averaged.

On Austen alone, more compute stops buying a better single model (each token is seen many times,
and a bigger or longer-trained model memorises it), but a second model trained as long still helps:
averaging two models' probabilities cancels much of what each learned by chance (data-bound
training's lesson: Kim et al., "Pre-training under infinite compute", 2025). Two ten-minute
`cpu-3x256` models on a Zen 4 (seeds 1337 and 11) scored 1.5061 and 1.4907 bits/char on Northanger
Abbey; their average 1.4693, better than the twenty-minute single model's 1.4861 (docs/quality.md).

Training, each member reads its own share of the batch's rows (its own data, as if trained alone)
and the loss is the members' mean, so no member's gradient depends on another's. Otherwise (eval,
generation) every member reads every row and the output is the log of the members' mean
probability, which every caller treats as logits. Caches hold all members' layers, member by member.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from janelm.config import ModelConfig
from janelm.model import GPT, KVCache


class _MemberLayers:
    """One member's layers of an ensemble's cache (a KVCache, or a compiled step's tensors): the
    same memory, the same slots and positions."""

    def __init__(self, cache, start: int, stop: int):
        self.keys, self.values = cache.keys[start:stop], cache.values[start:stop]
        self.slots = cache.slots
        self.length = getattr(cache, "length", 0)  # a compiled step's tensors count no positions


class Ensemble(nn.Module):
    """`config.members` GPTs of the shape `config` describes; the interface of a GPT."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        one = replace(config, members=1)
        self.members = nn.ModuleList(GPT(one) for _ in range(config.members))  # each its own initial weights

    @property
    def tok_embed(self) -> nn.Embedding:
        """The first member's table: where callers read the model's device and format."""
        return self.members[0].tok_embed

    def num_params(self, embeddings: bool = True) -> int:
        return sum(m.num_params(embeddings) for m in self.members)

    def flops_per_token(self) -> float:
        return sum(m.flops_per_token() for m in self.members)

    def _layers(self, cache, member: int) -> _MemberLayers:
        n = self.config.n_block
        return _MemberLayers(cache, member * n, (member + 1) * n)

    @staticmethod
    def _mixture(logits: list[torch.Tensor]) -> torch.Tensor:
        """log of the members' mean probability: logits whose softmax is the ensemble's prediction."""
        log_probs = torch.stack([x.float().log_softmax(-1) for x in logits])
        return torch.logsumexp(log_probs, 0) - math.log(len(logits))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None,
                last_only: bool = False, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """As GPT.forward. Training with targets, member i reads the i-th share of the rows and the
        logits are None: only the loss is wanted, and the rows' predictions come from different members."""
        if self.training and targets is not None and cache is None:
            rows = idx.size(0) // len(self.members)
            if rows * len(self.members) != idx.size(0):
                raise ValueError(f"a batch of {idx.size(0)} rows does not split among {len(self.members)} members")
            outs = [m(idx[i * rows : (i + 1) * rows], targets[i * rows : (i + 1) * rows])
                    for i, m in enumerate(self.members)]
            return None, torch.stack([loss for _, loss in outs]).mean()
        outs = []
        for i, member in enumerate(self.members):
            layers = self._layers(cache, i) if cache is not None else None
            outs.append(member(idx, cache=layers, last_only=last_only, lengths=lengths)[0])
        if cache is not None:
            cache.length += idx.size(1)
        logits = self._mixture(outs)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def decode_step(self, idx: torch.Tensor, position: torch.Tensor, cache, fused: bool = False) -> torch.Tensor:
        """As GPT.decode_step: every member's step, mixed."""
        return self._mixture([m.decode_step(idx, position, self._layers(cache, i), fused)
                              for i, m in enumerate(self.members)])

    def new_cache(self, batch_size: int) -> KVCache:
        """One cache with every member's layers, member by member."""
        cache = self.members[0].new_cache(batch_size)
        for member in self.members[1:]:
            more = member.new_cache(batch_size)
            cache.keys += more.keys
            cache.values += more.values
        return cache


def make_model(config: ModelConfig) -> nn.Module:
    """The model `config` describes: one GPT, or an ensemble of `config.members`."""
    return Ensemble(config) if config.members > 1 else GPT(config)
