"""`train --extra-weight A:B` (janelm.mixing): the extra text's share of the training windows moves
over one run as the schedule says, a planned run's `--max-iters N` replay and a resumed run draw the
same windows, fixed weights draw what they always drew, and bad values are refused in one line
(tests/test_bad_input.py runs the refusals through the real CLI).

Windows are counted by where they start: the trainer's own offsets, recorded as it draws them.
"""

from __future__ import annotations

import os
import signal
from dataclasses import replace

import pytest
import torch

from conftest import TINY
from janelm.checkpoint import load_checkpoint
from janelm.cli import main
from janelm.config import TrainConfig
from janelm.data import BatchSampler, Mix, load_corpus
from janelm.errors import InputError, Interrupted
from janelm.mixing import Share, parse_extra_weight
from janelm.schedule import mix_step_progress
from janelm.trainer import Trainer
from test_schedule import TINY_MODEL, FakeClock, run_planned

CFG = TrainConfig(batch_size=16, lr=1e-3, warmup_iters=4, max_iters=40, max_time=0.0, eval_interval=20,
                  save_interval=20, eval_batches=1, dtype="float32", extra_weight="1:0")


def record_starts(trainer: Trainer) -> list[torch.Tensor]:
    """Every training step's window starts, from now on, as the trainer draws them."""
    starts: list[torch.Tensor] = []
    sampler, draw = trainer.train_batches, trainer.train_batches.offsets
    sampler.offsets = lambda g, count, progress: starts.append(draw(g, count, progress)) or starts[-1]
    return starts


def extra_shares(starts: list[torch.Tensor], boundary: int) -> list[float]:
    return [(s >= boundary).double().mean().item() for s in starts]


def test_a_1_to_0_run_moves_from_the_extra_text_to_the_main_text(mixed, tmp_path):
    corpus = load_corpus(mixed / "corpus")
    trainer = Trainer(TINY_MODEL, CFG, corpus, tmp_path, progress=False)
    starts = record_starts(trainer)
    trainer.run()
    shares = extra_shares(starts, corpus.extra_start)
    assert len(shares) == CFG.max_iters
    assert shares[: CFG.warmup_iters + 1] == [1.0] * (CFG.warmup_iters + 1)  # warm-up and the step after: all extra
    assert shares[-1] == 0.0  # the last step: all main
    expected = [1 - mix_step_progress(CFG, i) for i in range(CFG.max_iters)]
    for part in range(4):  # 160 windows a quarter: the binomial spread is at most 0.04
        window = slice(part * 10, part * 10 + 10)
        assert sum(shares[window]) / 10 == pytest.approx(sum(expected[window]) / 10, abs=0.12), part
    assert sum(shares[:20]) > sum(shares[20:]) + 5  # it moved


def test_a_switch_draws_a_then_b(mixed):
    corpus = load_corpus(mixed / "corpus")
    cfg = replace(CFG, extra_weight="1:0@0.5")
    sampler = BatchSampler(corpus.train, 32, batch_size=16, seed=1, mix=corpus.mix(cfg.extra_weight))
    starts = [sampler.offsets(torch.Generator().manual_seed(i), 16, mix_step_progress(cfg, i)) for i in range(40)]
    shares = extra_shares(starts, corpus.extra_start)
    switch = shares.index(0.0)
    assert shares == [1.0] * switch + [0.0] * (40 - switch)
    assert switch == 22  # steps 4 to 39 move the schedule from 0 to 1: half-way is 4 + 17.5
    assert "mix: the extra sources' share of the training windows is 100% to step 22, then 0% to step 40 " \
           "(--extra-weight 1:0@0.5)" == corpus.mix(cfg.extra_weight).describe(cfg.extra_weight, cfg)


def old_offsets(seed: int, count: int, boundary: int, total: int, context: int, weight: float) -> torch.Tensor:
    """A weighted mix's draw as the sampler made it before schedules existed (commit 9abcc54), from
    a generator seeded with `seed`."""
    g = torch.Generator().manual_seed(seed)
    extra = torch.rand(count, generator=g, dtype=torch.float64) < weight
    where = torch.rand(count, generator=g, dtype=torch.float64)
    size = torch.where(extra, total - boundary - context, boundary - context)
    return torch.where(extra, boundary, 0) + (where * size).long()


def test_a_fixed_weight_draws_the_batches_it_always_drew(mixed, tmp_path):
    corpus = load_corpus(mixed / "corpus")
    boundary, total = corpus.extra_start, len(corpus.train)
    cfg = replace(CFG, max_iters=12, extra_weight=0.3, eval_interval=12, save_interval=12)
    trainer = Trainer(TINY_MODEL, cfg, corpus, tmp_path, progress=False)
    starts = record_starts(trainer)
    trainer.run()
    for step, drawn in enumerate(starts):
        assert torch.equal(drawn, old_offsets(cfg.seed * 1_000_003 + step, 16, boundary, total, 32, 0.3)), step
    # A schedule that does not move is the same fixed share, at any point of the run.
    for mix in (Mix(boundary, 0.3), Mix(boundary, parse_extra_weight("0.3:0.3"))):
        sampler = BatchSampler(corpus.train, 32, batch_size=16, mix=mix)
        for progress in (0.0, 0.37, 1.0):
            assert torch.equal(sampler.offsets(torch.Generator().manual_seed(9), 16, progress),
                               old_offsets(9, 16, boundary, total, 32, 0.3))


