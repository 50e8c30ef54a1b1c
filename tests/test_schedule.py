"""The schedule always finishes: step-bound runs follow the step, time-bound ones anneal by the clock;
early stopping waits for half the budget; a time budget becomes steps; `--preset auto` follows the
measured compute."""

import csv
import math
import os
import re
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from conftest import REPO
from janelm.checkpoint import load_checkpoint
from janelm.config import ModelConfig, TrainConfig
from janelm.presets import DEFAULT_BUDGET, preset_configs
from janelm.data import load_corpus
from janelm.schedule import (EARLY_END_SHARE, PaceMeter, budget_used, cosine_start, fewest_steps_holding_to,
                             learning_rate, patience_counts, schedule_progress, step_progress, update_time_bound)
from janelm.recipe import MAX_MEMBERS, STRETCH_LIMIT
from janelm.trainer import RunState, Trainer

TINY_MODEL = ModelConfig(context=32, n_block=1, n_embed=32, n_head=2)


class FakeClock:
    """Seconds that move only when a training step says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run_with_clock(trainer: Trainer, clock: FakeClock, seconds_per_step: float) -> list[float]:
    """Train to the end, each step taking `seconds_per_step` on the fake clock; the lr of every step."""
    lrs = []
    real_step = trainer.train_step

    def step() -> float:
        loss = real_step()
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        clock.now += seconds_per_step
        return loss

    trainer.train_step = step
    trainer.run()
    return lrs


def make_trainer(prepared, out, cfg: TrainConfig, clock: FakeClock, resume=None) -> Trainer:
    return Trainer(TINY_MODEL, cfg, load_corpus(prepared), out, progress=False, clock=clock, resume=resume)


CFG = TrainConfig(batch_size=2, lr=1e-3, min_lr_ratio=0.1, warmup_iters=5, max_iters=60, max_time=30.0,
                  eval_interval=10, save_interval=10, eval_batches=1, dtype="float32")


def test_learning_rate_warms_up_then_follows_the_cosine():
    cfg = TrainConfig(lr=1.0, min_lr_ratio=0.1, warmup_iters=10, max_iters=110)
    assert learning_rate(cfg, 0, 0.0) == pytest.approx(0.1)
    assert learning_rate(cfg, 9, 0.0) == pytest.approx(1.0)
    assert learning_rate(cfg, 60, step_progress(cfg, 60)) == pytest.approx(0.55)
    assert learning_rate(cfg, 110, step_progress(cfg, 110)) == pytest.approx(0.1)
    timed = replace(cfg, max_iters=0, max_time=100)  # not planned into steps yet: the peak rate
    assert learning_rate(timed, 50, schedule_progress(timed, RunState(step=50, elapsed=50.0))) == pytest.approx(1.0)


def test_a_hold_keeps_the_peak_rate_for_its_share_of_the_steps_after_warm_up():
    cfg = TrainConfig(lr=1.0, min_lr_ratio=0.1, warmup_iters=10, max_iters=110, lr_hold=0.2)
    assert cosine_start(cfg) == 30
    lrs = [learning_rate(cfg, i, step_progress(cfg, i)) for i in range(111)]
    assert lrs[9:31] == [pytest.approx(1.0)] * 22  # the end of warm-up, the hold, the cosine's first step
    assert lrs[70] == pytest.approx(0.55) and lrs[110] == pytest.approx(0.1)
    assert all(b < a for a, b in zip(lrs[30:], lrs[31:]))
    # The fewest steps a plan made at a step of the hold may choose: the hold reaches that step.
    for step in range(11, 200):
        n = fewest_steps_holding_to(cfg, step)
        assert cosine_start(replace(cfg, max_iters=n)) >= step > cosine_start(replace(cfg, max_iters=n - 1))


def test_a_run_bound_by_steps_follows_the_step_alone(tmp_path, prepared):
    """0.1 s a step: 60 steps fit in 30 s, so the lr is the step's, whatever the clock says."""
    clock = FakeClock()
    trainer = make_trainer(prepared, tmp_path / "a", CFG, clock)
    lrs = run_with_clock(trainer, clock, 0.1)
    assert trainer.state.step == 60 and trainer.state.time_bound_progress < 0
    assert lrs == [learning_rate(CFG, i, step_progress(CFG, i)) for i in range(60)]
    # Another pace that also fits the budget gives bitwise the same run.
    clock_b = FakeClock()
    other = make_trainer(prepared, tmp_path / "b", CFG, clock_b)
    assert run_with_clock(other, clock_b, 0.45) == lrs
    for name, w in trainer.model.state_dict().items():
        assert torch.equal(w, other.model.state_dict()[name]), name


def test_a_run_bound_by_time_still_anneals_to_its_floor(tmp_path, prepared):
    """1 s a step against 30 s for 60 steps: the time limit comes first, and the lr still reaches its
    floor as it does, falling all the way (no jump back up, no cut-off half-way down the cosine)."""
    clock = FakeClock()
    trainer = make_trainer(prepared, tmp_path, CFG, clock)
    lrs = run_with_clock(trainer, clock, 1.0)
    assert trainer.state.step == 30 and trainer.state.time_bound_progress >= 0
    floor = CFG.lr * CFG.min_lr_ratio
    after_warmup = lrs[CFG.warmup_iters:]
    assert all(b <= a + 1e-15 for a, b in zip(after_warmup, after_warmup[1:]))
    assert lrs[-1] < 1.5 * floor
    with open(tmp_path / "metrics.csv", newline="") as f:
        last_logged = float(list(csv.DictReader(f))[-1]["lr"])
    assert last_logged < 1.5 * floor
    # Bound by steps, the same step would still have been at over half the peak rate.
    assert learning_rate(CFG, 29, step_progress(CFG, 29)) > 0.5 * CFG.lr


