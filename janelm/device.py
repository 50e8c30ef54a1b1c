"""Device and precision: the one place that decides where and in what dtype the model runs."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch

from janelm.errors import InputError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(name: str = "auto") -> torch.device:
    """`auto` is CUDA when present, else the CPU; asking for CUDA without it is an input error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but this PyTorch sees no CUDA GPU: use --device cpu (or auto)")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise InputError(f"unknown device {name!r}: use auto, cpu or cuda")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """True when the CPU multiplies bf16 natively (AVX-512 BF16 or AMX): there bf16 matmuls run ~2×
    float32; elsewhere bf16 is emulated and slower, so `auto` stays in float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """The autocast dtype for `--dtype`; `auto` is bf16 where the hardware does it natively."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    if name not in DTYPES:
        raise InputError(f"unknown --dtype {name!r}: use auto, float32, bfloat16 or float16")
    if name == "float16" and device.type != "cuda":
        raise InputError("--dtype float16 needs a CUDA GPU: use bfloat16 or float32 on the CPU")
    return DTYPES[name]


def emulated_bf16_warning(dtype: torch.dtype, device: torch.device) -> str | None:
    """A warning for bf16 on a CPU that emulates it: big matmuls there ran ~400× slower than
    float32 (0.3 against 130 GFLOP/s on an AVX2 machine), so a run may never finish."""
    if dtype == torch.bfloat16 and device.type == "cpu" and not cpu_has_native_bf16():
        return ("warning: this CPU has no native bf16, so --dtype bfloat16 is emulated and many times slower "
                "than float32: use --dtype float32 (or auto)")
    return None


def describe_dtype(name: str, device: torch.device, dtype: torch.dtype) -> str:
    """The dtype in words, with the reason when `auto` chose it."""
    text = str(dtype).removeprefix("torch.")
    if name != "auto":
        return text
    if device.type == "cuda":
        return f"{text} (auto: {'bf16' if dtype == torch.bfloat16 else 'no bf16'} on this GPU)"
    return f"{text} (auto: this CPU {'multiplies bf16 natively' if dtype == torch.bfloat16 else 'has no native bf16'})"


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass; weights stay float32 (a no-op for float32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_matmul_flops(device: torch.device, dtype: torch.dtype, size: int = 2048, seconds: float = 1.0) -> float:
    """Measured FLOP/s of a large square matmul in `dtype` after a warm-up: the machine's practical peak."""
    if device.type == "cuda":
        size = max(size, 8192)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
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
