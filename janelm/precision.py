"""Which weight format decodes fastest on this CPU: measured, not assumed.

Decoding a token at batch 1 reads every weight matrix once and does little arithmetic with it, so
the format of the matrices sets the pace. Which format is fastest depends on the CPU and its
kernels, not on the bytes alone: on a 2-core AVX2 EPYC float16 matrices ran the products at ~590
tokens/s against ~230 for float32, while on an AMX Xeon float32 was the fastest (807 against 618 for
float16 and 419 for bf16), and int8's kernel is fast on some AVX-512 CPUs and slow elsewhere.

So `--dtype auto` measures: the model's own matrix shapes multiplied by one row in each format (the
*matmul floor*: decoding's speed if it did nothing but its products), a few rounds interleaved so a
busy moment slows every format alike, the best round of each kept. The fastest format is used. The
figures are kept in JaneLM's cache folder per matrix shapes, CPU, thread count and PyTorch, so the
measurement (about a second) happens once. Every format is within the quality tolerance measured
(docs/speed.md; `janelm eval --dtype` and `--quantize int8` show it for a model).

One exception, by what the CPU has rather than a floor: on an AMX CPU `auto` is bf16. A compiled
step (serve's always, sample's once one is cached) multiplies bf16 on AMX tiles, where one row runs
as fast as the fastest format's and a batch of 16 runs twice as fast (docs/speed.md); the eager
floors measured here cannot see that, and choosing between them would give serve and sample
different formats, so different texts for one seed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import suppress
from pathlib import Path
from typing import Callable

import torch

from janelm.errors import InputError
from janelm.files import WriteFailure, atomic_write_text, cache_home

FLOAT_PRECISIONS = ("float32", "bfloat16", "float16")
PRECISIONS = (*FLOAT_PRECISIONS, "int8")
ROUNDS, ROUND_SECONDS = 3, 0.12  # per format: ~1.5 s in all, once per shape set and machine
QUIET_SHARE = 0.8  # of the cores the measurement must have had for its figures to be kept


def matrix_shapes(model) -> list[tuple[int, int]]:
    """(out, in) of every weight matrix a decoded token multiplies by: the model's Linears."""
    return [tuple(m.weight.shape) for m in model.modules() if isinstance(m, torch.nn.Linear)]


@torch.inference_mode()
def matmul_floor(shapes: list[tuple[int, int]], weights: str, device: torch.device | str = "cpu",
                 seconds: float = 0.5, clock: Callable[[], float] = time.perf_counter) -> float:
    """Tokens/s if decoding did nothing but its matrix-vector products: one row times each matrix of
    `shapes`, stored as `weights` (float32, bfloat16, float16 or int8), with random values,
    after a warm-up. The bound the rest of the decode step's work is measured against."""
    from janelm.device import synchronize
    from janelm.quantize import Int8Linear

    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    if weights == "int8":
        layers = [Int8Linear(torch.nn.Linear(i, o, bias=False)) for o, i in shapes]
        inputs = [torch.randn(1, i, generator=g) for _, i in shapes]
        products = [lambda x=x, layer=layer: layer(x) for x, layer in zip(inputs, layers)]
    else:
        dtype = getattr(torch, weights)
        mats = [torch.randn(o, i, generator=g).to(device=device, dtype=dtype) for o, i in shapes]
        inputs = [torch.randn(1, i, generator=g).to(device=device, dtype=dtype) for _, i in shapes]
        products = [lambda x=x, w=w: torch.nn.functional.linear(x, w) for x, w in zip(inputs, mats)]

    def token() -> None:
        for product in products:
            product()

    for _ in range(2):
        token()
    synchronize(device)
    n, start = 0, clock()
    while True:
        token()
        n += 1
        synchronize(device)
        elapsed = clock() - start
        if elapsed >= seconds:
            return n / elapsed


