"""Weight-only int8 quantization for generation (`--quantize int8`).

Decoding one token at batch 1 reads every weight once and does little arithmetic with it, so its
speed is set by how many bytes the weights take and how fast they are read. Storing each Linear's
weight as int8 with one scale per output row halves the bytes of bf16, and PyTorch's
`_weight_int8pack_mm` kernel multiplies by it directly. Activations stay in the model's precision.
It changes the model's outputs slightly, so it is opt-in and never used for training.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from janelm.errors import InputError

ALIGNMENT = 64  # bytes: enough for the kernel's widest aligned load


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


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace the Linears of `model` (in place) by Int8Linears; returns the model.

    The kernel reads 16 inputs at a time, so a Linear whose input width is not a multiple of 16
    keeps its full-precision weight. A tied output layer gets its own int8 copy; the embedding
    table it shares stays as it was.
    """
    p = next(model.parameters())
    if p.device.type != "cpu":
        raise InputError(f"--quantize int8 is for decoding on the CPU, not {p.device.type}: use --device cpu, or drop --quantize")
    if p.dtype not in (torch.float32, torch.bfloat16):
        raise InputError(f"--quantize int8 needs float32 or bfloat16 weights, not {p.dtype}: choose --dtype")
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and child.in_features % 16 == 0:
                setattr(module, name, Int8Linear(child))
    return model
