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


def pick_next(logits: torch.Tensor, opts: SamplingOptions, rng: torch.Generator | Sequence[torch.Generator] | None,
              history: torch.Tensor | None = None) -> torch.Tensor:
    """The next token for each row of logits (B, V) → (B,), drawn with `rng` (one generator for all
    rows, or one per row: a server's rows each draw what they would alone)."""
    logits = penalize(logits.float(), opts.repetition_penalty, history)
    if opts.temperature == 0:
        # The most likely token, which top-k and top-p always keep: filtering first would only cost
        # time (a sort of the vocabulary, ~15% of a token on 2 CPU cores). max's indices, the first
        # of ties as argmax's: argmax took 42 µs over a server's 16 rows of 2,048 logits, max 12.
        return logits.max(-1).indices
    return draw(logits, opts, uniforms(rng, logits.size(0), logits.device))


def penalize(logits: torch.Tensor, penalty: float, history: torch.Tensor | None) -> torch.Tensor:
    """CTRL's repetition penalty: every token already in the window (history, (B, T)) made less
    likely, whatever its logit's sign."""
    if penalty == 1.0 or history is None or not history.numel():
        return logits
    seen = logits.gather(1, history)
    return logits.scatter(1, history, torch.where(seen > 0, seen / penalty, seen * penalty))


def uniforms(rng: torch.Generator | Sequence[torch.Generator] | None, n: int, device: torch.device) -> torch.Tensor:
    """(n, 1) numbers uniform in [0, 1) from rng (None: PyTorch's default generator; a sequence:
    one number from each), on `device`. A CPU generator gives the same numbers whatever device the
    model is on."""
    if isinstance(rng, Sequence):
        return torch.cat([uniforms(one, 1, device) for one in rng])
    return torch.rand(n, 1, generator=rng, device=rng.device if rng is not None else device).to(device)


def draw(logits: torch.Tensor, opts: SamplingOptions, u: torch.Tensor) -> torch.Tensor:
    """One token per row of logits (B, V) at the options' temperature (> 0), among the candidates
    their top-k and top-p leave, by inverse transform: row b takes the first candidate at which the
    cumulative probability passes u[b] (B, 1) times the candidates' mass. One uniform number a
    token and a dozen small operations: after a decode step on 2 CPU cores, sample's default draw
    takes ~0.26 ms where filtering the logits for torch.multinomial took ~0.39 (docs/speed.md)."""
    # u < 1, so u × mass rounds below the mass: the first cumulative probability past it is a
    # candidate's, and never that of a token of probability 0 (right=True steps over those).
    if not opts.top_k and opts.top_p >= 1.0:  # every token a candidate, in vocabulary order: no sort
        cum = scaled(logits, logits.amax(-1, keepdim=True), opts.temperature).softmax(-1).cumsum_(-1)
        return torch.searchsorted(cum, u * cum[:, -1:], right=True).squeeze(1)
    ids, cum, last = candidates(logits, opts)
    return ids.gather(1, torch.searchsorted(cum, u * cum.gather(1, last), right=True)).squeeze(1)


def candidates(logits: torch.Tensor, opts: SamplingOptions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k and top-p over logits (B, V) at the options' temperature: token ids, most likely first
    (B, C), the cumulative probabilities along them (B, C; relative to those C), and the place of
    the last candidate (B, 1). Top-k keeps the k most likely and every token tied with the k-th
    (which of equals survives never depends on order); top-p the fewest of those whose probability,
    within top-k's, reaches top_p (the first always stays)."""
    vocab = logits.size(-1)
    k = opts.top_k if 0 < opts.top_k < vocab else 0
    # Sorted: topk is ~2x faster than torch.sort here, and top-k needs only its k and the next (a
    # tie running past the k-th, which is rare, takes them all). Probabilities relative to those
    # sorted are all either filter needs.
    values, ids = torch.topk(logits, k + 1 if k else vocab)
    if k and bool((values[:, k] == values[:, k - 1]).any()):
        values, ids = torch.topk(logits, vocab)
    cum = scaled(values, values[:, :1], opts.temperature).softmax(-1).cumsum_(-1)
    last = torch.full_like(ids[:, :1], values.size(-1) - 1)
    if k:
        last = (values >= values[:, k - 1 : k]).sum(-1, keepdim=True) - 1
    if opts.top_p < 1.0:  # the first place where the probability so far reaches top_p of the mass left
        last = torch.searchsorted(cum, opts.top_p * cum.gather(1, last))
    return ids, cum, last


def scaled(logits: torch.Tensor, most: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logits over the temperature, less their largest (`most`, (B, 1)) first: at a temperature as
    small as 1e-45 the division would overflow to inf, and the softmax of infinities is not a
    distribution; this way the most likely stay at 0 and the rest go to -inf (probability 0)."""
    return (logits - most) / temperature


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