def measure_floors(shapes: list[tuple[int, int]], rounds: int = ROUNDS, seconds: float = ROUND_SECONDS
                   ) -> tuple[dict[str, float], bool]:
    """Every format's floor on the CPU in interleaved rounds, each format keeping its best round,
    and whether the machine was quiet enough for the figures to stand for it.

    Timed by the wall clock with every thread, as decoding runs. The share of the cores the
    measurement had (its CPU time over wall time × threads) tells a quiet machine (about 1) from a
    busy one, where wall-clock figures rank the formats by luck (float32 above float16 once, at a
    fifth of float16's speed). There the formats are timed again on one thread by that thread's
    own CPU time, which other processes do not inflate: a ranking to use, not figures to keep."""
    def one_round(clock: Callable[[], float], best: dict[str, float]) -> None:
        for name in PRECISIONS:
            best[name] = max(best.get(name, 0.0), matmul_floor(shapes, name, "cpu", seconds, clock))

    floors: dict[str, float] = {}
    wall, cpu = time.perf_counter(), time.process_time()
    one_round(time.perf_counter, floors)
    share = (time.process_time() - cpu) / ((time.perf_counter() - wall) * torch.get_num_threads())
    if share >= QUIET_SHARE:
        for _ in range(rounds - 1):
            one_round(time.perf_counter, floors)
        return floors, True
    threads, floors = torch.get_num_threads(), {}
    torch.set_num_threads(1)
    try:
        for _ in range(rounds):
            one_round(time.thread_time, floors)
    finally:
        torch.set_num_threads(threads)
    return floors, False


def _machine_key(shapes: list[tuple[int, int]]) -> str:
    """What the floors depend on: the shapes, the CPU (its model and the instruction set PyTorch
    uses, with any caps set), the threads, and PyTorch."""
    from janelm.device import cpu_model_name

    caps = {k: os.environ.get(k, "") for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")}
    about = {"shapes": sorted(shapes), "cpu": cpu_model_name(), "isa": torch.backends.cpu.get_cpu_capability(),
             "caps": caps, "threads": torch.get_num_threads(), "torch": torch.__version__}
    return hashlib.sha256(json.dumps(about, sort_keys=True).encode()).hexdigest()[:24]


def _floors_file() -> Path:
    return cache_home() / "precision.json"


def _known() -> dict:
    """The floors kept in the cache folder, by _machine_key (none where the file is missing or damaged)."""
    with suppress(OSError, ValueError):
        known = json.loads(_floors_file().read_text())
        if isinstance(known, dict):
            return known
    return {}


def floors_here(model) -> dict[str, float]:
    """The matmul floors of `model`'s matrices in every format on this CPU: from the cache folder,
    or measured now and kept there (a folder that cannot be written only means measuring again)."""
    shapes = matrix_shapes(model)
    entry = _known().get(_machine_key(shapes))
    if isinstance(entry, dict) and set(entry.get("floors", {})) == set(PRECISIONS):
        return entry["floors"]
    floors, quiet = measure_floors(shapes)
    remember_floors(shapes, floors, quiet)
    return floors


def remember_floors(shapes: list[tuple[int, int]], floors: dict[str, float], quiet: bool) -> None:
    """Keep floors in the cache folder; figures from a quiet machine replace any, those from a busy
    one (ranked on one thread) only fill a gap."""
    key, path, known = _machine_key(shapes), _floors_file(), _known()
    if not quiet and isinstance(known.get(key), dict):
        return
    known[key] = {"floors": floors, "quiet": quiet, "measured": time.strftime("%Y-%m-%d %H:%M")}
    with suppress(OSError, WriteFailure):  # a read-only cache: the figures serve this process anyway
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(known, indent=1))


def fastest_precision(model) -> str:
    """The format whose matmul floor is highest here for `model`'s matrices."""
    floors = floors_here(model)
    return max(floors, key=floors.get)


def auto_precision(model) -> tuple[str, str]:
    """`--dtype auto`'s format for `model`'s matrices on this CPU, and why, in words."""
    from janelm.device import cpu_has_amx

    if cpu_has_amx():
        return "bfloat16", "AMX: compiled steps multiply bf16 on its tiles, alone as fast as any format and batched 2x faster"
    return fastest_precision(model), "the fastest format measured for these matrices on this CPU"


def check_int8_is_fast(model) -> None:
    """Refuse `--quantize int8` where it would decode slower than the fastest float format, as measured."""
    floors = floors_here(model)
    best = max(FLOAT_PRECISIONS, key=floors.get)
    if floors["int8"] < floors[best]:
        raise InputError(f"--quantize int8 is slower than {best} weights on this CPU (its matrix products ran at "
                         f"{floors['int8']:,.0f} tokens/s against {floors[best]:,.0f}, measured here): drop --quantize, "
                         f"and the default picks the fastest")
