"""The normalisation layers: RMSNorm (with a fused CPU backward for training) or LayerNorm."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from janelm.config import ModelConfig


class _RMSNormCPU(torch.autograd.Function):
    """RMSNorm with PyTorch's fused forward kernel and a backward written out in five passes. On the
    CPU, autograd through `F.rms_norm` runs it as a chain of separate operations both ways, and
    PyTorch has no fused backward kernel there: fwd + bwd at 8 × 256 × 384 took 0.6× the time this
    way, a few percent of a training step (the model has 2 norms per block)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float | None) -> torch.Tensor:
        y, rstd = torch.ops.aten._fused_rms_norm(x, [x.size(-1)], weight, eps)
        ctx.save_for_backward(x, rstd, weight)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, rstd, weight = ctx.saved_tensors
        normed = x * rstd
        grad_normed = grad * weight
        # d/dx of x·rstd: the gradient, less its projection on the normalised input, scaled by rstd.
        dot = (grad_normed * normed).mean(-1, keepdim=True)
        grad_x = torch.addcmul(grad_normed, normed, dot, value=-1.0).mul_(rstd)
        return grad_x, (grad * normed).flatten(0, -2).sum(0), None


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm, trained on the CPU through `_RMSNormCPU`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            return _RMSNormCPU.apply(x, self.weight, self.eps)
        return super().forward(x)


def normalize(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`norm(x)` without the module call's Python overhead, for the decode step."""
    if isinstance(norm, nn.RMSNorm):
        return F.rms_norm(x, norm.normalized_shape, norm.weight, norm.eps)
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def make_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rms":
        return RMSNorm(config.n_embed, eps=config.norm_eps or None)
    return nn.LayerNorm(config.n_embed, eps=config.norm_eps or 1e-5, bias=config.bias)
