"""The model's linear layers: nn.Linear, whose float32 training products on the CPU go to oneDNN.

PyTorch multiplies float32 matrices on the CPU with MKL, and bf16 ones with oneDNN. At the
reference shape's products (2,048 rows × 384 ↔ 1,024 or 1,152) on a 2-core Zen 4, oneDNN's
float32 kernels ran the forward product 1.2-1.35× and the input's gradient 1.1-1.35× as fast as
MKL's (MKL keeps its best kernels for Intel's CPUs), and the weight's gradient (two transposed
operands) slower. Eager training steps, alternating in one process (docs/speed.md): with AVX-512,
forward and input gradient by oneDNN 1.06× MKL's step, the forward alone 1.03×; under the AVX2
caps the forward alone 1.015-1.04×, with the input's gradient too 0.98-0.99×. So: the forward by
oneDNN on CPUs not Intel's, the input's gradient too at AVX-512, the weight's gradient by MKL. An
Intel CPU keeps MKL, which is tuned for it: on a 2-core AMX Xeon (AVX-512), seven alternating
rounds of the eager float32 step, oneDNN's forward ran 0.985× MKL's step, forward and input
gradient 0.972×. The choice is a fixed rule of the CPU and the instruction set ATen runs at, not a
timing, so a replayed run (`--max-iters`) multiplies with the same kernels and gives the same
numbers.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn as nn
import torch.nn.functional as F

from janelm.device import cpu_model_name


@lru_cache(maxsize=1)
def _onednn_product():
    """oneDNN's linear product (the one PyTorch's compiler calls on the CPU) where ATen runs at
    AVX2 or AVX-512 on a CPU not Intel's, or None: there, where this PyTorch lacks it, or where it
    does not give F.linear's result."""
    try:
        if (torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512") or "intel" in cpu_model_name().lower()
                or not torch.backends.mkldnn.is_available()):
            return None
        product = torch.ops.mkldnn._linear_pointwise
        g = torch.Generator().manual_seed(0)
        x, w = torch.randn(5, 3, 16, generator=g), torch.randn(8, 16, generator=g)
        if not torch.allclose(product(x, w, None, "none", [], ""), F.linear(x, w), atol=1e-5):
            return None
    except (AttributeError, RuntimeError):
        return None
    return product


@lru_cache(maxsize=1)
def _input_gradient_by_onednn() -> bool:
    """Whether the input's gradient goes to oneDNN too: at AVX-512 (slower than MKL's at AVX2)."""
    return torch.backends.cpu.get_cpu_capability() == "AVX512"


class _OneDNNLinear(torch.autograd.Function):
    """y = x · Wᵀ + b, the forward by oneDNN, the input's gradient by oneDNN at AVX-512 and by MKL
    below, the weight's by MKL."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn_product()(x, weight, bias, "none", [], "")

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        rows = grad.reshape(-1, grad.size(-1))
        if ctx.needs_input_grad[0]:  # grad · W (oneDNN reads Wᵀ as a view, no copy)
            if _input_gradient_by_onednn():
                grad_x = _onednn_product()(grad, weight.t(), None, "none", [], "")
            else:
                grad_x = rows.mm(weight).view(*grad.shape[:-1], weight.size(1))
        if ctx.needs_input_grad[1]:
            grad_w = rows.t().mm(x.reshape(-1, x.size(-1)))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = rows.sum(0)
        return grad_x, grad_w, grad_b


class Linear(nn.Linear):
    """nn.Linear (the same weights, the same checkpoints), training through oneDNN where that is
    faster: float32 on the CPU with gradients, outside autocast and the compiler (which picks its
    own kernels)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Gradients first: decoding (no gradients) calls this per token and leaves after one check.
        if (torch.is_grad_enabled() and x.device.type == "cpu" and x.dtype == torch.float32
                and self.weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
                and not torch.compiler.is_compiling() and _onednn_product() is not None):
            return _OneDNNLinear.apply(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)
