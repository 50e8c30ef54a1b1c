"""--quantize int8: matrices become int8 with a scale per row, outputs stay close, errors are clear."""

from dataclasses import replace

import pytest
import torch

from janelm.config import ModelConfig
from janelm.errors import InputError
from janelm.generate import SamplingOptions, generate_tokens
from janelm.model import GPT
from janelm.quantize import Int8Linear, quantize_int8

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
    quantize_int8(model)
    assert not any(isinstance(m, torch.nn.Linear) and m.in_features % 16 == 0 for m in model.modules())
    assert isinstance(model.blocks[0].mlp.down, torch.nn.Linear)  # 170 inputs: not a multiple of 16, kept
    assert model.tok_embed.weight.dtype == torch.float32  # the (tied) table stays as it was
    after, _ = model(idx)
    assert (after.softmax(-1) - before.softmax(-1)).abs().max() < 0.02
    # Generation (cached, compiled or not) runs on the quantized matrices.
    eager = [t.tolist() for t in generate_tokens(model, [1, 2], 40, SamplingOptions(temperature=0))]
    compiled = [t.tolist() for t in generate_tokens(model, [1, 2], 40, SamplingOptions(temperature=0), compile=True)]
    assert len(eager) == 40 and compiled == eager


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
