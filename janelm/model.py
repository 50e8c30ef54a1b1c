"""The JaneLM transformer: a decoder-only GPT, written out in plain PyTorch.

    tokens → embedding → N × [norm → causal self-attention → +] [norm → MLP → +] → norm → logits

Each block is pre-norm (normalise, transform, add back), which keeps training stable without
careful initialisation. Positions come either from rotary embeddings applied to queries and keys
(the default: relative, so a generation window can slide) or from a learned table added to the
token embeddings (as in GPT-2 and the original research script).

Generation uses a `KVCache`: keys and values of past positions are kept, so each new token costs
one position instead of the whole context. With grouped-query attention (`n_kv_head` < `n_head`)
each key/value head serves a group of query heads, and the cache shrinks by the group's size.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from janelm.config import ModelConfig
from janelm.device import cpu_has_amx
from janelm.linear import Linear
from janelm.norm import make_norm, normalize
from janelm.quantize import half_format
from janelm.rotary import Rotary


class KVCache:
    """Keys and values of every block for the positions seen so far, preallocated to the context,
    in the activations' format, or in the matrices' where they are 16-bit and activations float32
    (janelm.quantize.HalfLinear: the values come out of those products already rounded to it).
    A server's 16-row step reads 16 rows' caches: in 16 bits the reference shape's ran 1.3-1.45×
    faster at positions 127-200, the lone step as fast (docs/speed.md).

    `length` is the number of cached positions; positions written next start there.
    """

    def __init__(self, config: ModelConfig, batch_size: int, device: torch.device, dtype: torch.dtype):
        shape = (batch_size, config.kv_heads, config.context, config.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_block)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_block)]
        self.slots = torch.arange(config.context, device=device)
        self.length = 0

    def reset(self) -> None:
        self.length = 0

    def rows(self, start: int, stop: int, span: int | None = None) -> "KVCache":
        """Rows start..stop-1 of this cache, sharing its memory, with no positions counted: a
        server's batch prefills one row, or steps the rows in use attending over the first `span`
        positions (default: all)."""
        view = object.__new__(KVCache)
        view.keys, view.values = [k[start:stop] for k in self.keys], [v[start:stop] for v in self.values]
        view.slots, view.length = self.slots[:span], 0
        return view


def _attention_by_products(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float) -> torch.Tensor:
    """Causal attention of q, k, v (B, H, T, D) as written: scores = q · kᵀ / √D with the future
    masked (one batched product adding the mask), their softmax, and its product with v."""
    B, H, T, D = q.shape
    mask = torch.full((T, T), float("-inf"), dtype=q.dtype, device=q.device).triu_(1)
    scores = torch.baddbmm(mask.expand(B * H, T, T), q.flatten(0, 1), k.flatten(0, 1).transpose(1, 2),
                           alpha=1 / math.sqrt(D))
    weights = F.dropout(scores.softmax(-1), dropout) if dropout else scores.softmax(-1)
    return torch.bmm(weights, v.flatten(0, 1)).view(B, H, T, D)


class CausalSelfAttention(nn.Module):
    """Multi-head attention in which each position sees only itself and earlier positions.

    One Linear makes queries, keys and values, laid out [q | k | v]: n_head query heads, then
    n_kv_head key heads and as many value heads."""

    def __init__(self, config: ModelConfig, rotary: Rotary | None):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.kv_heads, config.head_dim
        inner = config.n_head * config.head_dim
        self.qkv = Linear(config.n_embed, inner + 2 * self.n_kv_head * self.head_dim, bias=config.bias)
        self.proj = Linear(inner, config.n_embed, bias=config.bias)
        self.dropout, self.attention_dropout = config.dropout, config.attention_dropout
        self.rotary = rotary
        # bf16 attention on the CPU, at 8 × 6 heads × 256 × 64, forward + backward. Without AMX the
        # attention kernel is slower in bf16 than in float32 (a Zen 4: 32 ms against 22), so it runs
        # in float32. With AMX, two batched products and a softmax between them beat either kernel
        # (an AMX Xeon: 9.6 ms against the kernel's 12.9 in bf16, 15.4 in float32; the eager step
        # 1.14× the kernel's, compiled 1.24×): AMX multiplies so fast that the kernel's
        # block-by-block loop costs more than writing the scores out. The scores are rounded to
        # bf16 before the softmax there, as in any autocast attention by products.
        self.attention_by_products = cpu_has_amx()

    def _shared_kv(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, n_kv_head, T, D) repeated for each query head of their group."""
        group = self.n_head // self.n_kv_head
        if group == 1:
            return k, v
        return k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)

    def _causal_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        dropout = self.attention_dropout if self.training else 0.0
        k, v = self._shared_kv(k, v)
        if q.device.type == "cpu" and q.dtype == torch.bfloat16:
            if self.attention_by_products:
                return _attention_by_products(q, k, v, dropout)
            with torch.autocast("cpu", enabled=False):
                y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True, dropout_p=dropout)
            return y.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)

    def _heads(self, x: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries (B, n_head, T, D), keys and values (B, n_kv_head, T, D) of x (B, T, C) at
        positions from `start`."""
        B, T, _ = x.shape
        qkv = self.qkv(x).view(B, T, self.n_head + 2 * self.n_kv_head, self.head_dim)
        if self.rotary is not None:  # queries and keys rotated in one pass
            q, k, v = self.rotary.heads(qkv, start, self.n_head, self.n_kv_head)
        else:
            q, k, v = qkv.split((self.n_head, self.n_kv_head, self.n_kv_head), dim=2)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def _merge(self, y: torch.Tensor) -> torch.Tensor:
        """Heads (B, H, T, D) back to one vector per position, through the output projection."""
        B, _, T, _ = y.shape
        return self.proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        T = x.size(1)
        start = cache.length if cache is not None else 0
        q, k, v = self._heads(x, start)
        if cache is None:
            y = self._causal_attention(q, k, v)
        else:
            end = start + T
            cache.keys[layer][:, :, start:end] = k
            cache.values[layer][:, :, start:end] = v
            # Read back as stored (a 16-bit cache rounds them), as the steps after it read them.
            k, v = self._shared_kv(cache.keys[layer][:, :, :end].to(q.dtype), cache.values[layer][:, :, :end].to(q.dtype))
            if start == 0:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                # New positions after a cached prefix: row i sees the prefix and new positions <= i.
                mask = torch.ones(T, end, dtype=torch.bool, device=x.device).tril(diagonal=start)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = self._merge(y)
        return F.dropout(y, self.dropout, training=True) if self.dropout and self.training else y

    def decode(self, x: torch.Tensor, cache: KVCache, layer: int, slots: torch.Tensor,
               rotation: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None, bias: torch.Tensor,
               fused: bool = False) -> torch.Tensor:
        """One new position per row, x (B, 1, C), written into the cache at each row's own
        position: `slots` (B · n_kv_head,) are those positions' rows in the cache flattened to
        (B · n_kv_head · context, D). Attention spans the preallocated cache (its first
        `len(cache.slots)` positions), with `bias` (B · n_kv_head, 1, that span: 0, or -inf past the
        row's position) added to the scores, so every shape is fixed. `rotation`: the rows' rotary
        matrices, or with `fused` their (cos, sin) (made once per step).

        At batch 1 each operation here costs more than its arithmetic (on a CPU, ~10 µs each
        between the weight products, which flush the caches), so it is written for few operations:
        queries and keys rotated by one product, the query heads of a group (n_head / n_kv_head)
        multiplied by their shared cache at once, scale and mask folded into that product, and
        attention in float32 (a no-op where activations already are).

        `fused` (a compiled step): rotation and attention as elementwise products and sums, which
        the compiler fuses with the operations around them, where each product above is a library
        call of its own (~14% of the compiled step's time at batch 1 on a 2-core Zen 4)."""
        B, group = x.size(0), self.n_head // self.n_kv_head
        qkv = self.qkv(x).view(B, self.n_head + 2 * self.n_kv_head, self.head_dim)
        qk = qkv[:, : self.n_head + self.n_kv_head]
        if rotation is not None:
            qk = Rotary.rotate(qk, *rotation) if fused else torch.bmm(qk, rotation)
        keys, values = cache.keys[layer], cache.values[layer]  # (B, n_kv_head, context, D)
        # Written as rows of the flattened cache: index_copy_, which compiles to in-place stores.
        keys.view(-1, self.head_dim).index_copy_(0, slots, qk[:, self.n_head :].reshape(-1, self.head_dim).to(keys.dtype))
        values.view(-1, self.head_dim).index_copy_(0, slots, qkv[:, self.n_head + self.n_kv_head :].reshape(-1, self.head_dim).to(values.dtype))
        # Attention reads the cache's first `span` positions: a batch's furthest row (the server's
        # batches), rounded up to a multiple of 32 in a compiled step, the whole cache otherwise.
        span = cache.slots.size(0)
        q = qk[:, : self.n_head].reshape(B * self.n_kv_head, group, self.head_dim).float()
        if fused:  # the same sums, over D and then over the span, as broadcast products
            # Read transposed, (B · n_kv_head, D, span): a slice of a variable span there is never
            # contiguous, so the compiler need not ask whether it is (which fixes the span); and
            # converted before the slice: a 16-bit slice's conversion asked it again.
            keys, values = (t.flatten(0, 1).transpose(1, 2).float()[:, :, :span] for t in (keys, values))
            scores = (q[..., None] * keys[:, None]).sum(2) * (1 / math.sqrt(self.head_dim)) + bias
            y = (scores.softmax(-1)[:, :, None] * values[:, None]).sum(-1)
        else:  # as stored, (B · n_kv_head, span, D): 2-4x faster products than read transposed
            keys, values = (t.flatten(0, 1)[:, :span].float() for t in (keys, values))
            scores = torch.baddbmm(bias, q, keys.transpose(1, 2), alpha=1 / math.sqrt(self.head_dim))
            y = torch.bmm(scores.softmax(-1), values)
        # y: (B · n_kv_head, group, D)
        return self.proj(y.to(x.dtype).reshape(B, 1, self.n_head * self.head_dim))


class MLP(nn.Module):
    """The per-position feed-forward network: GELU (exact, or GPT-2's tanh approximation), ReLU² or
    SwiGLU (gated)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.kind = config.mlp
        hidden = config.mlp_width
        if self.kind == "swiglu":
            self.gate = Linear(config.n_embed, hidden, bias=config.bias)
        self.up = Linear(config.n_embed, hidden, bias=config.bias)
        self.down = Linear(hidden, config.n_embed, bias=config.bias)
        self.dropout = config.dropout
        self.gate_up: nn.Module | None = None  # gate and up as one matrix, for generation (janelm.quantize)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up is not None:  # one product instead of two
            gate, up = self.gate_up(x).chunk(2, dim=-1)
            h = F.silu(gate) * up
        elif self.kind == "swiglu":
            h = F.silu(self.gate(x)) * self.up(x)
        elif self.kind == "relu2":
            h = F.relu(self.up(x)).square()
        else:
            h = F.gelu(self.up(x), approximate="tanh" if self.kind == "gelu_tanh" else "none")
        y = self.down(h)
        return F.dropout(y, self.dropout, training=True) if self.dropout and self.training else y


class Block(nn.Module):
    """One transformer block: attention then MLP, each pre-normed with a residual connection."""

    def __init__(self, config: ModelConfig, rotary: Rotary | None):
        super().__init__()
        self.norm1 = make_norm(config)
        self.attn = CausalSelfAttention(config, rotary)
        self.norm2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cache, layer)
        return x + self.mlp(self.norm2(x))

    def decode(self, x: torch.Tensor, cache: KVCache, layer: int, slots: torch.Tensor,
               rotation: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None, bias: torch.Tensor,
               fused: bool = False) -> torch.Tensor:
        x = x + self.attn.decode(normalize(self.norm1, x), cache, layer, slots, rotation, bias, fused)
        return x + self.mlp(normalize(self.norm2, x))


@contextmanager
def weights_uninitialised() -> Iterator[None]:
    """Build modules without initialising their weights, for a model whose weights are loaded next.

    The random initialisation would be thrown away, and on the `meta` device its first `normal_`
    imports the compiler (about 2 s of a `janelm sample`'s start-up on a 2-core CPU). The in-place
    initialisers of `torch.nn.init`, which every module's `reset_parameters` calls, do nothing inside."""
    names = ("normal_", "uniform_", "kaiming_uniform_", "trunc_normal_", "xavier_uniform_", "zeros_", "ones_")
    saved = {name: getattr(nn.init, name) for name in names}
    try:
        for name in names:
            setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, init in saved.items():
            setattr(nn.init, name, init)


class GPT(nn.Module):
    """Decoder-only transformer language model."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        if config.vocab_size < 1:
            raise ValueError("ModelConfig.vocab_size must be set from the tokenizer")
        self.config = config
        self.tok_embed = nn.Embedding(config.vocab_size, config.n_embed)
        # One rotary table shared by all blocks (a submodule of each, but the same object).
        rotary = Rotary(config.head_dim, config.context, config.rope_base) if config.position == "rope" else None
        self.pos_embed = nn.Embedding(config.context, config.n_embed) if config.position == "learned" else None
        self.blocks = nn.ModuleList(Block(config, rotary) for _ in range(config.n_block))
        self.norm = make_norm(config)
        self.head = Linear(config.n_embed, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.head.weight = self.tok_embed.weight  # input and output share one table
        self.apply(self._init_weights)
        # Scale the residual projections down with depth so the residual stream's variance stays
        # near 1 at initialisation (GPT-2's scheme).
        for name, p in self.named_parameters():
            if name.endswith(("proj.weight", "down.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_block))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self, embeddings: bool = True) -> int:
        """Parameter count; shared (tied) tensors count once."""
        n = sum(p.numel() for p in self.parameters())
        if not embeddings:
            n -= self.tok_embed.weight.numel()
            if self.pos_embed is not None:
                n -= self.pos_embed.weight.numel()
        return n

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6 per weight used in a matmul (forward + backward), plus
        attention's score and value products over the context (the PaLM paper's accounting).
        Embedding lookups are not matmuls; a tied table is counted once, as the LM head."""
        c = self.config
        matmul_params = self.num_params(embeddings=False)
        if c.tie_embeddings:
            matmul_params += self.head.weight.numel()
        attn = 12 * c.n_block * c.n_head * c.head_dim * c.context
        return 6 * matmul_params + attn

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
        last_only: bool = False,
        lengths: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for each position of idx (B, T); with targets, also the mean cross-entropy loss.

        With a cache, idx continues the cached positions and the cache is extended. `last_only`
        computes logits for the final position only (all generation needs); with `lengths` (B,), for
        each row's position lengths[b] - 1 instead: rows of different lengths padded at the end, whose
        padding no earlier position sees (attention is causal).
        """
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.context:
            raise ValueError(f"sequence of {start + T} positions exceeds the context of {self.config.context}")
        x = self.tok_embed(idx)
        if self.pos_embed is not None:
            x = x + self.pos_embed(torch.arange(start, start + T, device=idx.device))
        if self.config.dropout and self.training:
            x = F.dropout(x, self.config.dropout, training=True)
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        if cache is not None:
            cache.length += T
        x = self.norm(x)
        if last_only:
            x = x[:, -1:, :] if lengths is None else x[torch.arange(B, device=x.device), lengths - 1][:, None]
        logits = self.head(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def decode_step(self, idx: torch.Tensor, position: torch.Tensor, cache: KVCache, fused: bool = False) -> torch.Tensor:
        """Logits (B, V) after one new token per row, idx (B, 1), each row at its own position
        (`position`, (B,)): rows of one batch may be at different points of their texts (a server's
        requests).

        The same computation as `forward` with a cache, but with fixed shapes and no Python number
        that changes between steps, so `torch.compile` traces it once. The caller advances
        `cache.length` and `position`. `fused`: attention written for a compiler to fuse
        (CausalSelfAttention.decode), for AOTInductor's CPU step.
        """
        x = self.tok_embed(idx)
        if self.pos_embed is not None:
            x = x + self.pos_embed(position)[:, None]
        # Once per step for every block: the rows' rotations, where each row's keys and values go,
        # and the scores' mask over the cache (per key/value head, the batch of attention's products).
        rotary = self.blocks[0].attn.rotary
        if rotary is None:
            rotation = None
        elif fused:
            rotation = tuple(t.to(x.dtype) for t in rotary.angles(position))
        else:
            rotation = rotary.matrix(position, x.dtype)
        heads, context = self.config.kv_heads, self.config.context
        position = position.repeat_interleave(heads)  # (B · n_kv_head,)
        slots = torch.arange(0, position.size(0) * context, context, device=position.device) + position
        bias = torch.where(cache.slots <= position[:, None], 0.0, float("-inf"))[:, None]
        for i, block in enumerate(self.blocks):
            x = block.decode(x, cache, i, slots, rotation, bias, fused)
        return self.head(normalize(self.norm, x))[:, -1]

    def new_cache(self, batch_size: int) -> KVCache:
        p = self.tok_embed.weight
        dtype = torch.get_autocast_dtype(p.device.type) if torch.is_autocast_enabled(p.device.type) else p.dtype
        return KVCache(self.config, batch_size, p.device, half_format(self) or dtype)