PLANNED = replace(CFG, max_iters=0, max_time=8.0, warmup_iters=10)


def planned_run(corpus, out, cfg: TrainConfig = PLANNED, resume=None) -> tuple[Trainer, list[torch.Tensor]]:
    """A run on a fake clock: 0.1 s a step, 0.2 s an evaluation (a time budget plans ~60 steps)."""
    clock = FakeClock()
    trainer = Trainer(TINY_MODEL, cfg, corpus, out, progress=False, clock=clock, resume=resume)
    starts = record_starts(trainer)
    run_planned(trainer, clock, lambda step: 0.1, seconds_per_eval=0.2)
    return trainer, starts


def test_a_planned_schedule_replays_with_max_iters_and_resumes_alike(mixed, tmp_path):
    corpus = load_corpus(mixed / "corpus")
    planned, starts = planned_run(corpus, tmp_path / "planned")
    steps = planned.cfg.max_iters
    assert steps > 3 * PLANNED.warmup_iters and len(starts) == steps
    shares = extra_shares(starts, corpus.extra_start)
    assert shares[: PLANNED.warmup_iters + 1] == [1.0] * (PLANNED.warmup_iters + 1) and shares[-1] == 0.0

    # The replay: the same seed and steps, no time limit.
    replay = Trainer(TINY_MODEL, replace(PLANNED, max_iters=steps, max_time=0.0), corpus, tmp_path / "replay",
                     progress=False)
    replayed = record_starts(replay)
    replay.run()
    # Resumed: stopped by a signal half-way, then continued from last.pt with the run's own config.
    stop_at = steps // 2

    def stop_half_way(step: int) -> float:
        if step == stop_at - 1:  # the index of the step just taken: the loop saves once it counts it
            os.kill(os.getpid(), signal.SIGTERM)
        return 0.1

    clock = FakeClock()
    broken = Trainer(TINY_MODEL, PLANNED, corpus, tmp_path / "broken", progress=False, clock=clock)
    head = record_starts(broken)
    with pytest.raises(Interrupted):
        run_planned(broken, clock, stop_half_way, seconds_per_eval=0.2)
    ckpt = load_checkpoint(tmp_path / "broken" / "last.pt")
    assert ckpt["state"]["step"] == stop_at and ckpt["train_config"]["extra_weight"] == "1:0"
    resumed, tail = planned_run(corpus, tmp_path / "broken", TrainConfig.from_dict(ckpt["train_config"]), ckpt)

    for other in (replayed, head + tail):
        assert len(other) == steps and all(torch.equal(a, b) for a, b in zip(starts, other))
    for name, w in planned.model.state_dict().items():
        assert torch.equal(w, replay.model.state_dict()[name]), name
        assert torch.equal(w, resumed.model.state_dict()[name]), name


def test_the_cli_records_the_schedule_as_given_and_says_what_it_draws(mixed, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(mixed / "corpus"), "--out", str(out), *TINY, "--max-iters", "8",
                 "--extra-weight", "1:0"]) == 0
    assert load_checkpoint(out / "last.pt")["train_config"]["extra_weight"] == "1:0"
    assert ("mix: the extra sources' share of the training windows is 100% through warm-up (3 steps), then "
            "linearly to 0% at step 8 (--extra-weight 1:0)") in capsys.readouterr().err.splitlines()
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    train_help = capsys.readouterr().out
    assert "A:B" in train_help and "1:0@0.6" in train_help


@pytest.mark.parametrize("value", ["1:2", "1:", "abc", "1:0:1", "1:0@1", "1:0@", "-0.5:1", "nan:0"])
def test_a_malformed_schedule_is_one_line_naming_the_flag(value):
    with pytest.raises(InputError) as refused:
        TrainConfig(extra_weight=value).validate()
    message = str(refused.value)
    assert message.startswith(f"--extra-weight {value} is neither a share nor a schedule: ") and "\n" not in message
    assert "1:0" in message  # the fix: what a schedule looks like


def test_a_schedule_on_a_corpus_without_extras_is_refused_as_a_weight_is(prepared):
    corpus = load_corpus(prepared)
    for value in ("1:0", "0:0", "0:1@0.5"):
        with pytest.raises(InputError, match=f"--extra-weight {value}: .* has no extra sources to draw from"):
            corpus.mix(value)
    assert corpus.mix(0.0) == Mix() and Share(0.3, 0.3).at(0.77) == 0.3
