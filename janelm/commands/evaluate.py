"""`janelm eval`: held-out loss, perplexity, bits per character and per byte."""

from __future__ import annotations

import argparse
import json

from janelm.errors import InputError


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
    from janelm.checkpoint import check_checkpoint_file, load_model, resolve_checkpoint
    from janelm.cleaning import clean_gutenberg
    from janelm.corpus import read_text

    # The texts and the checkpoint file first: a mistyped, empty or foreign file fails at once,
    # before torch is imported and the model loaded.
    sources = [(f, read_text(f)) for f in args.files]  # a file, or austen:NAME for a bundled work
    if args.clean:
        sources = [(name, clean_gutenberg(text)) for name, text in sources]
    check_checkpoint_file(resolve_checkpoint(args.checkpoint))

    from janelm.device import pick_device, pick_weight_dtype
    from janelm.scoring import Score, encode_lines, score_ids

    device = pick_device(args.device)
    model, tokenizer, ckpt = load_model(args.checkpoint, device, pick_weight_dtype(args.dtype, device), args.quantize)
    if not args.files:
        sources = [("validation split", validation_text(args, ckpt, tokenizer))]

    nats = tokens = chars = nbytes = 0
    for name, text in sources:
        try:
            ids, first = encode_lines(tokenizer, text.splitlines(keepends=True))
        except InputError as e:  # e.g. characters a char tokenizer never saw: say which file has them
            raise InputError(f"{name}: {e}") from None
        if len(ids) < 2:
            raise InputError(f"{name}: too short to score (needs at least two tokens)")
        n, t = score_ids(model, ids, batch_size=args.batch_size)
        nats, tokens = nats + n, tokens + t
        # The first token has no history and is not scored: neither are its characters.
        chars += len(text) - len(first)
        nbytes += len(text.encode("utf-8")) - len(first.encode("utf-8"))
    result = Score(nats, tokens, chars, nbytes).as_dict()
    if args.json:
        print(json.dumps(result))
    else:
        show_table(result, [name for name, _ in sources], args.checkpoint)
    return 0


def validation_text(args: argparse.Namespace, ckpt: dict, tokenizer) -> str:
    """The val split of --data, or of the corpus the model was trained on."""
    from janelm.data import load_corpus, tokenizer_fingerprint

    folder = args.data or ckpt.get("data", {}).get("path") or "corpus"
    corpus = load_corpus(folder)
    if tokenizer_fingerprint(corpus.tokenizer) != tokenizer_fingerprint(tokenizer):
        raise InputError(f"{folder}/ was prepared with another tokenizer than the model's: pass --data FOLDER or text files")
    if len(corpus.val) < 2:
        raise InputError(f"{folder}/ has no validation split: pass text files to score")
    return tokenizer.decode(corpus.val.tolist())


def show_table(result: dict, names: list[str], checkpoint: str) -> None:
    from rich.table import Table

    from janelm.console import stderr

    table = Table(title=f"{checkpoint} on {', '.join(names)}", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("loss", f"{result['loss']:.4f} nats/token")
    table.add_row("perplexity", f"{result['perplexity']:.2f}")
    table.add_row("bits per character", f"{result['bits_per_char']:.4f}")
    table.add_row("bits per byte", f"{result['bits_per_byte']:.4f}")
    table.add_row("tokens", f"{result['tokens']:,}")
    table.add_row("characters", f"{result['chars']:,}")
    stderr().print(table)
