"""Reduced-precision weight matrices for generation and scoring: float16/bfloat16, or int8.

Decoding one token at batch 1 reads every weight once and does little arithmetic with it, so its
speed is set by how many bytes the weights take and how fast they are read. Two formats:

- `HalfLinear` (`--dtype float16|bfloat16` on the CPU, and sampling's default there): the matrix
  in 16 bits, the KV cache too (janelm.model.KVCache), everything else (norms, attention's
  arithmetic, the residual stream) in float32.
  Half the bytes of float32 nearly doubles the speed of the matrix-vector products on every CPU
  class, even without native bf16 or float16 arithmetic, while elementwise work stays in float32,
  where the CPU is fastest and nothing overflows (docs/speed.md).
- `Int8Linear` (`--quantize int8`): int8 with one scale per output row, a quarter of float32's
  bytes, through PyTorch's `_weight_int8pack_mm` kernel, which is fast only with AVX-512.

Both change outputs slightly; neither is ever used for training.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from janelm.device import cpu_has_native_bf16
from janelm.errors import InputError

ALIGNMENT = 64  # bytes: enough for the kernel's widest aligned load
# Up to this many rows (tokens × samples) a 16-bit matrix is multiplied as it is stored; more rows
# (a prefill, scoring) go through float32, where large products are fastest on every CPU.
HALF_MAX_ROWS = 8


class HalfLinear(nn.Module):
    """A Linear whose weight is stored in float16 or bfloat16, multiplied with float32 activations.

    The 16-bit kernel takes a 16-bit input and rounds its (float32-accumulated) output to 16 bits;
    the float32 path for many rows rounds the same way, so a prefill and the single-token steps
    after it compute the same values (up to the order of the sums)."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype):
        super().__init__()
        self.bias = linear.bias
        self.register_buffer("weight", linear.weight.detach().to(dtype))
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch.mm on a 2-D view: F.linear's extra dispatch costs ~15 µs a call at batch 1.
        rows = x.reshape(-1, self.in_features).to(self.weight.dtype)
        as_stored = _at_most(rows.size(0), HALF_MAX_ROWS)
        # A compiled step of more rows (a server's batches, sample's --num-samples): float32, except
        # native bf16, whose packed kernels are the fastest at any count (16 rows: 3.9 ms a step
        # against 5.4 through float32; with AMX 1.1 against 2.9; docs/speed.md) and round as the
        # lone rows' do.
        if not as_stored and torch.compiler.is_compiling():
            as_stored = self.weight.dtype == torch.bfloat16 and cpu_has_native_bf16()
        if as_stored:
            y = torch.mm(rows, self.weight.t()).to(x.dtype)
        else:
            y = torch.mm(rows.to(x.dtype), self.weight.t().to(x.dtype)).to(self.weight.dtype).to(x.dtype)
        y = y.view(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {str(self.weight.dtype)[6:]}"


def _at_most(rows: int | torch.SymInt, limit: int) -> bool:
    """Whether a row count is at most `limit`; a symbolic one (a step compiled for a range of batch
    sizes) only where its range says so."""
    if isinstance(rows, torch.SymInt):
        from torch.fx.experimental.symbolic_shapes import statically_known_true  # only while compiling

        return statically_known_true(rows <= limit)
    return rows <= limit


class Int8Linear(nn.Module):
    """A Linear whose weight is int8 with a symmetric scale per output row."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.bias = linear.bias
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127
        self.register_buffer("weight", torch.round(weight / scale[:, None]).to(torch.int8))
        self.register_buffer("scale", scale.to(linear.weight.dtype))
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[:-1]
        x = x.reshape(-1, self.in_features)
        # The AVX-512 kernel uses aligned loads: a view that starts mid-buffer gets its own copy.
        # (Compiled code allocates every buffer aligned, and cannot ask for the address.)
        if not torch.compiler.is_compiling() and x.data_ptr() % ALIGNMENT:
            x = x.clone()
        y = torch.ops.aten._weight_int8pack_mm(x, self.weight, self.scale)
        y = y.view(*shape, self.out_features)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def inference_weights(model: nn.Module, device: torch.device | str, dtype: torch.dtype | str | None = None,
                      quantize: str | None = None) -> nn.Module:
    """Move a float32 `model` to `device` in eval mode, its weights in the precision generation and
    scoring use: on the CPU only the matrices change (`HalfLinear`, or `Int8Linear` with quantize
    "int8") and all else stays float32; on a GPU the whole model takes `dtype`. On the CPU `dtype`
    "auto" is bf16 on an AMX CPU and elsewhere the format measured fastest here for these matrices
    (janelm.precision)."""
    device = torch.device(device)
    model.to(device).eval()
    if dtype == "auto" and quantize is None:
        from janelm.precision import auto_precision

        choice, _ = auto_precision(model)
        dtype, quantize = (None, "int8") if choice == "int8" else (getattr(torch, choice), quantize)
    if quantize == "int8":
        quantize_int8(model)
    elif device.type == "cpu" and dtype in (torch.float16, torch.bfloat16):
        half_matrices(model, dtype)
    elif dtype is not None:
        model.to(dtype=dtype)
    return model


def half_format(model: nn.Module) -> torch.dtype | None:
    """The format of `model`'s 16-bit matrices (HalfLinear), or None where it has none."""
    return next((m.weight.dtype for m in model.modules() if isinstance(m, HalfLinear)), None)


def _replace_linears(model: nn.Module, convert, keep=lambda linear: False) -> None:
    """Replace every nn.Linear of `model` (in place) by `convert(linear)`, except those `keep` keeps."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and not keep(child):
                setattr(module, name, convert(child))


def half_matrices(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Store the weight matrices of a float32 CPU `model` in `dtype` (float16 or bfloat16) as
    HalfLinears, in place; embeddings, norms and activations stay float32. A tied output layer
    gets its own 16-bit copy. A SwiGLU's gate and up matrices become one (`MLP.gate_up`): one
    product per block less, each costing more than its arithmetic at batch 1. Returns the model."""
    from janelm.model import MLP

    for mlp in [m for m in model.modules() if isinstance(m, MLP) and m.kind == "swiglu"]:
        fused = nn.Linear(mlp.up.in_features, 2 * mlp.up.out_features, bias=mlp.up.bias is not None)
        fused.weight.data = torch.cat([mlp.gate.weight.detach(), mlp.up.weight.detach()])
        if fused.bias is not None:
            fused.bias.data = torch.cat([mlp.gate.bias.detach(), mlp.up.bias.detach()])
        del mlp.gate, mlp.up
        mlp.gate_up = fused
    _replace_linears(model, lambda linear: HalfLinear(linear, dtype))
    return model


def quantize_int8(model: nn.Module, *, check_speed: bool = True) -> nn.Module:
    """Replace the Linears of `model` (in place) by Int8Linears; returns the model.

    The kernel reads 16 inputs at a time, so a Linear whose input width is not a multiple of 16
    keeps its full-precision weight. A tied output layer gets its own int8 copy; the embedding
    table it shares stays as it was. Refused where its products are measured slower than a float
    format's (`check_speed`, janelm.precision): there int8 would make generation slower, not faster.
    """
    p = next(model.parameters())
    if p.device.type != "cpu":
        raise InputError(f"--quantize int8 is for decoding on the CPU, not {p.device.type}: use --device cpu, or drop --quantize")
    if p.dtype not in (torch.float32, torch.bfloat16):
        raise InputError(f"--quantize int8 needs float32 or bfloat16 weights, not {p.dtype}: choose --dtype")
    if check_speed:
        from janelm.precision import check_int8_is_fast

        check_int8_is_fast(model)
    _replace_linears(model, Int8Linear, keep=lambda linear: linear.in_features % 16 != 0)
    return model
