"""Rotary position embeddings (the model's default positions), and the autograd Function that
rotates queries and keys in eager training with fewer passes over memory than the plain formula."""

from __future__ import annotations

import torch
import torch.nn as nn


class Rotary(nn.Module):
    """Rotary position embedding: rotates pairs of query/key features by a position-dependent angle,
    so attention scores depend on how far apart two tokens are, not where they sit. Feature i is
    paired with feature i + D/2 ("rotate half"), which needs fewer operations than interleaving."""

    def __init__(self, head_dim: int, max_positions: int, base: float):
        super().__init__()
        if torch.get_default_device().type == "meta":
            # A model for its shapes only (checkpoint loading's check): the tables hold no
            # weights, and computing them on `meta` would import the compiler (~2 s of start-up).
            self.register_buffer("cos", torch.empty(max_positions, head_dim), persistent=False)
            self.register_buffer("sin", torch.empty(max_positions, head_dim), persistent=False)
            return
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)  # (T, D)
        # Buffers, not parameters: derived from the config, so not saved in checkpoints. The sines'
        # first half is negated, so rotating is x·cos + roll(x, D/2)·sin: two products and a roll.
        sin = angles.sin()
        sin[:, : head_dim // 2].neg_()
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """Rotate x of shape (B, T, ..., D) as positions start .. start+T-1."""
        T = x.size(1)
        shape = (T,) + (1,) * (x.dim() - 3) + (x.size(-1),)  # broadcast over the dims between T and D
        cos, sin = self.cos[start : start + T].view(shape), self.sin[start : start + T].view(shape)
        return self.rotate(x, cos.to(x.dtype), sin.to(x.dtype))

    def angles(self, position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`rotate`'s cos and sin for the positions held in `position` (B,), one per row: (B, 1, D).
        With no Python integer, so a compiled step is traced once for every position."""
        return self.cos.index_select(0, position)[:, None], self.sin.index_select(0, position)[:, None]

    def matrix(self, position: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The rotations of the positions held in `position` (B,), one per row, as (B, D, D)
        matrices: `x[b] @ R[b]` rotates row b. For an eager decode step, where one product per
        block costs less than the four operations of `rotate`; made once per step."""
        cos, sin = self.angles(position)
        half = cos.size(-1) // 2
        # Row i of R holds cos on the diagonal, and sin where feature i lands after the roll.
        eye = torch.eye(cos.size(-1), dtype=cos.dtype, device=cos.device)
        return (eye * cos + eye.roll(half, dims=1) * sin).to(dtype)

    @staticmethod
    def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return x * cos + x.roll(x.size(-1) // 2, dims=-1) * sin

    def heads(self, qkv: torch.Tensor, start: int, n_head: int, n_kv_head: int) -> tuple[torch.Tensor, ...]:
        """Queries and keys of qkv (B, T, n_head + 2 · n_kv_head, D) rotated as positions from
        `start`, and the values, each (B, T, heads, D): what `forward` on the first two of three
        slices does, through `_RotatedHeads` (fewer passes over memory) where autograd runs eagerly."""
        n_qk = n_head + n_kv_head
        if torch.compiler.is_compiling():  # the compiler fuses the plain form into one kernel
            q, k = self(qkv[:, :, :n_qk], start).split((n_head, n_kv_head), dim=2)
            return q, k, qkv[:, :, n_qk:]
        T = qkv.size(1)
        cos, sin = (t[start : start + T, None].to(qkv.dtype) for t in (self.cos, self.sin))
        return _RotatedHeads.apply(qkv, cos, sin, n_head, n_kv_head)


def _rotate_into(out: torch.Tensor, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """out = x·cos + roll(x, D/2)·sin in two passes over memory, not the four of `Rotary.rotate`
    (product, roll, product, sum): each half of the product gets its partner half added in place."""
    half = x.size(-1) // 2
    torch.mul(x, cos, out=out)
    out[..., :half].addcmul_(x[..., half:], sin[..., :half])
    out[..., half:].addcmul_(x[..., :half], sin[..., half:])
    return out


class _RotatedHeads(torch.autograd.Function):
    """Rotated queries and keys, and values, from the qkv product: `Rotary.heads`' eager path.

    Through autograd, the plain form costs eight passes over the queries and keys plus, for the two
    slices of qkv, two zero-filled gradients of its full size added together. Here the backward
    writes the gradients of q, k and v straight into one tensor, rotating back by the negated angle
    (sin's halves are each other's negation, so the same two passes serve). Eager float32 training
    at the reference shape under the AVX2 caps: ~5 ms less per block."""

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, n_head: int, n_kv_head: int):
        n_qk = n_head + n_kv_head
        qk = qkv[:, :, :n_qk]
        rotated = _rotate_into(torch.empty(qk.shape, dtype=qk.dtype, device=qk.device), qk, cos, sin)
        ctx.save_for_backward(cos, sin)
        ctx.n_head, ctx.n_qk = n_head, n_qk
        return rotated[:, :, :n_head], rotated[:, :, n_head:], qkv[:, :, n_qk:]

    @staticmethod
    def backward(ctx, grad_q: torch.Tensor, grad_k: torch.Tensor, grad_v: torch.Tensor):
        cos, sin = ctx.saved_tensors
        n_head, n_qk = ctx.n_head, ctx.n_qk
        B, T, _, D = grad_q.shape
        grad = grad_q.new_empty(B, T, n_qk + grad_v.size(2), D)
        _rotate_into(grad[:, :, :n_head], grad_q, cos, -sin)
        _rotate_into(grad[:, :, n_head:n_qk], grad_k, cos, -sin)
        grad[:, :, n_qk:].copy_(grad_v)
        return grad, None, None, None, None
