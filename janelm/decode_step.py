"""How one decode step runs: eager, compiled ahead of time and cached on disk (CPU), or compiled and
replayed from a CUDA graph (GPU).

At batch 1 a step is ~25 matrix-vector products and ~150 small operations, and eager PyTorch
spends more time between the products than in them (docs/speed.md). Compiling removes that:

- **CPU**: AOTInductor compiles `GPT.decode_step`, weights included (and for a few rows its
  matrix products too: `TEMPLATE_PRODUCTS`), into a shared library, once per model, shape, batch
  size, precision, PyTorch version, instruction set and thread count, and keeps it in
  the cache folder (janelm.step_cache). Loading it takes ~0.05 s, where `torch.compile` traces the model
  again in every process (9 s with its own cache warm, 35 s cold, on 2 cores). By default a cached
  step is used when there is one, and one is compiled (~20-25 s on 2 cores, its two C++ files side
  by side: janelm.cpp_builds) only when asked for
  (`--compile`) or when the output is long enough to repay it (`AUTO_COMPILE_TOKENS`). Its
  attention reads only the cache positions in use (rounded up to `SPAN_STEP`): one library,
  compiled with that length variable. A server's batches take one compiled with the number of
  rows variable too (`batch_step_for`).
- **GPU**: the step (compiled with `--compile`) is captured in a CUDA graph: a small model's step
  is a few hundred tiny kernels, and the GPU otherwise waits for the CPU to launch them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Callable, Iterator

import torch

from janelm.config import AUTO_COMPILE_TOKENS
from janelm.console import note
from janelm.cpp_builds import builds_side_by_side
from janelm.device import cpu_has_amx, use_compiler_cache
from janelm.errors import first_line
from janelm.files import waiting_lock
from janelm.quantize import HALF_MAX_ROWS, HalfLinear
from janelm.step_cache import cache_root, compile_estimate_s, remember_compile_time, step_key, trim_cache, why_not_compiled

# Generation never changes the weights, so the compiler may treat them as constants ("freezing")
# and fold the work done on them into the compiled code once (about 1.3× the decode speed).
INFERENCE_COMPILE_OPTIONS = {"freezing": True}
# On the CPU the step's own kernels (norms, rotation, softmax, the SwiGLU gate) run on one thread: on
# vectors of a few hundred numbers, waking the second core for each of them cost more than the work
# (the reference-shape step: 1.76 ms against 1.90-2.48). The matrix products keep every thread.
# And it rounds where the eager step rounds: by default the compiler drops a float16 round trip
# inside a fused kernel (HalfLinear's float32 path rounds its input and output to float16), which
# parted 8 of 16 greedy texts of a server's batch step from their lone twins (0 with it; docs/speed.md).
CPU_STEP_OPTIONS = {**INFERENCE_COMPILE_OPTIONS, "cpp.threads": 1, "emulate_precision_casts": True}
# Up to HALF_MAX_ROWS rows (a lone row, `sample --num-samples` up to 8, a server of up to 8 rows)
# the products are C++ the compiler writes into the library (its GEMM template, the weights packed as
# stored), not 25 calls into oneDNN or ATen whose dispatch cost more than a few rows' arithmetic.
# The reference-shape lone step: 0.8-1.0 ms against 1.7-1.8 (float16 matrices), 0.7 against 1.5-1.6
# (bf16), 1.1-1.3 against 3.2-3.3 (float32); AVX2 class 1.1-1.2 against 1.3-1.7; one core 0.9-1.1
# against 1.7-1.8. At 16 rows oneDNN's kernels win (6.6 ms against 9.4; docs/speed.md), except for
# bf16 matrices on an AMX CPU, where the template multiplies with AMX tiles: the reference shape's
# products at 16 / 32 / 64 rows 0.78 / 0.98 / 1.38 ms against oneDNN's 1.34 / 1.51 / 1.89 (float16
# and float32 at 16 rows: 3.27 and 3.08 against 2.37 and 2.03). Only CPP: nothing is benchmarked
# while compiling, so a library does not depend on how busy the machine was. The template has
# vectorized kernels for AVX2 and AVX-512 only, and needs the step's threads.
TEMPLATE_PRODUCTS = {"max_autotune_gemm": True, "max_autotune_gemm_backends": "CPP"}
TEMPLATE_ISAS = ("AVX2", "AVX512")
TEMPLATE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # of the matrices (float64: none)


def template_products(model, batch_size: int) -> bool:
    """Whether a step of `model` for up to `batch_size` rows gets the compiler's own products here:
    for a few rows in every format it has, for any number of bf16 rows on an AMX CPU (which a
    compiled step multiplies as stored: HalfLinear)."""
    matrices = [m.weight for m in model.modules() if isinstance(m, (torch.nn.Linear, HalfLinear))]
    if torch.backends.cpu.get_cpu_capability() not in TEMPLATE_ISAS or any(w.dtype not in TEMPLATE_DTYPES for w in matrices):
        return False
    return batch_size <= HALF_MAX_ROWS or (all(w.dtype == torch.bfloat16 for w in matrices) and cpu_has_amx())


def step_options(model, batch_size: int, any_batch: bool = False) -> dict:
    """The compiler's options for a step of up to `batch_size` rows. A step with template products,
    and a batch's (attention over 16 rows' caches is 16 times a lone row's), run their own kernels
    on the threads they step on, fixed when compiled (a 16-row step on 2 threads: 7.3 ms against 9.8
    with them on one; docs/speed.md); the rest on one."""
    threads = {"cpp.threads": torch.get_num_threads()}
    if template_products(model, batch_size):
        return {**CPU_STEP_OPTIONS, **TEMPLATE_PRODUCTS, **threads}
    return {**CPU_STEP_OPTIONS, **threads} if any_batch else dict(CPU_STEP_OPTIONS)


class GraphedDecodeStep:
    """A decode step captured once in a CUDA graph for one cache and batch size.

    Replaying a graph launches all its kernels at once. The graph reads the token from a static
    tensor and the position from the caller's own tensor, writes the cache in place, and leaves
    the logits in a static tensor that the next replay overwrites. Capturing runs the step on slot
    `position` of the cache, so it must happen before the prompt is processed."""

    def __init__(self, step: Callable, position: torch.Tensor, cache, batch_size: int):
        device = position.device
        self.token = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up: lazy initialisation must not happen while capturing
            for _ in range(2):
                step(self.token, position, cache)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = step(self.token, position, cache)

    def __call__(self, token: torch.Tensor, position: torch.Tensor, cache) -> torch.Tensor:
        self.token.copy_(token)
        self.graph.replay()
        return self.logits


def compiled_decode_step(model) -> Callable:
    """`model.decode_step` compiled with torch.compile (for a GPU), made once per model. Its shapes
    never change during generation, so it is traced on the first token; it fuses the step's small
    kernels into fewer, and GraphedDecodeStep captures those: 3,661 tokens/s at the reference shape
    on an H100, where torch.compile's own "reduce-overhead" graphs gave 575."""
    step = getattr(model, "_compiled_decode_step", None)
    if step is None:
        use_compiler_cache()
        step = torch.compile(model.decode_step, dynamic=False, fullgraph=True, options=INFERENCE_COMPILE_OPTIONS)
        model._compiled_decode_step = step
    return step