def test_a_time_bound_run_ends_with_its_last_checkpoints_inside_its_budget(tmp_path, prepared, monkeypatch):
    """Writing a checkpoint takes 1.5 s here: the steps stop where the last evaluation and the last
    best.pt and last.pt still end inside --max-time (they ran past it by their writes before)."""
    import janelm.trainer

    clock, real_save = FakeClock(), janelm.trainer.save_checkpoint

    def slow_save(path, payload):
        real_save(path, payload)
        clock.now += 1.5

    monkeypatch.setattr(janelm.trainer, "save_checkpoint", slow_save)
    cfg = replace(CFG, max_iters=0, max_time=30.0)
    trainer = make_trainer(prepared, tmp_path, cfg, clock)
    began = clock.now
    run_with_clock(trainer, clock, 0.25)
    assert trainer.save_s == 1.5
    assert 0.9 * cfg.max_time <= clock.now - began <= cfg.max_time


def test_a_resumed_time_bound_run_continues_the_same_schedule(tmp_path, prepared):
    clock = FakeClock()
    straight = run_with_clock(make_trainer(prepared, tmp_path / "straight", CFG, clock), clock, 1.0)

    clock = FakeClock()
    first = make_trainer(prepared, tmp_path / "broken", replace(CFG, max_iters=60), clock)
    real_done = first._done
    first._done = lambda: real_done() or first.state.step >= 20  # stopped at step 20, as by Ctrl-C
    head = run_with_clock(first, clock, 1.0)
    ckpt = load_checkpoint(tmp_path / "broken" / "last.pt")
    assert ckpt["state"]["step"] == 20 and ckpt["state"]["time_bound_progress"] >= 0
    clock.now += 500  # time between the runs does not count
    tail = run_with_clock(make_trainer(prepared, tmp_path / "broken", CFG, clock, resume=ckpt), clock, 1.0)
    assert head + tail == pytest.approx(straight, rel=1e-12)


def pace_of(steps: int, seconds: float, eval_s: float = math.inf) -> PaceMeter:
    pace = PaceMeter()
    for _ in range(steps):
        pace.add_step(seconds / steps)
    pace.add_eval(eval_s)
    return pace


def test_time_bound_projection_waits_for_a_measured_pace():
    state = RunState(step=5, elapsed=50.0)
    assert not update_time_bound(CFG, state, pace_of(5, 50.0))  # too few steps to judge
    state = RunState(step=20, elapsed=8.0)
    assert not update_time_bound(CFG, state, pace_of(20, 8.0))  # 60 steps in 24 s: fits
    # Start-up and compiling came before (8 s of 12): they do not come again, and the steps fit.
    state = RunState(step=20, elapsed=12.0)
    assert not update_time_bound(CFG, state, pace_of(19, 3.8))
    # Evaluations do come again: 0.4 s a step and 1 s an evaluation every 10 steps do not fit.
    assert update_time_bound(CFG, state, pace_of(19, 7.6, eval_s=1.0))  # 12 + 40 × 0.5 s
    assert state.time_bound_progress == pytest.approx(step_progress(CFG, 20))
    assert schedule_progress(CFG, state) == pytest.approx(step_progress(CFG, 20))  # continuous at the switch
    state.elapsed = CFG.max_time
    assert schedule_progress(CFG, state) == pytest.approx(1.0)


def test_early_stopping_waits_for_half_the_budget(tmp_path, prepared):
    """A val loss that never improves stops the run only once half the budget is spent."""
    cfg = replace(CFG, max_time=0.0, eval_interval=2, patience=2)
    trainer = Trainer(TINY_MODEL, cfg, load_corpus(prepared), tmp_path, progress=False)
    evals = iter(range(1000))
    trainer.evaluate = lambda: {"train": 1.0, "val": 1.0 + next(evals)}
    summary = trainer.run()
    assert summary["stop"] == "early stop"
    assert 30 <= summary["step"] <= 34


