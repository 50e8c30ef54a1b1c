"""Speed measurements behind `janelm bench`: each figure is timed in this process after a warm-up,
so ratios between them are fair. Nothing here asserts speed; tests only check the shapes of results."""

from __future__ import annotations

import resource
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from statistics import median
from typing import Any

import torch

from janelm.config import SAMPLE_DEFAULTS, ModelConfig, SamplingOptions, TrainConfig
from janelm.device import peak_matmul_flops, pick_device, pick_dtype, synchronize, use_compiler_cache
from janelm.decode_step import INFERENCE_COMPILE_OPTIONS, cpu_compiled_step
from janelm.generate import generate_tokens

GREEDY = SamplingOptions(temperature=0)
PAIRED_ROUNDS = 5  # decode against the floor: the median of this many rounds
PAIRED_FLOOR_S = 0.3  # each round's floor: about as long as its decode of 255 tokens


def timed_generation(model, prompt: list[int], n: int, use_cache: bool, compile: bool | None = False,
                     batch_size: int = 1, cuda_graphs: bool = True, opts: SamplingOptions = GREEDY) -> float:
    """Tokens per second (all samples together) of generating `n` tokens for each of `batch_size`
    samples (greedy by default; drawn with a fixed seed otherwise: every run does the same work)."""
    rng = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in generate_tokens(model, prompt, n, opts, rng=rng, use_cache=use_cache, compile=compile, batch_size=batch_size,
                             cuda_graphs=cuda_graphs):
        pass
    synchronize(model.tok_embed.weight.device)
    return n * batch_size / (time.perf_counter() - start)


def paired_rounds(model, prompt: list[int], n: int, paths: dict[str, dict[str, Any]], shapes: list[tuple[int, int]],
                  weights: str, device: torch.device, rounds: int) -> list[dict[str, Any]]:
    """`rounds` (at least one) times: the matmul floor of `weights`, then each path's decode of `n`
    tokens right after it (tokens/s; a path: timed_generation's keywords by name)."""
    from janelm.precision import matmul_floor

    return [{"floor": matmul_floor(shapes, weights, device, PAIRED_FLOOR_S),
             **{name: timed_generation(model, prompt, n, True, **path) for name, path in paths.items()}}
            for _ in range(max(1, rounds))]


