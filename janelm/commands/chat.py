"""`janelm chat`: the user speaks as one character, the model answers as another, in Austen's
dialogue form (janelm.dialogue). A reply ends at its closing quote."""

from __future__ import annotations

import argparse
import sys

from janelm.errors import InputError


def run(args: argparse.Namespace) -> int:
    from janelm.commands.sample import sampling_options

    opts = sampling_options(args)
    if args.max_reply < 1:
        raise InputError(f"--max-reply must be at least 1, got {args.max_reply}")

    import torch

    from janelm.checkpoint import load_model
    from janelm.device import pick_device, pick_weight_dtype
    from janelm.dialogue import fit_history, pick_quotes, replied, reply_opening, reply_piece, reply_stops, said
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
        decoder, stop = StreamDecoder(tokenizer), StopFilter(reply_stops(quotes))
        if interactive:
            print(f"{args.bot}: ", end="", file=sys.stderr, flush=True)
        reply = ""
        for token in generate_tokens(model, ids[-model.config.context:], args.max_reply, opts, rng=rng,
                                     compile=args.compile):
            piece = reply_piece(reply, stop.feed(decoder.feed(token.tolist())))
            reply += piece
            sys.stdout.write(piece)
            sys.stdout.flush()
            if stop.stopped:
                break
        piece = stop.feed(decoder.flush()) + stop.flush()
        reply += piece
        sys.stdout.write(piece + "\n")
        sys.stdout.flush()
        turns.append(replied(reply, args.bot, quotes))
    return 0
