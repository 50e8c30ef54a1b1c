"""Corpora of several sources: `prepare --extra`, the sampler's mix, `train --extra-weight`, and no
validation text in training.

In-process (janelm.cli.main, BatchSampler) wherever the subprocess is not what is tested; the
refusals are rows of tests/test_bad_input.py.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Iterator

import pytest
import torch

from conftest import QUICK, TINY, make_text
from gutenberg_like import period_novel
from janelm.checkpoint import load_checkpoint
from janelm.cli import main
from janelm.data import BatchSampler, Mix, load_corpus
from janelm.errors import InputError
from janelm.preparation import EXTRA, LEAK_MIN_CHARS, load_work

OPTIONS = {"clean": True, "ascii": False, "val_fraction": 0.1}


@contextmanager
def one_thread() -> Iterator[None]:
    """Tiny models in this process: one thread is fastest on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def paragraphs(text: str) -> set[str]:
    return {line for line in text.splitlines() if line.strip()}


# ------------------------------------------------------------------------------------------
# The sampler's mix
# ------------------------------------------------------------------------------------------

BOUNDARY, TOTAL, CONTEXT = 3_000, 10_000, 16


def window_starts(mix: Mix, steps: int = 200) -> torch.Tensor:
    """The start of every training window in `steps` steps (token i holds the value i)."""
    sampler = BatchSampler(torch.arange(TOTAL), CONTEXT, batch_size=8, grad_accum=1, seed=5, mix=mix)
    return torch.cat([x[:, 0] for step in range(steps) for x, _ in sampler.step_batches(step)])


def test_the_default_mix_draws_what_the_sampler_always_drew():
    """Old corpora (no groups) and `--extra-weight` unset on them: the same generator calls as
    before groups existed, so a seed reproduces an old run's batches bit for bit."""
    tokens = torch.arange(5_000)
    sampler = BatchSampler(tokens, context=8, batch_size=4, grad_accum=2, seed=3)
    high = len(tokens) - 8
    for step in (0, 7, 123):
        g = torch.Generator().manual_seed(3 * 1_000_003 + step)
        expected = torch.randint(0, high, (8,), generator=g)  # the sampler's draw before groups
        assert torch.equal(torch.cat([x[:, 0] for x, _ in sampler.step_batches(step)]), expected)
    g = torch.Generator().manual_seed(3 * 7_919 + 1)
    expected = [torch.randint(0, high, (4,), generator=g) for _ in range(3)]
    assert all(torch.equal(x[:, 0], e) for (x, _), e in zip(sampler.fixed_batches(3, salt=1), expected))


def test_a_corpus_without_extras_mixes_as_before(prepared):
    corpus = load_corpus(prepared)
    assert "train_ranges" not in corpus.meta and corpus.extra_start is None
    assert corpus.mix() == corpus.mix(-1.0) == corpus.mix(0.0) == Mix()
    with pytest.raises(InputError, match="--extra-weight 0.5: .* has no extra sources"):
        corpus.mix(0.5)


@pytest.mark.parametrize("weight", [None, 0.0, 0.3, 0.7, 1.0])
def test_weights_set_the_share_of_windows_and_no_window_crosses_a_group(weight):
    starts = window_starts(Mix(BOUNDARY, weight))
    in_main = starts + CONTEXT < BOUNDARY
    in_extra = (starts >= BOUNDARY) & (starts + CONTEXT < TOTAL)
    assert bool((in_main | in_extra).all())  # every window lies inside one group
    share = in_extra.double().mean().item()
    if weight in (0.0, 1.0):
        assert share == weight  # exact: not a single window from the other group
    else:
        # Plain mixing: every window start that fits in a group equally likely.
        expected = (TOTAL - BOUNDARY - CONTEXT) / (TOTAL - 2 * CONTEXT) if weight is None else weight
        assert share == pytest.approx(expected, abs=0.04)  # 1,600 windows: the binomial spread is ~0.012
    # Within a group, the starts spread over all of it (uniform: the mean is near the middle).
    for inside, low, high in ((in_main, 0, BOUNDARY - CONTEXT), (in_extra, BOUNDARY, TOTAL - CONTEXT)):
        if inside.sum() > 100:
            chosen = starts[inside].double()
            assert chosen.mean().item() == pytest.approx((low + high) / 2, rel=0.1)
            assert chosen.min().item() < low + 0.05 * (high - low) and chosen.max().item() > high - 0.05 * (high - low)


def test_a_group_too_short_for_a_window_is_refused_unless_weighed_out():
    tokens = torch.arange(200)
    with pytest.raises(InputError, match="the extra sources have 10 training tokens, fewer than one context window"):
        BatchSampler(tokens, CONTEXT, batch_size=2, mix=Mix(190, 0.5))
    x, _ = BatchSampler(tokens, CONTEXT, batch_size=2, mix=Mix(190, 0.0)).step_batches(0)[0]
    assert bool((x[:, 0] + CONTEXT < 190).all())


