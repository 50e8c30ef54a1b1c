"""Generation: the cache changes no token, the window slides, filters behave, streams stay whole."""

import copy

import pytest
import torch

from janelm.config import ModelConfig, SamplingOptions
from janelm.generate import StopFilter, StreamDecoder, candidates, draw, generate_tokens, penalize, pick_next
from janelm.errors import InputError
from janelm.model import GPT
from janelm.tokenizer import train_tokenizer

GREEDY = SamplingOptions(temperature=0)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    # Double precision: a cached decode and a full recompute then agree to ~1e-15, so argmax ties
    # cannot hide a real difference.
    return GPT(ModelConfig(vocab_size=40, context=16, n_block=2, n_embed=32, n_head=4)).eval().double()


@pytest.mark.parametrize("prompt_len", [1, 5, 16, 40])
@pytest.mark.parametrize("new", [1, 10, 50])
def test_greedy_with_cache_equals_recompute(model, prompt_len, new):
    prompt = torch.randint(0, 40, (prompt_len,), generator=torch.Generator().manual_seed(prompt_len)).tolist()
    cached = [t.item() for t in generate_tokens(model, prompt, new, GREEDY, use_cache=True)]
    recomputed = [t.item() for t in generate_tokens(model, prompt, new, GREEDY, use_cache=False)]
    assert cached == recomputed
    assert len(cached) == new


def test_sampling_with_cache_equals_recompute_for_a_seed(model):
    opts = SamplingOptions(temperature=1.0, top_k=10, top_p=0.9, repetition_penalty=1.2)
    runs = [[t.item() for t in generate_tokens(model, [1, 2, 3], 60, opts, rng=torch.Generator().manual_seed(5), use_cache=c)]
            for c in (True, False, True)]
    assert runs[0] == runs[1] == runs[2]


def test_generation_past_the_context_keeps_going(model):
    tokens = list(generate_tokens(model, [1], 3 * 16, GREEDY))
    assert len(tokens) == 48


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_cuda_graph_decoding_gives_the_eager_tokens(model):
    """On a GPU each step is replayed from a CUDA graph: the same greedy tokens as eager steps, in and
    past the context (where the prompt is processed again into the same cache), at batch 1 and 3;
    sampling on the device with a device generator is reproducible."""
    from janelm.decode_step import GraphedDecodeStep, decode_step_for

    gpu = copy.deepcopy(model).cuda()
    position = torch.zeros((), dtype=torch.long, device="cuda")
    assert isinstance(decode_step_for(gpu, gpu.new_cache(1), position, 1, compile=False), GraphedDecodeStep)
    for batch in (1, 3):
        graphed = [t.tolist() for t in generate_tokens(gpu, [1, 2], 80, GREEDY, batch_size=batch)]
        eager = [t.tolist() for t in generate_tokens(model, [1, 2], 80, GREEDY, batch_size=batch)]
        assert graphed == eager
        # The same GPU without the graph: the same kernels launched one by one.
        assert graphed == [t.tolist() for t in generate_tokens(gpu, [1, 2], 80, GREEDY, batch_size=batch,
                                                               cuda_graphs=False)]
    opts = SamplingOptions(temperature=1.0)
    runs = [[t.tolist() for t in generate_tokens(gpu, [3], 40, opts, rng=torch.Generator("cuda").manual_seed(5))]
            for _ in range(2)]
    assert runs[0] == runs[1]


def test_batch_rows_are_independent_samples(model):
    rows = torch.stack(list(generate_tokens(model, [3], 30, SamplingOptions(temperature=1.0), batch_size=4,
                                            rng=torch.Generator().manual_seed(0))), dim=1)
    assert rows.shape == (4, 30)
    assert len({tuple(r.tolist()) for r in rows}) > 1


def kept_list(logits: torch.Tensor, opts: SamplingOptions) -> list[int]:
    ids, _, last = candidates(logits, opts)
    return ids[0, : int(last) + 1].tolist()


def kept_ids(logits: torch.Tensor, opts: SamplingOptions) -> set[int]:
    return set(kept_list(logits, opts))


def test_top_k_keeps_ties_and_nothing_below():
    logits = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0]])
    assert kept_ids(logits, SamplingOptions(temperature=1.0, top_k=2)) == {1, 2, 4}  # all three tied at the top stay
    assert kept_ids(logits, SamplingOptions(temperature=1.0, top_k=4)) == {1, 2, 3, 4}


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    assert kept_ids(probs.log(), SamplingOptions(temperature=1.0, top_p=0.75)) == {0, 1}
    assert kept_ids(probs.log(), SamplingOptions(temperature=1.0, top_p=0.1)) == {0}
    # Within top-k's tokens: 0.3 of 0.95 is past 0.5 of the three's mass, so two stay.
    assert kept_ids(probs.log(), SamplingOptions(temperature=1.0, top_k=3, top_p=0.55)) == {0, 1}
    assert kept_ids(probs.log(), SamplingOptions(temperature=1.0, top_k=3, top_p=0.5)) == {0}


