"""`janelm chat`: the user speaks as one character, the model answers as another, in Austen's form:

    “Good morning,” said Elizabeth.

    Mr. Darcy replied, “…”

The model only ever continues a novel; framing each turn as dialogue is what makes it answer
(assistant-like behaviour without fine-tuning). A reply ends at its closing quote.
"""

from __future__ import annotations

import argparse
import sys

from janelm.errors import InputError

QUOTES = {"curly": ("“", "”"), "straight": ('"', '"')}


def said(line: str, speaker: str, quotes: tuple[str, str]) -> str:
    """Frame a user's line as dialogue: a final full stop becomes the comma before `said`."""
    line = line.strip().strip("“”\"")
    if line.endswith("."):
        line = line[:-1] + ","
    elif not line.endswith(("?", "!", ",", "—")):
        line += ","
    return f"{quotes[0]}{line}{quotes[1]} said {speaker}.\n\n"


def reply_opening(speaker: str, quotes: tuple[str, str]) -> str:
    return f"{speaker} replied, {quotes[0]}"


def pick_quotes(tokenizer) -> tuple[str, str]:
    """Curly quotes, as most of Austen's editions print them, unless the vocabulary lacks them."""
    try:
        tokenizer.encode("“”")
        return QUOTES["curly"]
    except InputError:
        return QUOTES["straight"]


def fit_history(turns: list[str], tokenizer, budget: int) -> str:
    """The most recent whole turns whose tokens fit in `budget`."""
    kept, used = [], 0
    for turn in reversed(turns):
        n = len(tokenizer.encode(turn))
        if kept and used + n > budget:
            break
        kept.append(turn)
        used += n
    return "".join(reversed(kept))


def run(args: argparse.Namespace) -> int:
    from janelm.commands.sample import sampling_options

    opts = sampling_options(args)
    if args.max_reply < 1:
        raise InputError(f"--max-reply must be at least 1, got {args.max_reply}")

    import torch

    from janelm.checkpoint import load_model
    from janelm.device import pick_device, pick_weight_dtype
    from janelm.generate import StopFilter, StreamDecoder, generate_tokens

    device = pick_device(args.device)
    model, tokenizer, _ = load_model(args.checkpoint, device, pick_weight_dtype(args.dtype, device), args.quantize)
    quotes = pick_quotes(tokenizer)
    # On the model's device: a GPU then samples without a copy to the host each token.
    rng = torch.Generator(device).manual_seed(args.seed if args.seed is not None else torch.seed())
    budget = max(1, model.config.context - args.max_reply)
    interactive = sys.stdin.isatty()
    turns: list[str] = []
    while True:
        if interactive:
            print(f"{args.user}: ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            break
        if not line.strip():
            continue
        turns.append(said(line, args.user, quotes))
        opening = reply_opening(args.bot, quotes)
        ids = tokenizer.encode(fit_history(turns, tokenizer, budget) + opening)
        decoder, stop = StreamDecoder(tokenizer), StopFilter([quotes[1], "\n"])
        if interactive:
            print(f"{args.bot}: ", end="", file=sys.stderr, flush=True)
        reply = ""
        for token in generate_tokens(model, ids[-model.config.context:], args.max_reply, opts, rng=rng,
                                     compile=args.compile):
            piece = stop.feed(decoder.feed(token.tolist()))
            if not reply:
                piece = piece.lstrip()  # the opening quote is already given
            reply += piece
            sys.stdout.write(piece)
            sys.stdout.flush()
            if stop.stopped:
                break
        piece = stop.feed(decoder.flush()) + stop.flush()
        reply += piece
        sys.stdout.write(piece + "\n")
        sys.stdout.flush()
        turns.append(f"{opening}{reply.strip()}{quotes[1]}\n\n")
    return 0
