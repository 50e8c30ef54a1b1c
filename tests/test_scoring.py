"""Held-out scoring: every token once, with at least half a context of history, batched or not."""

import torch
import torch.nn.functional as F
import pytest

from janelm.config import ModelConfig
from janelm.model import GPT
from janelm.scoring import Score, windows, score_ids


@pytest.mark.parametrize("n", [2, 3, 16, 17, 33, 100, 257])
@pytest.mark.parametrize("context", [1, 2, 8, 16])
def test_windows_score_every_token_once_with_half_a_context(n, context):
    seen = []
    for start, length, first in windows(n, context):
        assert 1 <= length <= context and start + length < n
        for j in range(first, length):
            target = start + j + 1
            seen.append(target)
            history = j + 1
            assert history >= min(target, context // 2 or 1)
    assert sorted(seen) == list(range(1, n))


def test_score_equals_brute_force():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=20, context=8, n_block=1, n_embed=16, n_head=2)).eval().double()
    ids = torch.randint(0, 20, (50,))
    nats, count = score_ids(model, ids, batch_size=3)
    expected = 0.0
    for start, length, first in windows(50, 8):
        logits, _ = model(ids[None, start:start + length])
        nll = F.cross_entropy(logits[0], ids[start + 1:start + length + 1], reduction="none")
        expected += nll[first:].sum().item()
    assert count == 49
    assert nats == pytest.approx(expected, rel=1e-6)  # the model scores in float32
    # Batch size does not change the result.
    assert score_ids(model, ids, batch_size=1)[0] == pytest.approx(nats, rel=1e-9)


def test_score_dict():
    d = Score(nats=100.0, tokens=50, chars=200, bytes=210).as_dict()
    assert d["loss"] == 2.0
    assert d["bits_per_char"] == pytest.approx(100 / 0.6931471805599453 / 200)
    assert set(d) == {"loss", "perplexity", "bits_per_char", "bits_per_byte", "tokens", "chars"}