def test_the_seed_preset_is_not_stopped_early_in_the_first_half():
    _, cfg = preset_configs("seed")
    assert cfg.patience > 0
    assert not patience_counts(cfg, RunState(step=cfg.max_iters // 2 - 1))
    assert patience_counts(cfg, RunState(step=cfg.max_iters // 2))
    timed = replace(cfg, max_iters=0, max_time=150.0)  # `--preset seed --max-time 150`
    assert not patience_counts(timed, RunState(step=5000, elapsed=44.0))
    assert budget_used(timed, RunState(step=5000, elapsed=75.0)) == pytest.approx(0.5)


# --- --preset auto ---------------------------------------------------------------------------------


@pytest.mark.parametrize("flags, env, native", [
    ({"avx2", "fma"}, {}, False),
    ({"avx512f", "avx512_bf16"}, {}, True),
    ({"avx512f", "amx_bf16"}, {}, True),
    ({"avx512f", "avx512_bf16"}, {"ATEN_CPU_CAPABILITY": "avx2"}, False),
    ({"avx512f", "avx512_bf16"}, {"ATEN_CPU_CAPABILITY": "avx512"}, True),
    ({"avx512f", "avx512_bf16"}, {"ONEDNN_MAX_CPU_ISA": "AVX2"}, False),
    ({"avx512f", "avx512_bf16"}, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}, True),
])
def test_native_bf16_follows_the_flags_and_the_isa_caps(flags, env, native):
    from janelm.device import cpu_has_native_bf16

    assert cpu_has_native_bf16(frozenset(flags), env) is native


@pytest.mark.parametrize("flags, env, amx", [
    ({"avx512f", "avx512_bf16"}, {}, False),
    ({"avx512f", "avx512_bf16", "amx_bf16"}, {}, True),
    ({"avx512f", "avx512_bf16", "amx_bf16"}, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, False),
    ({"avx512f", "avx512_bf16", "amx_bf16"}, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}, True),
    ({"avx512f", "avx512_bf16", "amx_bf16"}, {"ATEN_CPU_CAPABILITY": "avx2"}, False),
])
def test_amx_follows_the_flags_and_onednns_cap(flags, env, amx):
    from janelm.device import cpu_has_amx

    assert cpu_has_amx(frozenset(flags), env) is amx


def test_isa_caps_agree_with_pytorchs_own_reading():
    """Under ATEN_CPU_CAPABILITY=avx2 PyTorch runs its AVX2 kernels, and JaneLM's class follows."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "PYTHONPATH": str(REPO)}
    code = ("import torch; from janelm.device import cpu_has_native_bf16, describe_machine, pick_dtype; "
            "d = torch.device('cpu'); print(torch.backends.cpu.get_cpu_capability(), cpu_has_native_bf16(), "
            "describe_machine(d, pick_dtype('auto', d)))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split()[:2] == ["AVX2", "False"]
    assert out.strip().endswith("float32 (AVX2)")


# --- a time budget becomes steps -----------------------------------------------------------------


def run_planned(trainer: Trainer, clock: FakeClock, seconds_per_step, seconds_per_eval: float) -> list[float]:
    """run_with_clock, with evaluations that take time too; `seconds_per_step(step)` may vary."""
    real_evaluate = trainer.evaluate

    def evaluate():
        clock.now += seconds_per_eval
        return real_evaluate()

    trainer.evaluate = evaluate
    lrs = []
    real_step = trainer.train_step

    def step() -> float:
        loss = real_step()
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        clock.now += seconds_per_step(trainer.state.step)
        return loss

    trainer.train_step = step
    trainer.run()
    return lrs


PLANNED = replace(CFG, max_iters=0, max_time=60.0, warmup_iters=10)
HELD = replace(PLANNED, lr_hold=0.2)
SPEEDS = {"steady": lambda step: 0.1, "slows by a third half-way": lambda step: 0.1 if step < 250 else 0.133,
          "speeds up after warm-up": lambda step: 0.1 if step < 10 else 0.095,
          "a fifth faster half-way": lambda step: 0.1 if step < 250 else 0.08,
          "a third faster after warm-up": lambda step: 0.1 if step < 10 else 0.067,
          "twice as slow after the plan, then a third faster": lambda step: 0.1 if step < 10 else 0.2 if step < 100 else 0.067,
          "a third slower after warm-up": lambda step: 0.1 if step < 10 else 0.133}


@pytest.mark.parametrize("cfg, pace", [(PLANNED, "steady"), (PLANNED, "slows by a third half-way"),
                                       (PLANNED, "speeds up after warm-up"), (HELD, "steady"),
                                       (HELD, "slows by a third half-way"), (HELD, "a third faster after warm-up"),
                                       (HELD, "a third slower after warm-up"), (PLANNED, "a fifth faster half-way"),
                                       (HELD, "a fifth faster half-way")])
def test_a_time_budget_ends_within_90_to_100_percent_of_it_annealed(tmp_path, prepared, cfg, pace):
    """Steps of 0.1 s and evaluations of 0.5 s: the plan at the end of warm-up fills the budget, and
    the rate reaches its floor at the end. When the machine slows down later, the time limit
    finishes the schedule on the clock; when the warm-up was a little slower than the rest, the run
    ends early but within the 90% the plan leaves for evaluations and noise. With a hold, the plan
    made again at its end follows a pace a third off either way. When the machine speeds up after
    the last plan, the rest of the schedule follows the clock, with more steps."""
    clock = FakeClock()
    trainer = make_trainer(prepared, tmp_path, cfg, clock)
    lrs = run_planned(trainer, clock, SPEEDS[pace], seconds_per_eval=0.5)
    assert 0.9 * PLANNED.max_time <= trainer.state.elapsed <= PLANNED.max_time + 0.2
    assert lrs[-1] < 1.05 * PLANNED.lr * PLANNED.min_lr_ratio
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["train_config"]["max_iters"] > 400  # planned, recorded
    assert ckpt["train_config"]["max_time"] == PLANNED.max_time


def test_a_budget_begun_before_the_run_counts_that_time(tmp_path, prepared):
    """`started` (janelm train's start, before the corpus and auto's probe): the seconds before
    run() come out of the budget, and the plan fills what is left. Neither they nor a first step
    that compiles (10 s) count as the pace of the steps after the plan: the run stays bound by its
    steps, and replayable (it once became time-bound right after every real plan)."""
    clock = FakeClock()
    started = clock()
    clock.now += 20.0  # the command's start-up, on the budget's clock
    trainer = Trainer(TINY_MODEL, PLANNED, load_corpus(prepared), tmp_path, progress=False, clock=clock, started=started)
    lrs = run_planned(trainer, clock, lambda step: 10.0 if step == 0 else 0.1, seconds_per_eval=0.5)
    assert 0.9 * PLANNED.max_time <= trainer.state.elapsed <= PLANNED.max_time + 0.2
    assert trainer.state.step * 0.1 <= PLANNED.max_time - 30.0  # the steps had the 30 s left, not 60
    assert lrs[-1] < 1.05 * PLANNED.lr * PLANNED.min_lr_ratio
    assert trainer.state.time_bound_progress < 0 and trainer.state.step == trainer.cfg.max_iters


@pytest.mark.parametrize("cfg, pace", [(PLANNED, "steady"), (HELD, "a third faster after warm-up")])
def test_max_iters_replays_a_planned_run_bit_for_bit(tmp_path, prepared, capsys, cfg, pace):
    """With a hold, the second plan (a pace a third faster after warm-up) sets the steps replayed.
    (Without one, such a pace makes the run follow the clock instead: the test above.)"""
    clock = FakeClock()
    planned = Trainer(TINY_MODEL, replace(cfg, max_time=8.0), load_corpus(prepared), tmp_path / "a",
                      progress=True, clock=clock)
    run_planned(planned, clock, SPEEDS[pace], seconds_per_eval=0.05)
    steps = load_checkpoint(tmp_path / "a" / "last.pt")["train_config"]["max_iters"]
    plans = [line for line in capsys.readouterr().err.splitlines() if "replays this run" in line]
    assert len(plans) == (2 if cfg.lr_hold else 1) and f"--max-iters {steps} replays this run)" in plans[-1]
    if cfg.lr_hold:
        first = int(plans[0].split("--max-iters ")[1].split()[0])
        assert steps > 1.2 * first  # the first plan's pace had the warm-up's slower steps
    # The replay: the same seed and steps, no time limit, a machine of another speed.
    clock = FakeClock()
    replay = make_trainer(prepared, tmp_path / "b", replace(cfg, max_iters=steps, max_time=0.0), clock)
    run_planned(replay, clock, lambda step: 0.37, seconds_per_eval=3.0)
    assert replay.state.step == planned.state.step == steps
    for name, w in planned.model.state_dict().items():
        assert torch.equal(w, replay.model.state_dict()[name]), name


def test_a_slow_patch_just_after_the_plan_leaves_the_run_bound_by_steps(tmp_path, prepared):
    """Eight steps 15% slower right after the plan (a busy moment): the projection goes on from the
    plan's own pace and allows 3% past the limit, so they do not turn the run over to the clock
    (such a patch once did, at step 74 of 1,204 on a 2-core Zen 3), and the run ends by its steps
    within the budget."""
    clock = FakeClock()
    trainer = make_trainer(prepared, tmp_path, PLANNED, clock)
    run_planned(trainer, clock, lambda step: 0.115 if 10 <= step < 18 else 0.1, seconds_per_eval=0.5)
    assert trainer.state.time_bound_progress < 0 and trainer.state.step == trainer.cfg.max_iters
    assert 0.9 * PLANNED.max_time <= trainer.state.elapsed <= PLANNED.max_time


def test_a_first_plan_before_a_hold_leaves_room_for_a_slower_run(tmp_path, prepared, capsys):
    """Steps 6% slower after warm-up (what the Zen 4's no-flags runs showed): the first plan fills
    FIRST_PLAN_SHARE of the time, the second at the hold's end adds what the slower pace still fits,
    and the run ends by its steps (so `--max-iters` replays it) within the budget, annealed. With a
    full first plan the same run went to the clock."""
    from janelm.recipe import FIRST_PLAN_SHARE

    clock = FakeClock()
    trainer = Trainer(TINY_MODEL, HELD, load_corpus(prepared), tmp_path, progress=True, clock=clock)
    lrs = run_planned(trainer, clock, lambda step: 0.1 if step < 10 else 0.106, seconds_per_eval=0.5)
    plans = [line for line in capsys.readouterr().err.splitlines() if "replays this run" in line]
    assert len(plans) == 2 and f"fill {FIRST_PLAN_SHARE:.0%} of --max-time" in plans[0]
    first = int(plans[0].split("--max-iters ")[1].split()[0])
    assert trainer.state.time_bound_progress < 0 and trainer.state.step == trainer.cfg.max_iters > first
    assert 0.9 * HELD.max_time <= trainer.state.elapsed <= HELD.max_time
    assert lrs[-1] == pytest.approx(HELD.lr * HELD.min_lr_ratio, rel=1e-3)


def test_a_run_resumed_within_its_hold_still_plans_again_at_its_end(tmp_path, prepared, capsys):
    """The second plan's step is in the checkpoint: a run stopped in its hold plans at its end after --resume."""
    clock = FakeClock()
    cfg = replace(HELD, max_time=8.0)
    first = Trainer(TINY_MODEL, cfg, load_corpus(prepared), tmp_path, progress=True, clock=clock)
    real_done = first._done
    first._done = lambda: real_done() or first.state.step >= 15  # stopped in the hold, as by Ctrl-C
    run_planned(first, clock, SPEEDS["a third faster after warm-up"], seconds_per_eval=0.2)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    replan = ckpt["state"]["replan_step"]
    assert 15 < replan == cosine_start(TrainConfig.from_dict(ckpt["train_config"]))
    resumed = Trainer(TINY_MODEL, TrainConfig.from_dict(ckpt["train_config"]), load_corpus(prepared), tmp_path,
                      progress=True, clock=clock, resume=ckpt)
    lrs = run_planned(resumed, clock, SPEEDS["a third faster after warm-up"], seconds_per_eval=0.2)
    plans = [line for line in capsys.readouterr().err.splitlines() if "replays this run" in line]
    assert len(plans) == 2 and f"step {replan}: " in plans[1] and "since the first plan" in plans[1]
    assert resumed.cfg.max_iters > ckpt["train_config"]["max_iters"]  # a third faster: more steps
    assert lrs[-1] < 1.05 * cfg.lr * cfg.min_lr_ratio


def test_a_planned_run_stops_at_max_passes_over_the_text(tmp_path, prepared, capsys):
    """A machine fast enough for more passes than --max-passes stops there, annealed, and says so."""
    clock = FakeClock()
    corpus = load_corpus(prepared)
    tokens_per_step = PLANNED.batch_size * TINY_MODEL.context
    passes = 60 * tokens_per_step / len(corpus.train)  # 60 steps' worth, where the budget fits ~500
    trainer = Trainer(TINY_MODEL, replace(PLANNED, max_passes=passes), corpus, tmp_path, progress=True, clock=clock)
    lrs = run_planned(trainer, clock, lambda step: 0.1, seconds_per_eval=0.5)
    assert trainer.state.step == math.ceil(passes * len(corpus.train) / tokens_per_step) == 60
    assert trainer.state.elapsed < 0.2 * PLANNED.max_time  # finished early: the rest would only overfit
    assert lrs[-1] < 1.05 * PLANNED.lr * PLANNED.min_lr_ratio  # the cosine followed the capped steps
    assert "(--max-passes) end at 60 (--max-iters 60 replays this run)" in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "last.pt")["train_config"]["max_iters"] == 60


@pytest.mark.parametrize("cfg, pace, quicker_from", [
    (PLANNED, "a fifth faster half-way", 250),
    # A busy neighbour from the first plan to step 100 (the clock takes the schedule at once, and the
    # hold's plan does not come), then the machine a third quicker than planned: an AMX Xeon's run so.
    (HELD, "twice as slow after the plan, then a third faster", 100)])
def test_a_machine_that_turns_quicker_after_the_plan_follows_the_clock_with_more_steps(tmp_path, prepared, capsys,
                                                                                      cfg, pace, quicker_from):
    """Steps quicker than planned from `quicker_from`: the run's steps would end well before the
    budget, so at an evaluation the rest of the cosine follows the clock from where it is: the run
    takes more steps than planned, ends by the clock within the budget, annealed and falling all the
    way, and says that `--max-iters` no longer replays it."""
    clock = FakeClock()
    trainer = Trainer(TINY_MODEL, cfg, load_corpus(prepared), tmp_path, progress=True, clock=clock)
    lrs = run_planned(trainer, clock, SPEEDS[pace], seconds_per_eval=0.5)
    err = capsys.readouterr().err
    planned = int(err.split("(--max-iters ")[1].split()[0])
    switch = re.search(r"steps end at (\d+)% of --max-time 60 s; the rest of the schedule now follows the clock", err)
    assert switch and int(switch[1]) < 100 * EARLY_END_SHARE
    s = trainer.state
    assert s.time_bound_progress > 0 and s.time_bound_elapsed >= quicker_from * 0.1 and s.stretch_limit == 0
    assert planned < s.step < trainer.cfg.max_iters == STRETCH_LIMIT * planned  # no --max-passes here
    assert 0.97 * PLANNED.max_time <= s.elapsed <= PLANNED.max_time + 0.2
    after_warmup = lrs[PLANNED.warmup_iters:]
    assert all(b <= a + 1e-15 for a, b in zip(after_warmup, after_warmup[1:]))
    assert lrs[-1] < 1.05 * PLANNED.lr * PLANNED.min_lr_ratio
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["state"]["time_bound_progress"] == s.time_bound_progress
    assert ckpt["train_config"]["max_iters"] == trainer.cfg.max_iters


def test_a_quicker_machine_stops_at_its_passes_and_a_users_steps_never_grow(tmp_path, prepared):
    """Twice as quick after the plan: a cap on passes a little past the planned steps ends the run
    there, by its steps and annealed; a run given --max-iters keeps them, ending early."""
    clock = FakeClock()
    corpus = load_corpus(prepared)
    tokens_per_step = PLANNED.batch_size * TINY_MODEL.context
    passes = 600 * tokens_per_step / len(corpus.train)  # 600 steps' worth, where the plan fits ~540
    trainer = Trainer(TINY_MODEL, replace(PLANNED, max_passes=passes), corpus, tmp_path / "cap", progress=False,
                      clock=clock)
    lrs = run_planned(trainer, clock, lambda step: 0.1 if step < 100 else 0.05, seconds_per_eval=0.5)
    assert trainer.state.time_bound_progress > 0 and trainer.state.step == trainer.cfg.max_iters == 600
    assert lrs[-1] == pytest.approx(PLANNED.lr * PLANNED.min_lr_ratio, rel=1e-3)

    clock = FakeClock()
    fixed = make_trainer(prepared, tmp_path / "fixed", replace(PLANNED, max_iters=300), clock)
    run_planned(fixed, clock, lambda step: 0.1 if step < 100 else 0.05, seconds_per_eval=0.5)
    assert fixed.state.step == fixed.cfg.max_iters == 300 and fixed.state.time_bound_progress < 0


def test_a_budget_too_short_for_the_warm_up_still_trains_the_warm_up(tmp_path, prepared):
    clock = FakeClock()
    trainer = make_trainer(prepared, tmp_path, replace(PLANNED, max_time=0.5), clock)
    run_planned(trainer, clock, lambda step: 0.1, seconds_per_eval=0.1)
    assert trainer.state.step == PLANNED.warmup_iters


# --- --preset auto: the recipe follows the measured compute --------------------------------------


AUSTEN_TRAIN_TOKENS = 889_138  # the six works' training tokens (BPE 2,048)


def fake_pace(tokens_per_s: float):
    """measure_pace as on a machine where every recipe runs at `tokens_per_s` (batch × context per step)."""
    from janelm.recipe import Pace

    def measure(model_cfg, train_cfg, vocab_size, seconds=0.0):
        tokens = train_cfg.batch_size * train_cfg.grad_accum * model_cfg.context
        return Pace(tokens / tokens_per_s, 2.0 * tokens / tokens_per_s, tokens)

    return measure


@pytest.mark.parametrize("machine, tokens_per_s, chosen", [("one slow core", 900.0, "cpu-2x256"),
                                                           ("a 2-core laptop", 2_500.0, "cpu-2x256"),
                                                           ("a 2-core Zen 4", 5_500.0, "cpu-3x256"),
                                                           ("a 4-core Zen 4", 9_500.0, "cpu-4x256"),
                                                           ("a 2-core AMX Xeon", 13_100.0, "cpu-3x256-x2"),
                                                           ("a 4-core AMX Xeon", 25_000.0, "cpu-4x256-x3"),
                                                           ("an 8-core AMX Xeon", 40_000.0, "cpu-4x256-x3")])
def test_auto_chooses_from_the_table_by_measured_compute(monkeypatch, capsys, machine, tokens_per_s, chosen):
    import janelm.recipe
    from janelm.cli import build_parser
    from janelm.commands.train import choose_auto, configs_from_args
    from janelm.presets import COMPUTE_TABLE, DEFAULT_BUDGET

    monkeypatch.setattr(janelm.recipe, "measure_pace", fake_pace(tokens_per_s))
    args = build_parser().parse_args(["train", "--device", "cpu"])
    choose_auto(args, vocab_size=2048, train_tokens=AUSTEN_TRAIN_TOKENS)
    compute = DEFAULT_BUDGET["cpu"] * tokens_per_s
    expected = [preset for threshold, preset in COMPUTE_TABLE if compute >= threshold][-1]
    assert args.preset == expected == chosen
    line = capsys.readouterr().err.splitlines()[0]
    assert line.startswith("auto: ") and f"≈ {tokens_per_s:,.0f} tokens/s at " in line and f"preset {expected}:" in line
    model_cfg, train_cfg = configs_from_args(args)
    assert (train_cfg.max_iters, train_cfg.max_time) == (0, DEFAULT_BUDGET["cpu"])  # planned by the trainer
    assert model_cfg == preset_configs(expected)[0]


@pytest.mark.parametrize("train_tokens, flags, chosen, shape", [
    (AUSTEN_TRAIN_TOKENS, [], "cpu-3x256-x2", "2 models of 3 blocks × 256, averaged, batch 16"),
    (300_000, [], "cpu-4x256-x3", "3 models of 4 blocks × 256, averaged, batch 24"),
    (300_000, ["--n-block", "3"], "cpu-4x256-x3", "3 models of 3 blocks × 256, averaged, batch 24"),
    (100_000, [], "cpu-4x256-x3", f"{MAX_MEMBERS} models of 4 blocks × 256, averaged, batch {8 * MAX_MEMBERS}"),
    (300_000, ["--members", "2", "--batch-size", "16"], "cpu-4x256-x3", "2 models of 4 blocks × 256, averaged, batch 16"),
    (300_000, ["--max-passes", "0"], "cpu-3x256-x2", "2 models of 3 blocks × 256, averaged, batch 16"),
    (300_000, ["--batch-size", "16"], "cpu-3x256-x2", "2 models of 3 blocks × 256, averaged, batch 16"),
    (300_000, ["--members", "3"], "cpu-3x256-x2", "3 models of 3 blocks × 256, averaged, batch 24")])
def test_members_that_would_end_the_run_early_give_way_to_more_members(monkeypatch, capsys, train_tokens, flags, chosen, shape):
    """20,000 tokens/s for ten minutes is 12M probe tokens: cpu-3x256-x2's row. Over Austen its
    members' 12.5 passes take longer than the budget; over a third of the text they would end the
    run at ~65% of it, so auto takes the next row, three members a block deeper, whose passes fill
    it (with the depth given by hand, three of the same members; with two members by hand, two
    deeper ones); over a tenth, as many more of those as MAX_MEMBERS allows. No passes, or a batch
    the next row's members cannot share, given by hand, keep the row (and three members by hand
    fill the time themselves)."""
    import janelm.recipe
    from janelm.cli import build_parser
    from janelm.commands.train import choose_auto

    monkeypatch.setattr(janelm.recipe, "measure_pace", fake_pace(20_000.0))
    args = build_parser().parse_args(["train", "--device", "cpu", *flags])
    choose_auto(args, vocab_size=2048, train_tokens=train_tokens)
    assert args.preset == chosen
    line = capsys.readouterr().err.splitlines()[0]
    assert "≈ 12.0M tokens → preset " in line
    climbed = chosen != "cpu-3x256-x2"
    grown = f" --members {MAX_MEMBERS} --batch-size {8 * MAX_MEMBERS}" if train_tokens == 100_000 else ""
    assert (f"preset {chosen}{grown} (cpu-3x256-x2's members would reach their 12.5 passes at " in line) == climbed
    assert ("12.5 passes at 6" in line) == (train_tokens == 300_000 and climbed)
    assert f"): {shape}, " in line or not climbed and f"preset {chosen}: {shape}, " in line, line
    if train_tokens == 100_000:  # over a tenth of Austen three members end it early as well: as
        # many more of them as MAX_MEMBERS allows (their passes still end it early)
        assert "of the budget, cpu-4x256-x3's at " in line and args.members == MAX_MEMBERS


@pytest.mark.parametrize("flags, members", [([], 4), (["--members", "3", "--batch-size", "24"], 3), (["--batch-size", "24"], 3),
                                            (["--max-passes", "20"], 3), (["--members", "3"], 3)])
def test_past_the_tables_last_members_a_faster_machine_trains_more_of_them(monkeypatch, capsys, flags, members):
    """75,000 tokens/s (a 16-core AMX Xeon) for ten minutes is 45M probe tokens: the last row of
    members, cpu-4x256-x3, whose 12.5 passes over Austen would end the run at ~77% of the budget. So
    auto adds a fourth member, and the four fill it; the first line and a replay name the flags.
    Members, a batch or passes given by hand keep the row as it is."""
    import janelm.recipe
    from janelm.cli import build_parser
    from janelm.commands.train import choose_auto, configs_from_args
    from janelm.recipe import Pace, plan_steps, planned_steps

    monkeypatch.setattr(janelm.recipe, "measure_pace", fake_pace(75_000.0))
    args = build_parser().parse_args(["train", "--device", "cpu", *flags])
    choose_auto(args, vocab_size=2048, train_tokens=AUSTEN_TRAIN_TOKENS)
    line = capsys.readouterr().err.splitlines()[0]
    model_cfg, train_cfg = configs_from_args(args)
    assert args.preset == "cpu-4x256-x3" and model_cfg.members == members and model_cfg.n_block == 4
    grew = members == 4
    assert ("preset cpu-4x256-x3 --members 4 --batch-size 32 (cpu-4x256-x3's members would reach their "
            "12.5 passes at 7" in line) == grew
    assert args.recipe == "--preset cpu-4x256-x3" + (" --members 4 --batch-size 32" if grew else "")
    tokens = train_cfg.batch_size * model_cfg.context
    pace = Pace(tokens / 75_000.0, 2 * tokens / 75_000.0, tokens)
    fill = plan_steps(DEFAULT_BUDGET["cpu"], pace)
    steps = planned_steps(train_cfg, 0, DEFAULT_BUDGET["cpu"], pace, AUSTEN_TRAIN_TOKENS, members=model_cfg.members)[0]
    assert (steps >= 0.9 * fill) == (grew or "--max-passes" in flags)


@pytest.mark.parametrize("tokens_per_s", [110_000.0, 150_000.0])
def test_a_cpu_past_the_gpu_rows_compute_grows_members_that_fill_its_budget(monkeypatch, capsys, tokens_per_s):
    """110,000 tokens/s (a 32-core AMX Xeon) for ten minutes is 66M probe tokens, past the gpu row's
    60M: that row, one 6 × 512 model measured on a GPU alone, would end a CPU's run at its 8 passes.
    A CPU keeps the last CPU row and grows its members until they fill the budget."""
    import janelm.recipe
    from janelm.cli import build_parser
    from janelm.commands.train import choose_auto, configs_from_args
    from janelm.recipe import Pace, plan_steps, planned_steps

    monkeypatch.setattr(janelm.recipe, "measure_pace", fake_pace(tokens_per_s))
    args = build_parser().parse_args(["train", "--device", "cpu"])
    choose_auto(args, vocab_size=2048, train_tokens=AUSTEN_TRAIN_TOKENS)
    model_cfg, train_cfg = configs_from_args(args)
    assert args.preset == "cpu-4x256-x3" and 4 < model_cfg.members <= MAX_MEMBERS
    assert train_cfg.batch_size == 8 * model_cfg.members
    tokens = train_cfg.batch_size * model_cfg.context
    pace = Pace(tokens / tokens_per_s, 2 * tokens / tokens_per_s, tokens)
    fill = plan_steps(DEFAULT_BUDGET["cpu"], pace)
    steps = planned_steps(train_cfg, 0, DEFAULT_BUDGET["cpu"], pace, AUSTEN_TRAIN_TOKENS, members=model_cfg.members)[0]
    assert steps >= 0.9 * fill
    assert f"preset cpu-4x256-x3 --members {model_cfg.members} " in capsys.readouterr().err


def test_the_probe_measures_its_own_shape_and_the_flags_apply_to_the_row_chosen(monkeypatch, capsys):
    """The table is indexed by the probe's own shape and batch: model flags and --batch-size do not
    change what it measures (dropout slows a CPU step), only the recipe chosen; precision does."""
    import janelm.recipe
    from janelm.cli import build_parser
    from janelm.commands.train import choose_auto, configs_from_args
    from janelm.presets import PROBE_PRESET

    measured = []
    pace = fake_pace(9_500.0)
    monkeypatch.setattr(janelm.recipe, "measure_pace", lambda m, t, *a, **k: measured.append((m, t)) or pace(m, t, *a, **k))
    args = build_parser().parse_args(["train", "--device", "cpu", "--dtype", "float32", "--dropout", "0.3",
                                      "--n-embed", "768", "--batch-size", "4"])
    choose_auto(args, vocab_size=2048, train_tokens=AUSTEN_TRAIN_TOKENS)
    probe_model, probe_train = measured[0]
    own_model, own_train = preset_configs(PROBE_PRESET)
    assert (probe_model.dropout, probe_model.n_embed, probe_model.n_block) == (own_model.dropout, own_model.n_embed, own_model.n_block)
    assert probe_train.batch_size == own_train.batch_size and probe_train.dtype == "float32"
    assert "dropout" not in capsys.readouterr().err.split("→")[0]  # the first line: what was measured
    model_cfg, train_cfg = configs_from_args(args)  # the row chosen, with the flags
    assert args.preset == "cpu-4x256" and (model_cfg.dropout, model_cfg.n_embed, train_cfg.batch_size) == (0.3, 768, 4)


def test_a_step_budget_evaluates_where_the_planned_run_did():
    """`--max-iters N` on a time-bound recipe evaluates, and so keeps best.pt, at the spacing the
    trainer's last plan of N steps gave the run it replays; given intervals and step-bound presets keep theirs."""
    from janelm.cli import build_parser
    from janelm.commands.train import configs_from_args
    from janelm.recipe import Pace, plan_run

    def train_cfg(*flags: str):
        return configs_from_args(build_parser().parse_args(["train", "--device", "cpu", *flags]))[1]

    preset = train_cfg("--preset", "cpu-3x256")
    planned, _, _ = plan_run(preset, 613, 420.0, Pace(0.158, 0.7, 2048), train_tokens=3_450_000, replan=True)
    replay = train_cfg("--preset", "cpu-3x256", "--max-iters", str(planned.max_iters))
    assert planned.max_iters > 2_000 and replay.max_time == 0.0
    assert (replay.max_iters, replay.eval_interval, replay.save_interval) == (
        planned.max_iters, planned.eval_interval, planned.save_interval) != (planned.max_iters, 100, 100)
    assert train_cfg("--preset", "cpu-3x256", "--max-iters", "3385", "--eval-interval", "50").eval_interval == 50
    assert train_cfg("--preset", "tiny", "--max-iters", "400").eval_interval == preset_configs("tiny")[1].eval_interval


@pytest.mark.parametrize("cuda", [False, True])
def test_more_compute_never_chooses_a_worse_recipe(cuda):
    """On a GPU up the whole table; on a CPU up to its last CPU row (the rows measured on a GPU alone
    are not a CPU's: it grows that row's members instead, the next test)."""
    from janelm.presets import COMPUTE_TABLE, CUDA_ROWS, PRESETS
    from janelm.recipe import choose_preset

    rows = [preset for _, preset in COMPUTE_TABLE]
    chosen = [rows.index(choose_preset(10 ** (4 + k / 10), cuda=cuda)) for k in range(60)]  # 10k to 10G probe tokens
    last = rows[-1] if cuda else [row for row in rows if row not in CUDA_ROWS][-1]
    assert chosen == sorted(chosen) and chosen[0] == 0 and rows[chosen[-1]] == last
    assert (choose_preset(750e6, cuda=cuda) == "gpu") == cuda  # an H200's 360 s
    assert [t for t, _ in COMPUTE_TABLE] == sorted({t for t, _ in COMPUTE_TABLE})
    assert all(name in PRESETS for name in rows)


def test_every_row_stops_at_its_passes_so_a_faster_machine_cannot_overfit():
    """More compute buys more steps only up to the passes a row scored best at: the gpu row, with
    none, spent an H200's 360 s on 73 passes and kept a model 0.017 bits/char worse (presets.py)."""
    from janelm.presets import COMPUTE_TABLE
    from janelm.recipe import Pace, planned_steps

    for _, preset in COMPUTE_TABLE:
        model_cfg, train_cfg = preset_configs(preset)
        assert 0 < train_cfg.max_passes <= 14, preset
        fast = Pace(step_s=1e-3, eval_s=0.01, tokens_per_step=train_cfg.batch_size * 256)
        steps, plan = planned_steps(train_cfg, 0, train_cfg.max_time, fast, train_tokens=3_450_000,
                                    members=model_cfg.members)
        per_member = fast.tokens_per_step / model_cfg.members  # an ensemble's members read a share each
        assert steps == math.ceil(train_cfg.max_passes * 3_450_000 / per_member), preset
        assert "--max-passes" in plan


def test_the_time_budget_counts_what_train_does_before_the_run(tmp_path, prepared, monkeypatch):
    """--max-time is the command's wall time: loading the corpus and auto's measurements are spent
    from it before the first step, and what follows the last (compiling the decode step, the final
    evaluation, the exit) is kept out of the training's share."""
    import time

    import janelm.data
    import janelm.recipe
    import janelm.trainer
    from janelm.cli import build_parser
    from janelm.commands.train import FINAL_SECONDS, train
    from janelm.step_cache import compile_estimate_s

    class Started(Exception):
        pass

    class Recording:
        def __init__(self, model_cfg, train_cfg, *args, started: float, keep_at_end, **kwargs):
            raise Started(started, train_cfg, model_cfg, keep_at_end)

    def slow(seconds, function):
        return lambda *args, **kwargs: time.sleep(seconds) or function(*args, **kwargs)

    monkeypatch.setattr(janelm.data, "load_corpus", slow(0.5, janelm.data.load_corpus))
    monkeypatch.setattr(janelm.recipe, "measure_pace", slow(0.2, fake_pace(5_500.0)))
    args = build_parser().parse_args(["train", "--data", str(prepared), "--out", str(tmp_path / "run"),
                                      "--device", "cpu", "--max-time", "60", "--quiet"])
    monkeypatch.setattr(janelm.trainer, "Trainer", Recording)
    start = time.perf_counter()
    with pytest.raises(Started) as started:
        train(args)
    began, train_cfg, model_cfg, keep_at_end = started.value.args
    assert start <= began < start + 0.5  # the budget began before the corpus was loaded (0.5 s) and the probe ran
    # The CPU recipes compile the decode step at the end: its time, and the last seconds, come off
    # too, once the first training step has shown how fast this machine compiles.
    assert train_cfg.compile_decode and train_cfg.max_time == 60
    monkeypatch.setenv("JANELM_CACHE", str(tmp_path / "cache"))  # no compile time on record
    assert keep_at_end(0.0)[0] == pytest.approx(compile_estimate_s(model_cfg) + FINAL_SECONDS)
    assert keep_at_end(100.0)[0] == pytest.approx(1.3 * 100.0 + FINAL_SECONDS)  # a slow compiler: more


def test_the_first_step_sets_the_seconds_kept_for_the_end(tmp_path, prepared, capsys, monkeypatch):
    """A compiled first step of 30 s: `keep_at_end` hears it, and the plan fills what it leaves.
    The clock is fake, so the compiler itself is left out (the model is its own "compiled" form:
    test_trainer.py compiles for real)."""
    monkeypatch.setattr(torch, "compile", lambda model, **options: model)
    clock = FakeClock()
    heard = []

    def keep_at_end(first_step_s: float) -> tuple[float, str]:
        heard.append(first_step_s)
        return 12.0, "to finish"

    trainer = Trainer(TINY_MODEL, replace(PLANNED, compile=True), load_corpus(prepared), tmp_path, progress=True,
                      clock=clock, keep_at_end=keep_at_end)
    lrs = run_planned(trainer, clock, lambda step: 30.0 if step == 0 else 0.1, seconds_per_eval=0.5)
    assert heard == [pytest.approx(30.0)]
    assert "--max-time 60 s: 48 s of training, and about 12 s to finish" in capsys.readouterr().err
    assert 0.9 * 48 <= trainer.state.elapsed <= 48 + 0.2 and trainer.cfg.max_time == 48
    assert lrs[-1] < 1.05 * PLANNED.lr * PLANNED.min_lr_ratio


@pytest.mark.parametrize("planned, clock_from_s, says", [
    (3711, None, "--preset cpu-4x256-x3 --members 4 --batch-size 32 --max-iters 3711"),
    (0, 412.3, "followed the clock from 412 s"), (0, None, None)])
def test_the_summary_says_how_to_replay_a_run_or_why_it_cannot(capsys, monkeypatch, planned, clock_from_s, says):
    from janelm.commands.train import show_summary

    monkeypatch.setenv("COLUMNS", "200")  # one line a row: the phrases are not wrapped apart
    summary = {"stop": "time limit", "step": 4000, "tokens_seen": 10, "elapsed_s": 570.0, "tokens_per_s": 1.0,
               "best_val_loss": 3.5, "planned": planned, "clock_from_s": clock_from_s}
    show_summary(summary, {}, REPO / "checkpoints", "--preset cpu-4x256-x3 --members 4 --batch-size 32")
    err = " ".join(capsys.readouterr().err.split())
    assert ("replay it bit for bit" in err) == bool(planned)
    assert ("does not replay it" in err) == (clock_from_s is not None)
    if says:
        assert says in err


def test_torchrun_processes_take_the_recipe_auto_chose_with_the_members_it_added(monkeypatch, prepared, capsys):
    """`--nproc` measures once and passes the choice on as flags: every process trains the same
    recipe, the members `grow` added included (a tiny text: its passes end the run early)."""
    import subprocess

    import janelm.recipe
    from janelm.cli import build_parser
    from janelm.commands.train import launch_torchrun

    monkeypatch.setattr(janelm.recipe, "measure_pace", fake_pace(75_000.0))
    launched = []
    monkeypatch.setattr(subprocess, "call", lambda cmd: launched.append(cmd) or 0)
    argv = ["train", "--nproc", "2", "--device", "cpu", "--data", str(prepared)]
    args = build_parser().parse_args(argv)
    args.argv = argv
    assert launch_torchrun(args) == 0
    cmd = launched[0]
    at = cmd.index("train")
    assert cmd[at + 1 :] == ["--device", "cpu", "--data", str(prepared), "--preset", "cpu-4x256-x3", "--members",
                             str(MAX_MEMBERS), "--batch-size", str(8 * MAX_MEMBERS), "--max-time", "600.0"]
    assert f"preset cpu-4x256-x3 --members {MAX_MEMBERS} --batch-size {8 * MAX_MEMBERS} (" in capsys.readouterr().err
