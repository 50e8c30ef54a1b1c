"""JaneLM's training step against nanoGPT's, alternating in one process.

The reference shape (`--preset bench`: 6 blocks × 384, 6 heads, context 256, batch 8, vocabulary
100): JaneLM's real step (`janelm bench train`'s: janelm.trainer.Trainer.train_step on random
tokens) and nanoGPT's model with its own optimizer (`configure_optimizers`), the same autocast
precision, gradient clipping at 1.0 and the same batch. nanoGPT is not part of JaneLM: give a
checkout of https://github.com/karpathy/nanoGPT (its model.py is imported from there).

    python3 benchmarks/nanogpt.py --nanogpt ~/nanoGPT                     # float32, and bf16 where native
    python3 benchmarks/nanogpt.py --nanogpt ~/nanoGPT --dtype bfloat16 --rounds 7
    python3 benchmarks/nanogpt.py --nanogpt ~/nanoGPT --compile   # both compiled (nanoGPT's train.py default)
    python3 benchmarks/nanogpt.py --nanogpt ~/nanoGPT --device cuda [--compile]   # on a GPU: bf16 and float32

Rounds alternate the two steps, so a machine that slows down mid-run slows both; the medians of
the rounds are compared, and the median of each round's own ratio is given beside it. Compiled
code goes to a cache folder of this instruction set (janelm.device.use_compiler_cache). Results
are appended to benchmarks/results/nanogpt.jsonl.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results" / "nanogpt.jsonl"


def nanogpt_step(path: Path, dtype, steps: int, compile: bool = False, device: str = "cpu"):
    """nanoGPT's model and optimizer at the reference shape, and one training step of it."""
    import torch

    from janelm.presets import preset_configs
    from janelm.device import autocast

    spec = importlib.util.spec_from_file_location("nanogpt_model", path / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model_cfg, train_cfg = preset_configs("bench")
    config = module.GPTConfig(block_size=model_cfg.context, vocab_size=100, n_layer=model_cfg.n_block,
                              n_head=model_cfg.n_head, n_embd=model_cfg.n_embed, dropout=0.0, bias=False)
    model = module.GPT(config).to(device).train()
    # nanoGPT's own choice of AdamW: fused on CUDA, as its train.py runs it there.
    optimizer = model.configure_optimizers(train_cfg.weight_decay, train_cfg.lr, (train_cfg.beta1, train_cfg.beta2),
                                           torch.device(device).type)
    if compile:
        model = torch.compile(model)
    g = torch.Generator().manual_seed(0)
    shape = (train_cfg.batch_size, model_cfg.context)
    x, y = (torch.randint(0, 100, shape, generator=g).to(device) for _ in range(2))

    def step() -> None:
        with autocast(torch.device(device), dtype):
            _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def compare(nanogpt: Path, dtype_name: str, rounds: int, steps: int, compile: bool = False, device: str = "cpu") -> dict:
    import contextlib
    import io

    import torch

    from janelm.presets import preset_configs
    from janelm.speed import random_token_trainer, time_steps

    from janelm.device import synchronize, use_compiler_cache

    use_compiler_cache()  # both models' compiled code, apart from another instruction set's
    dtype = getattr(torch, dtype_name)
    model_cfg, train_cfg = preset_configs("bench")
    train_cfg = replace(train_cfg, dtype=dtype_name, device=device, max_iters=10**6, max_time=0.0, eval_batches=1,
                        compile=compile)
    with contextlib.redirect_stdout(io.StringIO()):  # nanoGPT prints its parameter counts
        theirs = nanogpt_step(nanogpt, dtype, steps, compile, device)
    tokens = train_cfg.batch_size * model_cfg.context
    ours_rates, theirs_rates = [], []
    with random_token_trainer(model_cfg, train_cfg, 100) as trainer:
        time_steps(trainer, steps=1, warmup=2)
        for _ in range(3 if compile else 2):  # the first compiled calls compile
            theirs()
        for _ in range(rounds):
            n, seconds = time_steps(trainer, steps=steps, warmup=0)
            ours_rates.append(n * tokens / seconds)
            synchronize(torch.device(device))
            start = time.perf_counter()
            for _ in range(steps):
                theirs()
            synchronize(torch.device(device))
            theirs_rates.append(steps * tokens / (time.perf_counter() - start))
    ours, other = statistics.median(ours_rates), statistics.median(theirs_rates)
    # Each round's ratio pairs two timings seconds apart: a machine that slows mid-run moves both.
    paired = statistics.median(a / b for a, b in zip(ours_rates, theirs_rates))
    return {"dtype": dtype_name, "rounds": rounds, "steps_per_round": steps, "janelm_tokens_per_s": ours,
            "nanogpt_tokens_per_s": other, "ratio": ours / other, "paired_ratio": paired, "janelm_rounds": ours_rates,
            "nanogpt_rounds": theirs_rates, "compile": compile,
            "isa": torch.backends.cpu.get_cpu_capability(), "device": device,
            "gpu": torch.cuda.get_device_name() if device == "cuda" else None, "torch": torch.__version__}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nanogpt", type=Path, required=True, help="a checkout of karpathy/nanoGPT")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "both"), default="both")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=4, help="steps per round and model")
    p.add_argument("--compile", action="store_true", help="torch.compile both models (default: eager)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    a = p.parse_args()
    from study import machine

    from janelm.device import cpu_has_native_bf16

    dtypes = ["float32", "bfloat16"] if a.dtype == "both" else [a.dtype]
    if a.dtype == "both" and a.device == "cpu" and not cpu_has_native_bf16():
        dtypes = ["float32"]  # emulated bf16 is not a precision anyone trains in
    for name in dtypes:
        row = {**compare(a.nanogpt, name, a.rounds, a.steps, a.compile, a.device), "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M")}
        print(f"{name}: JaneLM {row['janelm_tokens_per_s']:,.0f} tokens/s, nanoGPT {row['nanogpt_tokens_per_s']:,.0f}: "
              f"{row['ratio']:.3f}x (medians of {a.rounds} alternating rounds{', compiled' if a.compile else ''}; the rounds' own "
              f"ratios' median {row['paired_ratio']:.3f}x; {row['gpu'] or 'ISA ' + row['isa']})", flush=True)
        with RESULTS.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
