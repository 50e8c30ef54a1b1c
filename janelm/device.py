"""Device and precision: the one place that decides where and in what dtype the model runs, and
what kind of machine this is (`--preset auto`).

torch is imported inside the functions that need it: the CLI reads the machine's class for
`janelm train --help`, which must stay instant.
"""

from __future__ import annotations

import contextlib
import os
import time
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from janelm.errors import InputError

if TYPE_CHECKING:
    import torch

DTYPE_NAMES = ("float32", "bfloat16", "float16")


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return getattr(torch, name)


def pick_device(name: str = "auto") -> torch.device:
    """`auto` is CUDA when present, else the CPU; asking for CUDA without it is an input error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but this PyTorch sees no CUDA GPU: use --device cpu (or auto)")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise InputError(f"unknown device {name!r}: use auto, cpu or cuda")
    return torch.device(name)


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


# oneDNN's ISA caps (ONEDNN_MAX_CPU_ISA) that still include its bf16 instructions.
_ONEDNN_BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",
                     "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2",
                     "ALL", "DEFAULT")


def cpu_model_name() -> str:
    """The CPU's model name from /proc/cpuinfo ("" where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    return next((line.partition(":")[2].strip() for line in text.splitlines() if line.startswith("model name")), "")


def cpu_has_native_bf16(flags: frozenset[str] | None = None, env: dict[str, str] | None = None) -> bool:
    """True when bf16 matmuls run natively here (AVX-512 BF16 or AMX, ~2× float32); elsewhere bf16
    is emulated, far slower than float32 for training, so `auto` stays in float32.

    Follows the variables that cap the code paths PyTorch uses, as `torch.backends.cpu.
    get_cpu_capability()` does for its own kernels: ATEN_CPU_CAPABILITY below avx512, or
    ONEDNN_MAX_CPU_ISA below AVX512_CORE_BF16, make an AVX-512 machine run the AVX2 class's code."""
    flags = cpu_flags() if flags is None else flags
    env = os.environ if env is None else env
    if not flags & {"avx512_bf16", "amx_bf16"}:
        return False
    aten = env.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    if aten and not aten.startswith("avx512"):
        return False
    onednn = env.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    return not onednn or onednn in _ONEDNN_BF16_ISAS


def cpu_has_amx(flags: frozenset[str] | None = None, env: dict[str, str] | None = None) -> bool:
    """True when oneDNN multiplies bf16 with AMX tiles here: native bf16, the `amx_bf16` flag, and no
    ONEDNN_MAX_CPU_ISA cap below AMX. A fixed rule of the machine, so a replayed run picks the
    same kernels."""
    flags = cpu_flags() if flags is None else flags
    env = os.environ if env is None else env
    cap = env.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    return (cpu_has_native_bf16(flags, env) and "amx_bf16" in flags
            and (cap in ("", "ALL", "DEFAULT") or "AMX" in cap))


def cpu_class() -> str:
    """The CPU in words, for messages: which of the classes JaneLM tunes for."""
    if cpu_has_native_bf16():
        return f"this CPU multiplies bf16 natively ({'AMX' if cpu_has_amx() else 'AVX-512 BF16'})"
    return "this CPU has no native bf16" + (" (AVX2)" if "avx2" in cpu_flags() else "")


def describe_machine(device: torch.device, dtype: torch.dtype) -> str:
    """The machine and precision in words, for `--preset auto`'s first line: `2 cores, bfloat16 (AMX)`."""
    import torch

    precision = str(dtype).removeprefix("torch.")
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, {precision}"
    threads = torch.get_num_threads()
    if cpu_has_native_bf16():
        isa = "AMX" if cpu_has_amx() else "AVX-512 BF16"
    else:
        isa = torch.backends.cpu.get_cpu_capability()
    return f"{threads} core{'' if threads == 1 else 's'}, {precision} ({isa})"


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """The autocast dtype for `--dtype`; `auto` is bf16 where the hardware does it natively."""
    import torch

    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    if name not in DTYPE_NAMES:
        raise InputError(f"unknown --dtype {name!r}: use auto, float32, bfloat16 or float16")
    if name == "float16" and device.type != "cuda":
        raise InputError("--dtype float16 needs a CUDA GPU: use bfloat16 or float32 on the CPU")
    return torch_dtype(name)


def pick_weight_dtype(name: str, device: torch.device) -> torch.dtype | str:
    """The weights' precision for generation (`--dtype` of sample, chat, bench sample, eval). On the
    CPU `auto` stays "auto": the fastest format is measured for the model's own matrices once it is
    loaded (janelm.precision, via janelm.quantize.inference_weights). On a GPU, bf16 (float16 where
    bf16 is missing)."""
    import torch

    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return "auto"
    if name not in DTYPE_NAMES:
        raise InputError(f"unknown --dtype {name!r}: use auto, float32, bfloat16 or float16")
    return torch_dtype(name)


def emulated_bf16_warning(dtype: torch.dtype, device: torch.device) -> str | None:
    """A warning for bf16 on a CPU that emulates it: big matmuls there ran ~400× slower than
    float32 (0.3 against 130 GFLOP/s on an AVX2 machine), so a run may never finish."""
    if str(dtype) == "torch.bfloat16" and device.type == "cpu" and not cpu_has_native_bf16():
        return ("warning: this CPU has no native bf16, so --dtype bfloat16 is emulated and many times slower "
                "than float32: use --dtype float32 (or auto)")
    return None


