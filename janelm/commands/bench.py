"""`janelm bench sample|train`: throughput of generation or training, measured in one run."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

from janelm.config import SAMPLE_DEFAULTS
from janelm.errors import InputError


def run(args: argparse.Namespace) -> int:
    from janelm.commands.train import configs_from_args

    if args.what == "serve":
        result = bench_serve(args)
        print(json.dumps(result)) if args.json else show(result, args.what)
        return 0
    model_cfg, train_cfg = configs_from_args(args, training=args.what == "train")
    if args.num_samples < 1:
        raise InputError(f"--num-samples must be at least 1, got {args.num_samples}")
    if args.quantize and args.what != "sample":
        raise InputError("--quantize applies to bench sample only: drop it for bench train")
    if args.what == "sample":
        result = bench_sample(args, model_cfg, train_cfg)
    else:
        from janelm.console import note
        from janelm.device import emulated_bf16_warning, pick_device, pick_dtype
        from janelm.speed import measure_training

        device = pick_device(train_cfg.device)
        if warning := emulated_bf16_warning(pick_dtype(train_cfg.dtype, device), device):
            note(warning)  # before the bf16 peak probe, which alone takes minutes there
        result = measure_training(model_cfg, train_cfg, steps=args.steps or 20, vocab_size=args.vocab_size)
    if args.json:
        print(json.dumps(result))
    else:
        show(result, args.what)
    return 0


def bench_sample(args: argparse.Namespace, model_cfg, train_cfg) -> dict:
    import torch

    from janelm.checkpoint import load_model
    from janelm.device import pick_device, pick_weight_dtype
    from janelm.ensemble import make_model
    from janelm.speed import measure_sampling

    device = pick_device(train_cfg.device)
    if args.checkpoint:
        model, _, _ = load_model(args.checkpoint, device)  # float32: measure_sampling sets the weights
    else:
        torch.manual_seed(0)
        model = make_model(replace(model_cfg, vocab_size=args.vocab_size)).to(device).eval()  # --members: an ensemble
    params = model.num_params()  # before the matrices become buffers
    result = measure_sampling(model, pick_weight_dtype(train_cfg.dtype, device), new_tokens=args.steps or 255,
                              compile=args.compile, quantize=args.quantize, samples=args.num_samples)
    c = model.config
    return {"device": device.type, "n_block": c.n_block, "n_embed": c.n_embed, "n_head": c.n_head,
            "context": c.context, "vocab_size": c.vocab_size, "members": c.members, "params": params, **result}


def bench_serve(args: argparse.Namespace) -> dict:
    """N concurrent streams against a real `janelm serve`, one stream alone, and `bench sample`'s
    decode of the same model in this process, in one run (janelm.serving.load.measure_serving).
    The model is a trained one: -c, else what `janelm train` wrote (checkpoints/), as `serve` takes."""
    if args.clients < 1 or args.tokens < 1:
        raise InputError("--clients and --tokens must be at least 1")
    from janelm.checkpoint import check_checkpoint_file, resolve_checkpoint
    from janelm.serving.load import measure_serving

    flags = [*([] if args.dtype in (None, "auto") else ["--dtype", args.dtype]),
             *(["--threads", str(args.server_threads)] if args.server_threads else []),
             "--no-compile" if args.compile is False else "--compile"]  # as bench sample: compiled unless --no-compile
    return measure_serving(check_checkpoint_file(resolve_checkpoint(args.checkpoint)), args.clients, args.tokens,
                           args.dtype or "auto", flags)


def show(result: dict, what: str) -> None:
    from rich.table import Table

    from janelm.console import stderr

    table = Table(title=f"janelm bench {what}", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    if what == "serve":
        table.add_row("one stream", f"{result['one_stream_tokens_per_s']:,.1f} tokens/s "
                      f"({result['one_stream_vs_sample_decode']:.2f} of bench sample's decode beside it, median of "
                      f"{len(result['rounds'])} rounds; decode up to {result['sample_decode_tokens_per_s']:,.1f})")
        table.add_row(f"{result['clients']} streams at once", f"{result['aggregate_tokens_per_s']:,.1f} tokens/s "
                      f"({result['aggregate_vs_one_stream']:.2f}× the one stream of their round, median)")
        table.add_row("time to first token, p50 / p95", f"{result['ttft_p50_s']:.3f} / {result['ttft_p95_s']:.3f} s "
                      f"(every round's {result['clients']} streams)")
    elif what == "sample":
        table.add_row("model", f"{result['n_block']} blocks × {result['n_embed']}, {result['n_head']} heads, "
                      f"context {result['context']}, vocab {result['vocab_size']} ({result['params'] / 1e6:.1f}M)")
        table.add_row("device, weight matrices", f"{result['device']}, {result['dtype']}{', compiled' if result['compiled'] else ''}"
                      f" ({result['why']})")
        if "compile_s" in result:
            table.add_row("compiled step ready in (compiled, or loaded from the cache)", f"{result['compile_s']:.2f} s")
        table.add_row("prefill", f"{result['prefill_tokens_per_s']:,.0f} tokens/s")
        table.add_row(f"decode, KV cache ({result['new_tokens']} tokens)", f"{result['decode_tokens_per_s']:,.1f} tokens/s")
        d = SAMPLE_DEFAULTS
        table.add_row(f"decode, drawn as sample draws by default (temperature {d.temperature}, top-p {d.top_p})",
                      f"{result['drawn_decode_tokens_per_s']:,.1f} tokens/s ({result['drawn_vs_greedy']:.2f} of greedy, "
                      f"median of the rounds)")
        if "eager_decode_tokens_per_s" in result:
            what = "no CUDA graph" if result["device"] == "cuda" else "uncompiled (--no-compile)"
            table.add_row(f"decode, KV cache, {what}", f"{result['eager_decode_tokens_per_s']:,.1f} tokens/s")
        table.add_row("decode, recompute each step", f"{result['recompute_tokens_per_s']:,.1f} tokens/s")
        table.add_row("speedup (cache ÷ recompute)", f"{result['speedup']:.2f}×")
        table.add_row(f"decode {result['long_tokens']} tokens (3× context)", f"{result['long_decode_tokens_per_s']:,.1f} tokens/s")
        table.add_row("past-context ÷ in-context speed", f"{result['long_vs_in_context']:.2f}")
        floors = ", ".join(f"{k} {v:,.0f}" for k, v in result["matmul_floors_tokens_per_s"].items())
        table.add_row("matmul floor (tokens/s, weights)", floors)
        table.add_row(f"decode ÷ {result['paired_format']} floor (median of {len(result['paired_rounds'])} rounds, "
                      "each timing both)", f"{result['floor_fraction']:.2f}" + (
            f" (uncompiled {result['eager_floor_fraction']:.2f})" if "eager_floor_fraction" in result else ""))
        if "samples" in result:
            table.add_row(f"decode, {result['samples']} samples as one batch",
                          f"{result['batched_decode_tokens_per_s']:,.1f} tokens/s (all samples)")
    else:
        peaks = ", ".join(f"{k} {v / 1e9:,.1f}" for k, v in result["peak_flops_by_dtype"].items())
        table.add_row("device, dtype", f"{result['device']}, {result['dtype']}")
        table.add_row("measured matmul peak (GFLOP/s)", peaks)
        table.add_row("parameters", f"{result['params'] / 1e6:.2f}M")
        table.add_row("step", f"{result['step_ms']:.0f} ms ({result['tokens_per_step']:,} tokens)")
        table.add_row("tokens/s", f"{result['tokens_per_s']:,.0f}")
        table.add_row("achieved", f"{result['achieved_flops'] / 1e9:,.1f} GFLOP/s")
        table.add_row("MFU", f"{result['mfu']:.1%} of the {result['dtype']} peak")
        table.add_row(result["memory_kind"], f"{result['peak_memory_bytes'] / 2**20:,.0f} MiB")
    stderr().print(table)