@torch.inference_mode()
def measure_sampling(model, dtype: torch.dtype | None = None, new_tokens: int = 255, repeats: int = 3,
                     compile: bool | None = None, quantize: str | None = None, samples: int = 1,
                     rounds: int = PAIRED_ROUNDS) -> dict[str, Any]:
    """Prefill, cached decode, cache-less decode, and decode far past the context, in tokens/s, with
    the matmul floors of the model's own matrices measured in the same process.

    Every format's floor is timed before and after the decode timings, the faster of the two kept.
    Decode's share of the floor (`floor_fraction`) is the median of `rounds` paired rounds, each
    timing the fastest format's floor and then the decode beside it (`paired_rounds`): the machine's
    speed moves by a third from one second to the next, and a floor and a decode timed seconds
    apart measure two machines.
    `model` is float32; its weights are set here as generation sets them (`dtype`, `quantize`;
    janelm.quantize.inference_weights). `compile` is sample's flag: decode is timed on the path
    `janelm sample` takes with it. On the CPU that is, unless `compile` is False, the compiled step
    from the cache (compiled first if missing: `compile_s`); the uncompiled steps are timed too
    (`eager_decode_tokens_per_s`). On a GPU, `compile` True compiles the step, and the steps are
    replayed from a CUDA graph, timed against launching them one by one. `compile` True also times
    a compiled forward for the cache-less loop, so the speedup stays fair. With `quantize` ("int8")
    prefill and the cache-less loop keep the `dtype` weights, which are faster for them, so the
    speedup compares each side's fastest weights. `samples` > 1 also times that many samples
    decoded as one batch (`janelm sample --num-samples`).
    """
    from janelm.precision import FLOAT_PRECISIONS, PRECISIONS, auto_precision, matmul_floor, matrix_shapes
    from janelm.quantize import inference_weights, quantize_int8

    device = model.tok_embed.weight.device
    context = model.config.context
    prompt = [0]
    shapes = matrix_shapes(model)
    formats = PRECISIONS if device.type == "cpu" else FLOAT_PRECISIONS
    floors = {name: matmul_floor(shapes, name, device) for name in formats}
    why = "--quantize int8" if quantize else f"--dtype {str(dtype).removeprefix('torch.')}"
    if dtype == "auto" and not quantize:  # what `janelm sample` would choose (janelm.precision)
        precision, why = auto_precision(model)
        dtype, quantize = (None, "int8") if precision == "int8" else (getattr(torch, precision), quantize)
    inference_weights(model, device, None if quantize else dtype)  # int8 comes after prefill and recompute
    precision = "int8" if quantize == "int8" else str(dtype or torch.float32).removeprefix("torch.")

    full = torch.zeros(1, context, dtype=torch.long, device=device)
    model(full, cache=model.new_cache(1), last_only=True)  # warm-up: a CUDA GPU picks kernels per shape
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        cache = model.new_cache(1)
        model(full, cache=cache, last_only=True)
    synchronize(device)
    prefill = repeats * context / (time.perf_counter() - start)

    if compile:
        use_compiler_cache()
    cacheless = torch.compile(model, dynamic=True, options=INFERENCE_COMPILE_OPTIONS) if compile else model  # acts as the model
    timed_generation(cacheless, prompt, min(32, new_tokens), False)  # warm-up (and compilation)
    recompute = max(timed_generation(cacheless, prompt, new_tokens, False) for _ in range(max(1, repeats - 1)))

    if quantize == "int8":
        quantize_int8(model)
    compiled = compile if device.type == "cuda" else compile is not False

    start = time.perf_counter()
    if device.type == "cpu" and compiled:  # compiles, or loads the cached step; None where it cannot be made
        compiled = cpu_compiled_step(model, 1, compile=True) is not None
    else:
        timed_generation(model, prompt, 1, True, compiled)  # a GPU's compilation and graph capture
    ready = {"compile_s": time.perf_counter() - start} if compiled else {}

    # The paths timed against the floor: sample's, and where it has one, the same steps uncompiled
    # (the first run, before the step is compiled; --no-compile) or, on a GPU, launched one by one.
    paths = {"decode": {"compile": compiled}, "drawn": {"compile": compiled, "opts": SAMPLE_DEFAULTS}}  # drawn: sample's default draw
    if device.type == "cuda" and not compile:
        paths["eager"] = {"compile": compiled, "cuda_graphs": False}
    elif device.type == "cpu" and compiled:
        paths["eager"] = {"compile": False}
    for path in paths.values():
        timed_generation(model, prompt, min(32, new_tokens), True, **path)  # warm-up
    paired_format = max(floors, key=floors.get)
    paired = paired_rounds(model, prompt, new_tokens, paths, shapes, paired_format, device, rounds)
    fastest = max(r["decode"] for r in paired)
    long = timed_generation(model, prompt, 3 * context, True, compiled)
    eager = {"eager_decode_tokens_per_s": max(r["eager"] for r in paired)} if "eager" in paths else {}
    # The floors again, the better kept, for the table of formats (the fraction is the rounds').
    floors = {name: max(floor, matmul_floor(shapes, name, device)) for name, floor in floors.items()}
    floors[paired_format] = max(floors[paired_format], *(r["floor"] for r in paired))
    batched = {}
    if samples > 1:
        # As `sample --num-samples` would run: on the CPU by default a batch uses a step only if one is cached.
        batch_compile = compile if device.type == "cpu" else compiled
        timed_generation(model, prompt, min(32, new_tokens), True, batch_compile, samples)  # warm-up
        batched = {"samples": samples, "batched_decode_tokens_per_s": max(
            timed_generation(model, prompt, new_tokens, True, batch_compile, samples) for _ in range(repeats))}
    return {
        "dtype": precision,
        "why": why,
        "quantize": quantize,
        "compiled": compiled,
        **ready,
        "new_tokens": new_tokens,
        "prefill_tokens_per_s": prefill,
        "decode_tokens_per_s": fastest,
        "recompute_tokens_per_s": recompute,
        "speedup": fastest / recompute,
        "long_tokens": 3 * context,
        "long_decode_tokens_per_s": long,
        "long_vs_in_context": long / fastest,
        "matmul_floor_tokens_per_s": floors[precision],
        "matmul_floors_tokens_per_s": floors,
        "floor_fraction": median(r["decode"] / r["floor"] for r in paired),
        "paired_format": paired_format,
        "paired_rounds": paired,
        "drawn_decode_tokens_per_s": max(r["drawn"] for r in paired),
        "drawn_vs_greedy": median(r["drawn"] / r["decode"] for r in paired),
        **eager,
        **({"eager_floor_fraction": median(r["eager"] / r["floor"] for r in paired)} if eager else {}),
        **batched,
    }


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