# A compiled CPU step attends over the cache positions in use, rounded up to a multiple of this:
# over the whole context, attention took ~0.2 of a reference-shape step (6 × 384, context 256) at
# the first positions, where it has nothing to read. One library serves every span.
SPAN_STEP = 32


def attention_span(position: torch.Tensor, context: int) -> int:
    """The cache positions a step for rows at `position` reads: up to the furthest row's, rounded
    up to a multiple of SPAN_STEP, at most the context."""
    return min(context, -(-(int(position.max()) + 1) // SPAN_STEP) * SPAN_STEP)


class _StepModule(torch.nn.Module):
    """`model.decode_step`, written for fusing, with the cache's tensors as inputs: what AOTInductor
    compiles. `slots` (the positions attention spans: 0 .. span-1) is an input of variable length;
    the cache is written in place, as by the eager step."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor, position: torch.Tensor, slots: torch.Tensor, *keys_values: torch.Tensor) -> torch.Tensor:
        n = len(keys_values) // 2
        cache = _CacheTensors(list(keys_values[:n]), list(keys_values[n:]), slots)
        return self.model.decode_step(idx, position, cache, fused=True)


class _CacheTensors:
    """What `GPT.decode_step` reads of a KVCache."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], slots: torch.Tensor):
        self.keys, self.values, self.slots = keys, values, slots


class CachedCompiledStep:
    """A decode step compiled by AOTInductor, loaded from its package file."""

    def __init__(self, path: Path):
        # The loader itself, not torch._inductor.aoti_load_package: importing torch._inductor
        # would add ~3 s to start-up, and the loader needs none of it.
        # A step compiled on an AMX CPU multiplies with AMX tiles, which Linux lets a process use
        # only once it has asked: oneDNN asks at its first bf16 product, but a step run before any
        # (a decode from one token, in a fresh process) died of an illegal instruction.
        if hasattr(torch.cpu, "_init_amx"):
            torch.cpu._init_amx()
        # The loader unpacks the library into a new folder of the temporary directory and removes it
        # only when it is destroyed, which a process ending with a thread still running never does:
        # each `janelm serve` left 60-80 MB in /tmp. It unpacks into a folder of ours instead, removed
        # once loaded (the library stays mapped; where it cannot be removed, it stays, as before).
        unpacked = tempfile.mkdtemp(prefix="janelm-step-")
        try:
            with _temporary_directory(unpacked):
                self.runner = torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, -1)
        finally:
            shutil.rmtree(unpacked, ignore_errors=True)

    def __call__(self, token: torch.Tensor, position: torch.Tensor, cache) -> torch.Tensor:
        slots = cache.slots[: attention_span(position, cache.slots.size(0))]  # cache.slots: the whole context
        return self.runner.boxed_run([token, position, slots, *cache.keys, *cache.values])[0]


@contextmanager
def _temporary_directory(folder: str) -> Iterator[None]:
    """TMPDIR set to `folder` (what the loader's C++ reads) within the block."""
    before = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = folder
    try:
        yield
    finally:
        if before is None:
            del os.environ["TMPDIR"]
        else:
            os.environ["TMPDIR"] = before


class _Found:
    """What a model has learnt of its compiled steps, by (batch size, any_batch): their keys
    (hashing the weights once) and the steps loaded (once: chat's turns). A copy of the model
    starts afresh: it may be changed, and a loaded library cannot be copied."""

    def __init__(self):
        self.keys: dict[tuple[int, bool], str] = {}
        self.steps: dict[tuple[int, bool], CachedCompiledStep] = {}
        self.failed: set[tuple[int, bool]] = set()  # compiling failed: not tried again (chat's turns), said once

    def __deepcopy__(self, memo) -> "_Found":
        return _Found()


def compile_ahead(model, batch_size: int, path: Path, any_batch: bool = False) -> None:
    """Compile `model.decode_step` for `batch_size` rows (with `any_batch`, for any number from 2 to
    `batch_size`: a server's batch) with AOTInductor into the package `path`, written under a
    temporary name and renamed, so a reader never sees half a file."""
    import torch._inductor as inductor  # imported only to compile: ~3 s

    use_compiler_cache()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    cache = model.new_cache(batch_size)
    inputs = (torch.zeros(batch_size, 1, dtype=torch.long), torch.zeros(batch_size, dtype=torch.long), cache.slots,
              *cache.keys, *cache.values)
    context = model.config.context
    # The span varies from SPAN_STEP to the context (a context that short: one span, fixed).
    span = {0: torch.export.Dim("span", min=SPAN_STEP, max=context)} if context > SPAN_STEP else None
    # Rows vary from 2 to batch_size (batches of at most 2 rows: always 2, fixed; a Dim needs min < max).
    rows = {0: torch.export.Dim("rows", min=2, max=batch_size)} if any_batch and batch_size > 2 else None
    dynamic = (rows, rows, span, (rows,) * (len(inputs) - 3))  # the last: *keys_values
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp.pt2")  # AOTInductor wants the suffix
    temporary.touch()  # a folder that cannot be written fails now, in words, not after compiling
    try:
        # Without gradients, or the compiler ignores "freezing": the batch step then converted every
        # float16 matrix to float32 at each step, on one thread, and multiplied it unpacked (a 16-row
        # step 1.7x slower; docs/speed.md).
        with warnings.catch_warnings(), torch.no_grad():  # the warnings: PyTorch's own deprecation notices
            warnings.simplefilter("ignore")
            exported = torch.export.export(_StepModule(model).eval(), inputs, dynamic_shapes=dynamic, strict=False)
            with builds_side_by_side():  # the wrapper's and the kernels' C++ on two cores at once
                inductor.aoti_compile_and_package(exported, package_path=str(temporary),
                                                  inductor_configs=step_options(model, batch_size, any_batch))
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def cpu_compiled_step(model, batch_size: int, compile: bool, any_batch: bool = False) -> Callable | None:
    """The model's compiled decode step for `batch_size` rows (with `any_batch`, for any batch of 2
    to `batch_size` rows, whose cache is the first rows of a `batch_size`-row one) from the cache;
    with `compile`, compiled now if missing. None when there is none and `compile` is off, or where
    it cannot be made (a note says why)."""
    if not hasattr(torch._C, "_aoti"):  # PyTorch before 2.6, or built without AOTInductor
        if compile:
            note(f"note: compiling the decode step needs PyTorch 2.6 or later (this is {torch.__version__}): decoding uncompiled")
        return None
    found, which = model.__dict__.setdefault("_compiled_steps", _Found()), (batch_size, any_batch)
    if which not in found.steps:
        if which not in found.keys:
            found.keys[which] = step_key(model, batch_size, any_batch)
        compile = compile and which not in found.failed
        step = _cached_or_compiled(model, batch_size, any_batch, cache_root() / f"{found.keys[which]}.pt2", compile)
        if step is None:
            if compile:
                found.failed.add(which)
            return None
        found.steps[which] = step
    return found.steps[which]


def _cached_or_compiled(model, batch_size: int, any_batch: bool, path: Path, compile: bool) -> CachedCompiledStep | None:
    step = _load(path, compile)
    if step is not None or not compile:
        return step
    # One process compiles a step at a time: another compiling the same one (a server and a sample
    # started together, or two tests) is waited for, and its file loaded.
    waiting = lambda: note("waiting for another process that is compiling this decode step")  # noqa: E731
    with suppress(OSError):  # a folder that cannot be made is said when compiling writes there
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with waiting_lock(path.with_name(f".{path.stem}.lock"), waiting):
        step = _load(path, compile)
        if step is not None:
            return step
        what = "batches' decode step" if any_batch else "decode step"
        note(f"compiling the {what} for this model, once (about {compile_estimate_s(model.config, any_batch):.0f} s here); "
             f"kept in {path.parent}")
        start = time.monotonic()
        try:
            compile_ahead(model, batch_size, path, any_batch)
            step = CachedCompiledStep(path)
        except Exception as e:  # noqa: BLE001 - a read-only cache, no C++ compiler, an operation the compiler lacks...
            note(f"note: {why_not_compiled(e, path.parent)}: decoding uncompiled")
            return None
    seconds = time.monotonic() - start
    note(f"compiled in {seconds:.0f} s")
    remember_compile_time(model.config, seconds, any_batch)
    trim_cache(path.parent, path)
    return step


def _load(path: Path, compile: bool) -> CachedCompiledStep | None:
    """The compiled step in `path`, if there is one that loads (a damaged one is deleted)."""
    if not path.is_file():
        return None
    try:
        step = CachedCompiledStep(path)
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file: make it again, or go without
        note(f"note: the compiled decode step {path} could not be loaded ({first_line(e)}): "
             f"{'compiling it again' if compile else 'decoding uncompiled'}")
        with suppress(OSError):
            path.unlink()
        return None
    with suppress(OSError):  # a read-only cache still serves
        os.utime(path)  # recently used: the last to be trimmed
    return step


def compile_for_sampling(checkpoint: Path) -> float | None:
    """Make the compiled step `janelm sample -c checkpoint` will use (batch 1, in the precision
    `--dtype auto` picks here) now, at the end of `janelm train` on a CPU, so the first sample runs
    at the compiled speed. The seconds it took; None where it could not be made (a note says why)."""
    from janelm.checkpoint import load_model

    start = time.monotonic()
    model, _, _ = load_model(checkpoint, "cpu", "auto")
    return time.monotonic() - start if cpu_compiled_step(model, 1, compile=True) is not None else None


def decode_step_for(model, cache, position: torch.Tensor, batch_size: int, compile: bool | None,
                    cuda_graphs: bool = True, new_tokens: int = 0) -> Callable:
    """The single-token step for this generation of `new_tokens` tokens (call it before the
    prompt's pass: a CUDA graph is captured here).

    `compile`: True compiles (on the CPU once per model, cached on disk); False never does; None
    (the default) uses a cached compiled step on the CPU if there is one, and compiles one for
    outputs of AUTO_COMPILE_TOKENS or more. On a GPU, None means eager steps, replayed from a CUDA
    graph unless `cuda_graphs` is off."""
    if position.device.type == "cpu":
        if compile is not False:
            step = cpu_compiled_step(model, batch_size, compile=bool(compile) or new_tokens >= AUTO_COMPILE_TOKENS)
            if step is not None:
                return step
        return model.decode_step
    step = compiled_decode_step(model) if compile else model.decode_step
    if position.device.type == "cuda" and cuda_graphs:
        step = GraphedDecodeStep(step, position, cache, batch_size)
    return step


def batch_step_for(model, max_rows: int, compile: bool | None) -> Callable | None:
    """The compiled step for a server's batches of 2 to `max_rows` rows (rows of a `max_rows`-row
    cache, each at its own position) on a CPU: cached, or with `compile` compiled now. None where
    batches step eagerly: on a GPU, with --no-compile, or when none is cached (a note says how)."""
    if model.tok_embed.weight.device.type != "cpu" or compile is False or max_rows < 2:
        return None
    step = cpu_compiled_step(model, max_rows, compile=bool(compile), any_batch=True)
    if step is None and compile is None and hasattr(torch._C, "_aoti"):
        note(f"note: batches decode uncompiled; --compile compiles their step once "
             f"(about {compile_estimate_s(model.config, any_batch=True):.0f} s here)")
    return step