@pytest.mark.parametrize("opts", [SamplingOptions(temperature=1.0), SamplingOptions(temperature=0.7),
                                  SamplingOptions(temperature=1.0, top_k=3), SamplingOptions(temperature=1.0, top_p=0.8),
                                  SamplingOptions(temperature=1.3, top_k=4, top_p=0.9)])
def test_draws_follow_the_filtered_distribution(opts):
    """Inverse-transform draws land on each candidate as often as its probability, renormalised
    over the candidates, says; never elsewhere (3 rows, each its own distribution)."""
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0], [0.0, 0.0, 3.0, 0.0, 1.0, -9.0], [5.0, 0.1, 0.2, 0.3, 4.0, 4.5]])
    n = 40_000
    u = torch.rand(n, 1, generator=torch.Generator().manual_seed(0))
    for row in range(3):
        line = logits[row : row + 1]
        tokens = draw(line.expand(n, -1), opts, u)
        counts = torch.bincount(tokens, minlength=6).double() / n
        allowed = torch.zeros(6, dtype=torch.bool)
        allowed[kept_list(line, opts) if opts.top_k or opts.top_p < 1 else slice(None)] = True
        expected = (line[0].double() / opts.temperature).masked_fill(~allowed, float("-inf")).softmax(-1)
        assert counts[~allowed].sum() == 0
        assert torch.allclose(counts, expected, atol=0.01), (row, counts, expected)


@pytest.mark.parametrize("opts", [SamplingOptions(temperature=1e-45), SamplingOptions(temperature=1e-45, top_p=0.9),
                                  SamplingOptions(temperature=1e-45, top_k=2), SamplingOptions(temperature=1e30, top_k=3)])
def test_extreme_temperatures_still_draw_a_token_of_the_vocabulary(opts):
    """A temperature of 1e-45 divides logits into infinities: the draw stays among the most likely
    (tied) tokens; 1e30 flattens them (top-k's three stay the candidates)."""
    logits = torch.tensor([[1.0, 3.0, 2.0, 3.0]])
    seen = {int(pick_next(logits, opts, torch.Generator().manual_seed(seed))) for seed in range(60)}
    assert seen == ({1, 2, 3} if opts.temperature > 1 else {1, 3})


def test_greedy_takes_the_most_likely_token_whatever_the_filters():
    logits = torch.tensor([[0.1, 2.0, -1.0, 2.0], [3.0, 0.0, 0.0, 0.0]])
    for opts in (GREEDY, SamplingOptions(temperature=0, top_k=1), SamplingOptions(temperature=0, top_p=0.01)):
        assert pick_next(logits, opts, None).tolist() == [1, 0]  # the first of equals, as argmax


def test_a_seeded_draw_repeats_and_rows_of_one_generator_differ():
    logits = torch.zeros(4, 50)
    opts = SamplingOptions(temperature=1.0, top_p=0.9)
    first = pick_next(logits, opts, torch.Generator().manual_seed(3))
    assert first.tolist() == pick_next(logits, opts, torch.Generator().manual_seed(3)).tolist()
    assert len(set(first.tolist())) > 1


def test_repetition_penalty_lowers_seen_tokens():
    logits = torch.tensor([[2.0, -1.0, 2.0]])
    assert penalize(logits, 2.0, torch.tensor([[0, 1]])).tolist() == [[1.0, -2.0, 2.0]]
    assert pick_next(logits, SamplingOptions(temperature=0, repetition_penalty=2.0), None, torch.tensor([[0]])).item() == 2
    assert pick_next(logits, GREEDY, None, torch.tensor([[0]])).item() == 0  # penalty 1: unchanged


@pytest.mark.parametrize("opts, message", [
    (SamplingOptions(temperature=-1), "temperature"),
    (SamplingOptions(top_p=0.0), "top-p"),
    (SamplingOptions(top_p=1.5), "top-p"),
    (SamplingOptions(top_k=-1), "top-k"),
    (SamplingOptions(repetition_penalty=0), "repetition"),
    (SamplingOptions(temperature=float("inf")), "temperature"),
    (SamplingOptions(temperature=float("nan")), "temperature"),
    (SamplingOptions(repetition_penalty=float("inf")), "repetition"),
])
def test_invalid_sampling_options(opts, message):
    with pytest.raises(InputError, match=message):
        opts.validate()


def test_stop_filter_never_prints_the_stop_text():
    f = StopFilter(["”", "END"])
    out = "".join(f.feed(piece) for piece in ["Hello", " E", "N", "x and", " more”", " after"]) + f.flush()
    assert out == "Hello ENx and more"
    assert f.stopped
    g = StopFilter(["END"])
    assert "".join(g.feed(p) for p in ["a E", "N"]) + g.flush() == "a EN"


def test_stream_decoder_never_splits_a_character():
    tok = train_tokenizer("bpe", ["plain ascii text, and then some more text"], 260, progress=False)
    text = "é→😀 Darcy"
    ids = tok.encode(text)
    dec = StreamDecoder(tok)
    pieces = [dec.feed([i]) for i in ids] + [dec.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