@contextmanager
def random_token_trainer(model_cfg: ModelConfig, train_cfg: TrainConfig, vocab_size: int):
    """A Trainer of this recipe on random tokens in a temporary folder: what the speed probes time."""
    from janelm.data import Corpus
    from janelm.tokenizer import CharTokenizer
    from janelm.trainer import Trainer

    tokenizer = CharTokenizer("".join(chr(33 + i) for i in range(vocab_size)))
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab_size, (max(200_000, 4 * model_cfg.context),), generator=g, dtype=torch.int32)
    corpus = Corpus(Path("<random tokens>"), {}, tokenizer, tokens, tokens[: 4 * model_cfg.context + 2])
    with tempfile.TemporaryDirectory() as out:
        yield Trainer(model_cfg, train_cfg, corpus, Path(out), progress=False)


def time_steps(trainer, steps: int = 0, seconds: float = 0.0, warmup: int = 3) -> tuple[int, float]:
    """(steps, seconds) of real training steps after `warmup` untimed ones: `steps` of them, or as
    many as fit in `seconds` (at least two). The first steps allocate, and on a GPU the third
    captures the step's CUDA graph (janelm.graph_step)."""
    device = trainer.device
    for _ in range(warmup):
        trainer.train_step()
    synchronize(device)
    n, start = 0, time.perf_counter()
    while (n < steps) if steps else (n < 2 or time.perf_counter() - start < seconds):
        trainer.train_step()
        trainer.state.step += 1
        n += 1
        synchronize(device)
    return n, time.perf_counter() - start


@torch.no_grad()
def time_eval(trainer) -> float:
    """Seconds of one evaluation (train and val, `eval_batches` each), from one timed batch."""
    x, y = trainer.eval_sets["val"][0]
    trainer.model.eval()
    with trainer.ctx:
        trainer.model(x, y)  # warm-up: the first pass of a shape picks its kernels
        synchronize(trainer.device)
        start = time.perf_counter()
        trainer.model(x, y)
        synchronize(trainer.device)
    trainer.model.train()
    return 2 * trainer.cfg.eval_batches * (time.perf_counter() - start)


def measure_training(model_cfg: ModelConfig, train_cfg: TrainConfig, steps: int = 20, warmup: int = 3,
                     vocab_size: int = 100, peak_seconds: float = 1.0) -> dict[str, Any]:
    """Peak matmul FLOP/s for float32 and bf16, then `steps` real training steps (batch fetch,
    forward, backward, clipping, optimizer step) on random tokens; tokens/s, FLOP/s and MFU."""
    device = pick_device(train_cfg.device)
    dtype = pick_dtype(train_cfg.dtype, device)
    peaks = {"float32": peak_matmul_flops(device, torch.float32, seconds=peak_seconds)}
    if device.type == "cuda" or dtype == torch.bfloat16:
        peaks["bfloat16"] = peak_matmul_flops(device, torch.bfloat16, seconds=peak_seconds)
    if dtype == torch.float16:
        peaks["float16"] = peak_matmul_flops(device, torch.float16, seconds=peak_seconds)

    train_cfg = replace(train_cfg, max_iters=steps + warmup + 1, eval_batches=1)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with random_token_trainer(model_cfg, train_cfg, vocab_size) as trainer:
        _, elapsed = time_steps(trainer, steps=steps, warmup=warmup)
    tokens_per_step = train_cfg.batch_size * train_cfg.grad_accum * trainer.model_cfg.context
    flops_per_token = trainer.model.flops_per_token()
    tokens_per_s = steps * tokens_per_step / elapsed
    name = str(dtype).removeprefix("torch.")
    achieved = tokens_per_s * flops_per_token
    memory = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss_bytes()
    return {
        "device": device.type, "dtype": name, "params": trainer.model.num_params(),
        "flops_per_token": flops_per_token, "tokens_per_step": tokens_per_step, "steps": steps,
        "step_ms": 1000 * elapsed / steps, "tokens_per_s": tokens_per_s, "achieved_flops": achieved,
        "peak_flops": peaks[name], "peak_flops_by_dtype": peaks, "mfu": achieved / peaks[name],
        "peak_memory_bytes": memory, "memory_kind": "max allocated (CUDA)" if device.type == "cuda" else "peak RSS",
    }
