"""--quantize int8: matrices become int8 with a scale per row, outputs stay close, errors are clear."""

from dataclasses import replace

import pytest
import torch

from janelm.config import ModelConfig, SamplingOptions
from janelm.errors import InputError
from janelm.generate import generate_tokens
from janelm.model import GPT
from janelm.quantize import HalfLinear, Int8Linear, inference_weights, quantize_int8

SMALL = ModelConfig(vocab_size=60, context=32, n_block=2, n_embed=64, n_head=4)


def test_int8_linear_matches_the_rounded_weight():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48, bias=True)
    q = Int8Linear(linear)
    assert q.weight.dtype == torch.int8 and q.scale.shape == (48,)
    assert q.weight.abs().max() == 127  # each row's largest weight uses the full range
    x = torch.randn(2, 5, 64)
    dequantized = q.weight.float() * q.scale[:, None]
    torch.testing.assert_close(q(x), x @ dequantized.T + linear.bias, rtol=1e-4, atol=1e-4)
    assert (dequantized - linear.weight).abs().max() <= q.scale.max() / 2 + 1e-7  # off by half a step at most


@pytest.mark.parametrize("cfg", [SMALL, replace(SMALL, tie_embeddings=False, bias=True, position="learned")])
def test_quantized_model_stays_close(cfg):
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    idx = torch.randint(0, 60, (2, 32))
    before, _ = model(idx)
    quantize_int8(model, check_speed=False)  # exactness here; its speed is measured separately
    assert not any(isinstance(m, torch.nn.Linear) and m.in_features % 16 == 0 for m in model.modules())
    assert isinstance(model.blocks[0].mlp.down, torch.nn.Linear)  # 170 inputs: not a multiple of 16, kept
    assert model.tok_embed.weight.dtype == torch.float32  # the (tied) table stays as it was
    after, _ = model(idx)
    assert (after.softmax(-1) - before.softmax(-1)).abs().max() < 0.02
    # Generation (cached, compiled or not) runs on the quantized matrices; compiling once is enough.
    eager = [t.tolist() for t in generate_tokens(model, [1, 2], 40, SamplingOptions(temperature=0), compile=False)]
    assert len(eager) == 40
    if cfg == SMALL:
        compiled = [t.tolist() for t in generate_tokens(model, [1, 2], 40, SamplingOptions(temperature=0), compile=True)]
        assert compiled == eager


def test_unaligned_input_views_are_safe():
    """A view that starts mid-buffer (as `x[:, -1:]` does) must not reach the kernel's aligned loads."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 40, bias=False).bfloat16()
    q = Int8Linear(linear)
    buffer = torch.randn(5 * 48 + 1, dtype=torch.bfloat16)
    x = buffer[1:].view(5, 48)  # 2 bytes past an aligned start
    torch.testing.assert_close(q(x).float(), q(x.clone()).float())


def test_unsupported_precision_is_an_input_error():
    with pytest.raises(InputError, match="--quantize int8 needs"):
        quantize_int8(GPT(SMALL).double())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_linear_multiplies_the_rounded_values_in_float32(dtype):
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48, bias=True)
    half = HalfLinear(linear, dtype)
    assert half.weight.dtype == dtype and half.bias.dtype == torch.float32
    w = linear.weight.detach().to(dtype).float()
    for rows in (1, 3, 40):  # the 16-bit kernel for a few rows, float32 for many
        x = torch.randn(rows, 64)
        y = half(x)
        assert y.dtype == torch.float32
        expected = (x.to(dtype).float() @ w.T).to(dtype).float() + linear.bias  # rounded in, rounded out
        torch.testing.assert_close(y, expected, rtol=0, atol=2 * (expected.abs().max() * torch.finfo(dtype).eps).item())


@pytest.mark.parametrize("cfg", [SMALL, replace(SMALL, tie_embeddings=False, position="learned", norm="layer")])
def test_half_matrices_keep_activations_in_float32_and_decode_like_the_full_pass(cfg):
    torch.manual_seed(0)
    model = inference_weights(GPT(cfg), "cpu", torch.float16)
    assert all(not isinstance(m, torch.nn.Linear) for m in model.modules())
    # The cache in the matrices' format: values come out of them rounded to it, keys lose a rounding
    assert model.tok_embed.weight.dtype == torch.float32 and model.new_cache(1).keys[0].dtype == torch.float16
    greedy = SamplingOptions(temperature=0)
    cached = [t.tolist() for t in generate_tokens(model, [1, 2], 50, greedy)]
    recomputed = [t.tolist() for t in generate_tokens(model, [1, 2], 50, greedy, use_cache=False)]
    assert cached == recomputed
