"""`janelm sample`: stream generated text to stdout, and nothing else."""

from __future__ import annotations

import argparse
import sys
import time

from janelm.errors import InputError


def sampling_options(args: argparse.Namespace):
    from janelm.config import SamplingOptions

    opts = SamplingOptions(args.temperature, args.top_k, args.top_p, args.repetition_penalty)
    opts.validate()
    return opts


def read_prompt(args: argparse.Namespace) -> str:
    """--prompt, else --prompt-file (- is stdin), else piped stdin, else a newline (a fresh paragraph)."""
    if args.prompt is not None and args.prompt_file:
        raise InputError("give --prompt or --prompt-file, not both")
    if args.prompt is not None:
        return args.prompt
    if args.prompt_file:
        if args.prompt_file == "-":
            return sys.stdin.read()
        try:
            with open(args.prompt_file, encoding="utf-8") as f:
                return f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read --prompt-file {args.prompt_file} ({getattr(e, 'strerror', None) or e}): check the path and that it is UTF-8 text") from None
    if sys.stdin is not None and not sys.stdin.isatty():
        text = sys.stdin.read()
        if text:
            return text.rstrip("\n") if text.count("\n") == 1 else text
    return "\n"  # no prompt: start a fresh paragraph


def run(args: argparse.Namespace) -> int:
    opts = sampling_options(args)
    if args.num_tokens < 0:
        raise InputError(f"-n must be 0 or more, got {args.num_tokens}")
    if args.num_samples < 1:
        raise InputError(f"--num-samples must be at least 1, got {args.num_samples}")
    if args.max_time < 0:
        raise InputError(f"--max-time must not be negative, got {args.max_time}")
    prompt = read_prompt(args)
    echo = args.echo and prompt != "\n"  # the default prompt (a paragraph break) is not shown
    from janelm.checkpoint import check_checkpoint_file, resolve_checkpoint

    check_checkpoint_file(resolve_checkpoint(args.checkpoint))  # a bad -c fails before torch loads

    import torch

    from janelm.checkpoint import load_model
    from janelm.console import note
    from janelm.device import pick_device, pick_weight_dtype
    from janelm.generate import StopFilter, StreamDecoder, crop_prompt, generate_tokens

    device = pick_device(args.device)
    model, tokenizer, _ = load_model(args.checkpoint, device, pick_weight_dtype(args.dtype, device), args.quantize)
    try:
        ids, cut = crop_prompt(tokenizer.encode(prompt), model.config.context)
    except InputError as e:
        raise InputError(f"the prompt: {e}") from None
    if cut:
        note(f"note: the prompt is {cut + len(ids)} tokens, longer than the model's context of "
             f"{model.config.context}: only its last {len(ids)} tokens are used")
    if not ids:
        ids = tokenizer.encode("\n")
    # On the model's device: a GPU then samples without a copy to the host each token.
    rng = torch.Generator(device).manual_seed(args.seed if args.seed is not None else torch.seed())

    out = sys.stdout
    decoders = [StreamDecoder(tokenizer) for _ in range(args.num_samples)]
    stops = [StopFilter(args.stop) for _ in range(args.num_samples)]
    texts = [""] * args.num_samples
    stream = args.num_samples == 1  # a batch is printed sample by sample once finished
    if echo and stream:
        out.write(prompt)
        out.flush()
    deadline = time.monotonic() + args.max_time if args.max_time else None
    for token in generate_tokens(model, ids, args.num_tokens, opts, rng=rng, batch_size=args.num_samples,
                                 compile=args.compile):
        for i, t in enumerate(token.tolist()):
            texts[i] += stops[i].feed(decoders[i].feed([t]))
        if stream and texts[0]:
            out.write(texts[0])
            out.flush()
            texts[0] = ""
        if all(s.stopped for s in stops) or (deadline and time.monotonic() > deadline):
            break
    for i in range(args.num_samples):
        texts[i] += stops[i].feed(decoders[i].flush()) + stops[i].flush()
    if stream:
        out.write(texts[0] + "\n")  # a final newline, so the shell prompt starts on its own line
    else:
        head = prompt if echo else ""
        out.write(args.separator.join(head + t for t in texts) + "\n")
    out.flush()
    return 0