# ------------------------------------------------------------------------------------------
# prepare --extra: groups in train.bin and meta.json (the `mixed` corpus: conftest.py)
# ------------------------------------------------------------------------------------------


def test_extras_follow_the_main_training_text_and_give_no_validation_text(mixed):
    corpus = load_corpus(mixed / "corpus")
    meta, decode = corpus.meta, corpus.tokenizer.decode
    main_work = load_work(mixed / "main.txt", **OPTIONS)
    extra_work = load_work(mixed / "extra.txt", **OPTIONS, group=EXTRA)
    assert (extra_work.train, extra_work.val) == ((mixed / "extra.txt").read_text(), "")

    boundary = corpus.extra_start
    assert meta["train_ranges"] == {"main": [0, boundary], "extra": [boundary, len(corpus.train)]}
    assert decode(corpus.train[:boundary].tolist()) == main_work.train
    assert decode(corpus.train[boundary:].tolist()) == extra_work.train
    assert decode(corpus.val.tolist()) == main_work.val  # validation (and eval's default text) is the main text's
    assert [(s["source"], s["group"], s["val_chars"] > 0) for s in meta["sources"]] == [
        (str(mixed / "main.txt"), "main", True), (str(mixed / "extra.txt"), "extra", False)]
    assert meta["extra_weight"] == 0.25 and corpus.mix() == Mix(boundary, 0.25)
    assert corpus.mix(1.0) == Mix(boundary, 1.0) and corpus.mix(-1.0) == Mix(boundary, 0.25)


def test_a_corpus_without_extras_has_no_group_fields(prepared):
    meta = json.loads((prepared / "meta.json").read_text())
    assert set(meta) == {"janelm_version", "created", "tokenizer", "token_dtype", "settings", "sources", "tokens",
                         "chars", "chars_per_token"}
    assert all("group" not in source for source in meta["sources"])


def test_no_validation_paragraph_is_in_train_bin(mixed):
    corpus = load_corpus(mixed / "corpus")
    trained_on = paragraphs(corpus.tokenizer.decode(corpus.train.tolist()))
    held_out = paragraphs(load_work(mixed / "main.txt", **OPTIONS).val)
    assert held_out and not held_out & trained_on
    # The extra text's repeats of main training paragraphs did go in: the check is not vacuous.
    assert paragraphs(load_work(mixed / "main.txt", **OPTIONS).train) <= trained_on


def test_no_austen_validation_text_in_a_corpus_with_period_extras(tmp_path):
    mains = ["austen:lady-susan", "austen:love-and-freindship"]  # two of the bundled works
    period = tmp_path / "period.txt"
    period.write_bytes(period_novel(seed=550, bom=True, crlf=True))  # as distributed: BOM, CRLF, hard-wrapped
    out = tmp_path / "corpus"
    assert main(["prepare", *mains, "--extra", str(period), "--out", str(out), *QUICK]) == 0
    corpus = load_corpus(out)
    trained_on = paragraphs(corpus.tokenizer.decode(corpus.train.tolist()))
    for path in mains:
        # Prose paragraphs: short lines such as a letter's heading ("Lady Susan to Mrs. Johnson.") recur.
        held_out = {p for p in paragraphs(load_work(path, **OPTIONS).val) if len(p) >= LEAK_MIN_CHARS}
        assert len(held_out) >= 5 and not held_out & trained_on, path


def test_an_extra_holding_validation_text_is_refused(tmp_path, capsys):
    """The same novel from another copy (other bytes, the same paragraphs) would put its
    validation split in training."""
    text = make_text(200, seed=4)
    (tmp_path / "novel.txt").write_text(text)
    (tmp_path / "copy.txt").write_bytes(("\ufeff" + text.replace("\n", "\r\n")).encode())
    out = tmp_path / "corpus"
    assert main(["prepare", str(tmp_path / "novel.txt"), "--extra", str(tmp_path / "copy.txt"), "--out", str(out),
                 *QUICK]) == 2
    assert "holds a paragraph of " + str(tmp_path / "novel.txt") + "'s validation split" in capsys.readouterr().err
    assert not out.exists()


# ------------------------------------------------------------------------------------------
# train --extra-weight: one corpus for every recipe
# ------------------------------------------------------------------------------------------


def test_pretrain_on_extras_then_fine_tune_on_main_with_one_corpus(mixed, tmp_path):
    data, pre, tuned = str(mixed / "corpus"), tmp_path / "pre", tmp_path / "tuned"
    steps = ["--max-iters", "6", "--eval-interval", "3"]
    with one_thread():
        assert main(["train", "--data", data, "--out", str(pre), *TINY, *steps, "--extra-weight", "1"]) == 0
        # The same corpus, hence the same tokenizer: --init-from takes it without a re-prepare.
        assert main(["train", "--init-from", str(pre), "--data", data, "--out", str(tuned), *TINY, *steps,
                     "--extra-weight", "0"]) == 0
    assert load_checkpoint(pre / "last.pt")["train_config"]["extra_weight"] == 1.0
    assert load_checkpoint(tuned / "last.pt")["train_config"]["extra_weight"] == 0.0