def describe_dtype(name: str, device: torch.device, dtype: torch.dtype) -> str:
    """The dtype in words, with the reason when `auto` chose it."""
    text = str(dtype).removeprefix("torch.")
    if name != "auto":
        return text
    if device.type == "cuda":
        return f"{text} (auto: {'bf16' if text == 'bfloat16' else 'no bf16'} on this GPU)"
    return f"{text} (auto: {cpu_class()})"


def autocast(device: torch.device, dtype: torch.dtype, cache: bool = True) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass; weights stay float32 (a no-op for float32). `cache`
    keeps each weight's cast for the rest of the pass; a CUDA graph's capture must not."""
    import torch

    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache)


@contextlib.contextmanager
def deterministic_compiling(on: bool = True) -> Iterator[None]:
    """Inside: torch.compile's training steps replay bit for bit. Inductor lowers the token
    embedding's backward (a scatter-add of each token's gradient into its row) to atomic adds that
    the CPU's threads or the GPU's blocks race on, so two runs of one seed parted from the first
    steps (max weight difference 0.013 after 30 bf16 steps on a CPU, 0.023 after 40 on an H200).
    In PyTorch's deterministic mode it calls ATen's deterministic kernel there instead: no measured
    cost on the CPU (cpu-5x256's compiled step 14,139 against 14,137 tokens/s), 0.89x on an H200
    at the reference shape, batch 32 (medians of five rounds; the unforced rounds fell mid-run to
    the forced ones' pace). cuBLAS needs CUBLAS_WORKSPACE_CONFIG set before CUDA starts (janelm.cli
    sets it). Uninitialized memory stays unfilled, as outside that mode. The compiler's cache keys
    record the mode; the settings are restored after."""
    import torch

    if not on:
        yield
        return
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.utils.deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.utils.deterministic.fill_uninitialized_memory = before[2]


def use_compiler_cache() -> None:
    """Give torch.compile's own cache (Inductor's) a folder per CPU instruction set, inside
    PyTorch's default one (in the temporary folder: a compiled decode step's entry holds its
    weights, ~28 MB a model), unless TORCHINDUCTOR_CACHE_DIR says where. Inductor's cache key
    leaves out the instruction set ATen runs at (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA,
    MKL_ENABLE_INSTRUCTIONS): on one machine, a training step compiled natively and found again
    under the AVX2 caps gave NaN losses from its second step, and nanoGPT's the other way round
    corrupted the heap (docs/speed.md)."""
    import torch
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir  # imported to compile anyway

    # PyTorch writes its default into the variable once it has looked (importing the compiler does):
    # that one is not the user's choice.
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR", default_cache_dir()) != default_cache_dir():
        return
    caps = [torch.backends.cpu.get_cpu_capability()]
    caps += [os.environ[name] for name in ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS") if os.environ.get(name)]
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(default_cache_dir(), "-".join(caps).lower())


def keep_freed_memory() -> None:
    """Ask glibc's allocator to keep the memory a training step frees for the next step.

    By default it hands large freed blocks back to the operating system (a separate mapping per
    block above a threshold that adapts, and the heap's top trimmed past 128 KB), so every step
    faults its activations into fresh pages again: on 2 cores that was ~10% of a CPU training step
    at the reference shape, most of it in the forward pass (docs/speed.md). With these settings the
    process keeps its peak memory instead. A no-op off glibc."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to tune
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    mallopt(m_mmap_threshold, 32 << 20)  # blocks below 32 MB (glibc's largest) come from the heap
    mallopt(m_trim_threshold, 2**31 - 1)  # and the heap is not trimmed


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def peak_matmul_flops(device: torch.device, dtype: torch.dtype, size: int = 2048, seconds: float = 1.0) -> float:
    """Measured FLOP/s of a large square matmul in `dtype` after a warm-up: the machine's practical peak."""
    import torch

    if device.type == "cuda":
        size = max(size, 8192)
    # A generator of its own: the probe must not move the global RNG, or a resumed run with a
    # progress bar would draw other dropout masks than an uninterrupted one.
    g = torch.Generator(device).manual_seed(0)

    def operands(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.randn(n, n, device=device, generator=g).to(dtype),
                torch.randn(n, n, device=device, generator=g).to(dtype))

    if device.type == "cpu":
        # Emulated bf16 runs at ~0.3 GFLOP/s, a minute for one 2048² product: time a small product
        # first and shrink the probe until one product fits in the time asked.
        a, b = operands(256)
        torch.mm(a, b)
        start = time.perf_counter()
        torch.mm(a, b)
        rate = 2 * 256**3 / max(time.perf_counter() - start, 1e-9)
        while size > 256 and 2 * size**3 / rate > seconds:
            size //= 2
    a, b = operands(size)
    for _ in range(2):
        torch.mm(a, b)
    synchronize(device)
    n, start = 0, time.perf_counter()
    while True:
        torch.mm(a, b)
        n += 1
        if n % 2 == 0:
            synchronize(device)
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return 2 * size**3 * n / elapsed
