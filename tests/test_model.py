"""The transformer: attention equals its textbook definition, the cache changes nothing, shapes hold."""

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from janelm.config import ModelConfig
from janelm.errors import InputError
from janelm.model import GPT, CausalSelfAttention

SMALL = ModelConfig(vocab_size=50, context=16, n_block=2, n_embed=32, n_head=4)


GQA = replace(SMALL, n_kv_head=2)  # grouped-query attention: two query heads per key/value head


def explicit_attention(attn: CausalSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """Masked softmax attention written out by hand, with the module's own weights: query head h
    uses key/value head h // (n_head / n_kv_head)."""
    B, T, _ = x.shape
    kv_width = attn.n_kv_head * attn.head_dim
    q, k, v = attn.qkv(x).split([attn.n_head * attn.head_dim, kv_width, kv_width], dim=2)
    q = q.view(B, T, attn.n_head, attn.head_dim)
    k, v = (t.view(B, T, attn.n_kv_head, attn.head_dim) for t in (k, v))
    if attn.rotary is not None:
        q, k = attn.rotary(q, 0), attn.rotary(k, 0)
    group = [h * attn.n_kv_head // attn.n_head for h in range(attn.n_head)]
    k, v = k[:, :, group], v[:, :, group]
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-2, -1) / math.sqrt(attn.head_dim)
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    weights = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    y = (weights @ v).transpose(1, 2).reshape(B, T, -1)
    return attn.proj(y)


@pytest.mark.parametrize("position", ["rope", "learned"])
@pytest.mark.parametrize("head_size", [0, 12])
@pytest.mark.parametrize("n_kv_head", [0, 2, 1])
def test_sdpa_attention_equals_explicit_masked_softmax(position, head_size, n_kv_head):
    torch.manual_seed(0)
    model = GPT(replace(SMALL, position=position, head_size=head_size, n_kv_head=n_kv_head)).eval()
    attn = model.blocks[0].attn
    x = torch.randn(3, 10, SMALL.n_embed)
    torch.testing.assert_close(attn(x), explicit_attention(attn, x), rtol=1e-5, atol=1e-6)


def test_attention_by_products_gives_the_kernels_output_and_gradients():
    """The bf16 attention of AMX CPUs, checked in float32, where it must equal the kernel's."""
    from janelm.model import _attention_by_products

    torch.manual_seed(0)
    inputs = [torch.randn(2, 4, 10, 8) for _ in range(3)]
    grad = torch.randn(2, 4, 10, 8)
    results = []
    for attend in (_attention_by_products, lambda q, k, v, p: F.scaled_dot_product_attention(q, k, v, is_causal=True)):
        q, k, v = (t.clone().requires_grad_() for t in inputs)
        y = attend(q, k, v, 0.0)
        y.backward(grad)
        results.append((y, q.grad, k.grad, v.grad))
    for ours, kernels in zip(*results):
        torch.testing.assert_close(ours, kernels, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_kv_head", [0, 2])
def test_bf16_attention_by_products_is_causal_and_near_float32(n_kv_head):
    torch.manual_seed(0)
    model = GPT(replace(SMALL, n_kv_head=n_kv_head)).eval()
    for block in model.blocks:
        block.attn.attention_by_products = True  # as on an AMX CPU
    idx = torch.randint(0, 50, (2, 12))
    changed = idx.clone()
    changed[:, 8:] = (changed[:, 8:] + 1) % 50
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, _ = model(idx)
        b, _ = model(changed)
    exact, _ = model(idx)
    torch.testing.assert_close(a[:, :8], b[:, :8], rtol=0, atol=0)
    assert not torch.allclose(a[:, 8:], b[:, 8:])
    assert (a.float() - exact).abs().max() < 0.05 * exact.abs().max()


def test_attention_is_causal():
    torch.manual_seed(0)
    model = GPT(SMALL).eval()
    idx = torch.randint(0, 50, (1, 12))
    changed = idx.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 50
    a, _ = model(idx)
    b, _ = model(changed)
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


@pytest.mark.parametrize("cfg", [SMALL, replace(SMALL, position="learned", norm="layer", mlp="gelu", tie_embeddings=False, bias=True),
                                 replace(SMALL, mlp="relu2"), GQA])
def test_cached_forward_equals_full_forward(cfg):
    torch.manual_seed(0)
    model = GPT(cfg).eval().double()
    idx = torch.randint(0, 50, (2, 16))
    full, _ = model(idx)
    cache = model.new_cache(2)
    parts = [model(idx[:, :5], cache=cache)[0], model(idx[:, 5:6], cache=cache)[0], model(idx[:, 6:16], cache=cache)[0]]
    torch.testing.assert_close(torch.cat(parts, dim=1), full)
    assert cache.length == 16


@pytest.mark.parametrize("cfg", [SMALL, replace(SMALL, position="learned", norm="layer", mlp="gelu", tie_embeddings=False, bias=True),
                                 GQA, replace(GQA, n_kv_head=1, mlp="gelu_tanh", mlp_hidden=40)])
def test_decode_step_equals_full_forward(cfg):
    """The fixed-shape single-token step (what a compiled decoder runs) gives the full forward's
    logits at every position, after a prefill and after earlier steps."""
    torch.manual_seed(0)
    model = GPT(cfg).eval().double()
    idx = torch.randint(0, 50, (2, 16))
    full, _ = model(idx)
    cache = model.new_cache(2)
    model(idx[:, :4], cache=cache)
    position = torch.full((2,), cache.length)
    for t in range(4, 16):
        logits = model.decode_step(idx[:, t : t + 1], position, cache)
        cache.length += 1
        position += 1
        torch.testing.assert_close(logits, full[:, t])


DECODE_CONFIGS = [SMALL, replace(SMALL, position="learned", norm="layer", mlp="gelu", tie_embeddings=False, bias=True),
                  replace(GQA, n_kv_head=1)]


@pytest.mark.parametrize("cfg", DECODE_CONFIGS)
def test_decode_step_rows_at_their_own_positions(cfg):
    """A server's batch: rows prefilled alone to different lengths into one cache, then stepped
    together, each at its own position; attending over the positions in use only changes nothing."""
    torch.manual_seed(0)
    model = GPT(cfg).eval().double()
    idx = torch.randint(0, 50, (3, 16))
    full = [model(idx[i : i + 1])[0][0] for i in range(3)]
    cache, lengths = model.new_cache(3), [2, 7, 4]
    for t in cache.keys + cache.values:  # what earlier rows left past each row's length: masked out
        t.fill_(7.0)
    for i, n in enumerate(lengths):
        model(idx[i : i + 1, :n], cache=cache.rows(i, i + 1))
    position = torch.tensor(lengths)
    for step in range(8):
        token = torch.stack([idx[i, n + step] for i, n in enumerate(lengths)])[:, None]
        span = int(position.max()) + 1 if step % 2 else None
        logits = model.decode_step(token, position, cache.rows(0, 3, span))
        for i, n in enumerate(lengths):
            torch.testing.assert_close(logits[i], full[i][n + step])
        position += 1


def test_loss_and_shapes():
    model = GPT(SMALL)
    idx = torch.randint(0, 50, (2, 16))
    logits, loss = model(idx, idx)
    assert logits.shape == (2, 16, 50)
    assert loss.ndim == 0 and 0 < loss.item() < 2 * math.log(50)
    logits, _ = model(idx, last_only=True)
    assert logits.shape == (2, 1, 50)
    with pytest.raises(ValueError, match="exceeds the context"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_parameter_count_and_tying():
    tied = GPT(SMALL)
    untied = GPT(replace(SMALL, tie_embeddings=False))
    assert untied.num_params() - tied.num_params() == 50 * 32
    assert tied.head.weight is tied.tok_embed.weight
    # The seed preset's shape (n_embed 512 = 4 heads × 128) is expressible and about 70M with GPT-2's vocabulary.
    seed = GPT(ModelConfig(vocab_size=50257, context=96, n_block=6, n_embed=512, n_head=4, head_size=128,
                           position="learned", norm="layer", mlp="gelu", tie_embeddings=False))
    assert 60e6 < seed.num_params() < 80e6
    assert seed.blocks[0].attn.qkv.out_features == 3 * 4 * 128


def test_grouped_query_attention_shrinks_the_cache_and_the_weights():
    mha, gqa = GPT(SMALL), GPT(GQA)
    assert gqa.new_cache(3).keys[0].shape == (3, 2, 16, 8)  # n_kv_head heads, not n_head
    assert mha.new_cache(3).keys[0].shape == (3, 4, 16, 8)
    assert gqa.blocks[0].attn.qkv.out_features == (4 + 2 * 2) * 8
    assert mha.num_params() - gqa.num_params() == SMALL.n_block * 2 * 2 * 8 * SMALL.n_embed


def test_settings_for_imported_models_shape_the_modules():
    """The fields an imported model needs: its MLP width, norm epsilon and rotary base as given."""
    model = GPT(replace(SMALL, mlp_hidden=40, norm_eps=1e-6, rope_base=500.0))
    assert model.blocks[0].mlp.up.out_features == 40 and model.blocks[0].norm1.eps == 1e-6
    torch.testing.assert_close(model.blocks[0].attn.rotary.cos[1, 1], torch.tensor(math.cos(500.0 ** (-2 / 8))))
    default = GPT(SMALL)  # an old checkpoint's config: SwiGLU width from mlp_ratio, the norm's own eps
    assert default.blocks[0].mlp.up.out_features == int(2 * 4 * 32 / 3) and default.blocks[0].norm1.eps is None


@pytest.mark.parametrize("change, message", [
    ({"n_embed": 30, "n_head": 4}, "not divisible"),
    ({"n_kv_head": 3}, "not a multiple of --n-kv-head 3"),
    ({"n_kv_head": -1}, "--n-kv-head must not be negative"),
    ({"n_block": 0}, "at least 1"),
    ({"dropout": 1.5}, "dropout"),
    ({"norm": "batch"}, "norm"),
])
def test_bad_shapes_are_input_errors(change, message):
    with pytest.raises(InputError, match=message):
        replace(SMALL, **change).validate()


def test_rms_norm_trains_with_the_gradients_of_f_rms_norm():
    """The CPU's hand-written backward (norm._RMSNormCPU) against autograd through F.rms_norm, and
    against finite differences."""
    from janelm.norm import RMSNorm, _RMSNormCPU

    torch.manual_seed(0)
    norm = RMSNorm(64)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(64))
    x, grad = torch.randn(3, 5, 64, requires_grad=True), torch.randn(3, 5, 64)
    ours = torch.autograd.grad(norm(x), (x, norm.weight), grad)
    theirs = torch.autograd.grad(torch.nn.functional.rms_norm(x, (64,), norm.weight), (x, norm.weight), grad)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    double = (torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True),
              torch.randn(8, dtype=torch.float64, requires_grad=True))
    assert torch.autograd.gradcheck(lambda x, w: _RMSNormCPU.apply(x, w, 1e-6), double)


@pytest.mark.parametrize("n_kv_head", [3, 1])
def test_rotated_heads_train_with_the_gradients_of_plain_rotary(n_kv_head):
    """Rotary.heads' eager path (rotary._RotatedHeads, its own backward) against autograd through
    Rotary's plain formula on slices of qkv, and against finite differences."""
    from janelm.rotary import Rotary, _RotatedHeads

    torch.manual_seed(0)
    rotary = Rotary(8, 16, 10000.0).double()
    n_head = 3
    qkv = torch.randn(2, 5, n_head + 2 * n_kv_head, 8, dtype=torch.float64, requires_grad=True)
    grads = [torch.randn(2, 5, n, 8, dtype=torch.float64) for n in (n_head, n_kv_head, n_kv_head)]
    ours = rotary.heads(qkv, 4, n_head, n_kv_head)
    q, k = rotary(qkv[:, :, : n_head + n_kv_head], 4).split((n_head, n_kv_head), dim=2)
    theirs = (q, k, qkv[:, :, n_head + n_kv_head :])
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(torch.autograd.grad(ours, qkv, grads), torch.autograd.grad(theirs, qkv, grads))
    cos, sin = rotary.cos[4:9, None], rotary.sin[4:9, None]
    assert torch.autograd.gradcheck(lambda x: _RotatedHeads.apply(x, cos, sin, n_head, n_kv_head), (qkv,))


@pytest.mark.parametrize("capability", ["AVX512", "AVX2", "DEFAULT"])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_trains_with_the_gradients_of_f_linear(bias, capability, monkeypatch):
    """janelm.linear.Linear's float32 CPU training path (oneDNN's products at AVX2 and AVX-512 on a
    CPU not Intel's; the input's gradient by oneDNN at AVX-512 only) against autograd through
    F.linear, at each instruction set ATen may report; elsewhere it is F.linear itself."""
    import janelm.linear as linear
    from janelm.device import cpu_model_name

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    linear._onednn_product.cache_clear()
    linear._input_gradient_by_onednn.cache_clear()
    try:
        torch.manual_seed(0)
        layer = linear.Linear(48, 40, bias=bias)
        x, grad = torch.randn(3, 7, 48, requires_grad=True), torch.randn(3, 7, 40)
        # A gradient that arrives as a strided view (the output's transposed copy), as autograd may give.
        strided = torch.randn(7, 3, 40).transpose(0, 1)
        params = (x, layer.weight, *((layer.bias,) if bias else ()))
        reference = torch.nn.functional.linear(x, layer.weight, layer.bias)
        for g in (grad, strided):
            out = layer(x)
            torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(torch.autograd.grad(out, params, g),
                                       torch.autograd.grad(reference, params, g, retain_graph=True), rtol=1e-5, atol=1e-5)
        uses_onednn = (capability != "DEFAULT" and "intel" not in cpu_model_name().lower()
                       and torch.backends.mkldnn.is_available())
        assert (layer(x).grad_fn.name() == "_OneDNNLinearBackward") == uses_onednn
        with torch.no_grad():  # evaluation and decoding: F.linear
            assert layer(x).grad_fn is None
        with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts the operands: F.linear
            assert layer(x).dtype == torch.bfloat16
    finally:
        linear._onednn_product.cache_clear()
        linear._input_gradient_by_onednn.cache_clear()
