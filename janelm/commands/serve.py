"""`janelm serve`: the model behind an OpenAI-compatible HTTP API, with a page to talk to it
(janelm.serving). Needs `pip install -e '.[serve]'`."""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path

from janelm.errors import InputError


def check_flags(args: argparse.Namespace) -> None:
    from janelm.serving.run import is_loopback

    if args.threads < 0:
        raise InputError(f"--threads must be 0 (PyTorch's choice) or more, got {args.threads}")
    for name in ("max_rows", "max_tokens", "max_reply"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.max_queue < 0:
        raise InputError(f"--max-queue must be 0 or more, got {args.max_queue}")
    if not 0 <= args.stream_interval <= 1:
        raise InputError(f"--stream-interval must be 0 to 1 seconds, got {args.stream_interval}")
    if args.max_body_bytes < 1024:
        raise InputError(f"--max-body-bytes must be at least 1024, got {args.max_body_bytes}")
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port must be in 0..65535 (0: a free port), got {args.port}")
    if not is_loopback(args.host) and not args.api_key:
        raise InputError(f"--host {args.host} is reachable from other machines: give --api-key KEY (or set "
                         f"JANELM_API_KEY) so only those with the key use the model, or serve on 127.0.0.1")


def model_name(checkpoint: Path) -> str:
    """The run folder's name for its best.pt or last.pt, else the file's own name."""
    return checkpoint.parent.name if checkpoint.name in ("best.pt", "last.pt") else checkpoint.stem


def run(args: argparse.Namespace) -> int:
    from janelm.commands.sample import sampling_options

    opts = sampling_options(args)
    args.api_key = args.api_key or os.environ.get("JANELM_API_KEY") or None
    check_flags(args)
    from janelm.checkpoint import check_checkpoint_file, resolve_checkpoint

    checkpoint = check_checkpoint_file(resolve_checkpoint(args.checkpoint))
    if not all(importlib.util.find_spec(name) for name in ("fastapi", "uvicorn")):  # found, not imported yet
        raise InputError("janelm serve needs its web stack: pip install -e '.[serve]'")
    from janelm.serving.run import listen, serve

    sock = listen(args.host, args.port)  # a port in use fails before the model loads
    from janelm.serving.decoder import DecoderProcess

    load = {"checkpoint": str(checkpoint), "device": args.device, "dtype": args.dtype, "quantize": args.quantize}
    decoder = DecoderProcess(load, args.max_rows, args.max_queue, args.compile, args.threads,
                             args.stream_interval)  # loading the model; run by serve()
    from janelm.serving.app import Guard, Settings, create_app  # meanwhile

    decoder.wait_ready()
    settings = Settings(args.model_name or model_name(checkpoint), opts, args.user, args.bot, args.max_reply,
                        args.api_key, args.max_body_bytes, args.max_tokens, int(checkpoint.stat().st_mtime))
    return serve(Guard(create_app(decoder, decoder.tokenizer, settings), settings), decoder, sock)
