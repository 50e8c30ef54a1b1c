"""Text generation: the sampling loop, logit filters, stop strings and UTF-8-safe streaming.

The loop keeps a key/value cache, so the prompt is processed once (prefill) and each new token
costs one position. The model sees a window of at most `context` tokens: when the window is full
it slides, keeping the last half and re-processing it in one pass, so generation of any length
runs at a steady speed. With `use_cache=False` the same window is recomputed in full at every step
(what a cache-less loop costs); both give the same tokens.
"""

from __future__ import annotations

import codecs
from typing import Iterator, Sequence

import torch

from janelm.config import SamplingOptions
from janelm.decode_step import decode_step_for


def filter_logits(logits: torch.Tensor, opts: SamplingOptions, history: torch.Tensor | None = None) -> torch.Tensor:
    """Apply repetition penalty, temperature, top-k and top-p to logits (B, V); returns new logits
    with excluded tokens at -inf."""
    logits = logits.float()
    if opts.repetition_penalty != 1.0 and history is not None and history.numel():
        # CTRL's penalty: make every token already in the window less likely, whatever its sign.
        seen = logits.gather(1, history)
        seen = torch.where(seen > 0, seen / opts.repetition_penalty, seen * opts.repetition_penalty)
        logits = logits.scatter(1, history, seen)
    if opts.temperature > 0:
        logits = logits / opts.temperature
    if opts.top_k and opts.top_k < logits.size(-1):
        # Keep every token tied with the k-th best: which of equals survives never depends on order.
        kth = torch.topk(logits, opts.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if opts.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, stable=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the tokens before it already reach top_p; the first always stays.
        drop = probs.cumsum(-1) - probs >= opts.top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits


def pick_next(logits: torch.Tensor, opts: SamplingOptions, rng: torch.Generator | None,
              history: torch.Tensor | None = None) -> torch.Tensor:
    """The next token for each row of logits (B, V) → (B,)."""
    logits = filter_logits(logits, opts, history)
    if opts.temperature == 0:
        return logits.argmax(-1)
    return draw(logits.softmax(-1), rng)


def draw(probs: torch.Tensor, rng: torch.Generator | None) -> torch.Tensor:
    """One token per row of probs (B, V) → (B,), drawn with `rng`."""
    if rng is not None and rng.device.type != probs.device.type:  # a CPU generator: the same draws on any device
        return torch.multinomial(probs.cpu(), 1, generator=rng).squeeze(1).to(probs.device)
    # On the model's device: no copy to the host, so a GPU runs ahead to the next step.
    return torch.multinomial(probs, 1, generator=rng).squeeze(1)


def prefill(model, window: torch.Tensor, cache, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Logits (B, V) after the window (B, T), processed in one pass from the start of `cache`
    (None: no cache); with `lengths` (B,), after each row's first lengths[b] tokens (the rest pad)."""
    if cache is None:
        return model(window, last_only=True, lengths=lengths)[0][:, -1]
    cache.reset()
    return model(window, cache=cache, last_only=True, lengths=lengths)[0][:, -1]


def slid(window: torch.Tensor | list[int], context: int) -> torch.Tensor | list[int] | None:
    """The window (1, T), or a list of its ids, to process again once it has outgrown the context:
    its last half (so sliding costs one pass every context / 2 tokens); None while it fits."""
    if isinstance(window, list):
        return window[-(context // 2) :] if len(window) > context else None
    return window[:, -(context // 2) :] if window.size(1) > context else None


@torch.inference_mode()  # cheaper than no_grad: no autograd bookkeeping at all
def generate_tokens(model, prompt: Sequence[int], max_new: int, opts: SamplingOptions, *,
                    rng: torch.Generator | None = None, batch_size: int = 1,
                    use_cache: bool = True, compile: bool | None = None, cuda_graphs: bool = True) -> Iterator[torch.Tensor]:
    """Yield the next token of every sample, (batch_size,) per step, `max_new` times.

    `prompt` must hold at least one token; only its last `context` tokens are seen. `compile` and
    `cuda_graphs` choose how each cached single-token step runs (`janelm.decode_step.decode_step_for`:
    by default a compiled step cached on disk where there is one).
    """
    if not prompt:
        raise ValueError("generation needs at least one prompt token")
    context = model.config.context
    device = model.tok_embed.weight.device
    window = torch.tensor(list(prompt)[-context:], device=device).repeat(batch_size, 1)
    cache = model.new_cache(batch_size) if use_cache else None
    position = torch.zeros(batch_size, dtype=torch.long, device=device)  # where each row's next token goes
    step = decode_step_for(model, cache, position, batch_size, compile, cuda_graphs, max_new) if use_cache else None

    def full_pass() -> torch.Tensor:
        logits = prefill(model, window, cache)
        if cache is not None:
            position.fill_(cache.length)
        return logits

    logits = full_pass()
    for i in range(max_new):
        token = pick_next(logits, opts, rng, window)
        yield token
        if i == max_new - 1:
            break
        window = torch.cat([window, token[:, None]], dim=1)
        if (shorter := slid(window, context)) is not None:
            window = shorter
            logits = full_pass()
        elif cache is not None:
            logits = step(token[:, None], position, cache)
            cache.length += 1
            position += 1
        else:
            logits = full_pass()


class StreamDecoder:
    """Token ids → text, holding back the bytes of a character split across tokens."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, ids: Sequence[int]) -> str:
        return self.decoder.decode(self.tokenizer.token_bytes(ids))

    def flush(self) -> str:
        return self.decoder.decode(b"", final=True)


class StopFilter:
    """Passes text through until a stop string appears; holds back any tail that could be the start
    of one, so a stop string is never printed, even in part."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            out, self.pending = self.pending[: min(hits)], ""
            return out
        keep = max((k for s in self.stops for k in range(1, len(s)) if self.pending.endswith(s[:k])), default=0)
        out = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(out) :]
        return out

    def flush(self) -> str:
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out


def crop_prompt(ids: list[int], context: int) -> tuple[list[int], int]:
    """The last `context` tokens of a prompt and how many were cut from its start."""
    cut = max(0, len(ids) - context)
    return ids[cut:], cut
