"""The schedule always finishes: step-bound runs follow the step, time-bound ones anneal by the clock;
early stopping waits for half the budget; `--preset auto` picks the machine's preset."""

import argparse
import csv
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from conftest import REPO
from janelm.checkpoint import load_checkpoint
from janelm.config import ModelConfig, TrainConfig, preset_configs
from janelm.data import load_corpus
from janelm.schedule import (budget_used, learning_rate, patience_counts, schedule_progress, step_progress,
                             update_time_bound)
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
    timed = replace(cfg, max_iters=0, max_time=100)
    assert schedule_progress(timed, RunState(step=50, elapsed=50.0)) == pytest.approx(0.5)


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


def test_time_bound_projection_waits_for_a_measured_pace():
    state = RunState(step=5, elapsed=50.0)
    assert not update_time_bound(CFG, state, steps_timed=5, seconds=50.0)  # too few steps to judge
    state = RunState(step=20, elapsed=8.0)
    assert not update_time_bound(CFG, state, steps_timed=20, seconds=8.0)  # 60 steps in 24 s: fits
    state = RunState(step=20, elapsed=12.0)
    assert update_time_bound(CFG, state, steps_timed=20, seconds=12.0)  # 60 steps in 36 s: does not
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


@pytest.mark.parametrize("cuda, flags, device, preset", [
    (True, {"avx2"}, "auto", "gpu"),
    (True, {"avx512_bf16"}, "cpu", "cpu"),
    (False, {"avx512_bf16"}, "auto", "cpu"),
    (False, {"avx2"}, "auto", "cpu-fp32"),
    (True, {"avx2"}, "cpu", "cpu-fp32"),
])
def test_auto_picks_each_preset_on_faked_hardware(monkeypatch, capsys, cuda, flags, device, preset):
    import janelm.device
    from janelm.commands.train import configs_from_args

    monkeypatch.setattr(janelm.device, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    args = argparse.Namespace(preset="auto", device=None if device == "auto" else device, lr=None, max_time=None,
                              max_iters=None, init_from=None)
    model_cfg, train_cfg = configs_from_args(args)
    assert args.preset == preset
    assert (model_cfg, train_cfg) == preset_configs(preset) or device == "cpu"
    first_line = capsys.readouterr().err.splitlines()[0]
    assert first_line.startswith(f"preset {preset} (auto: ")


def test_isa_caps_agree_with_pytorchs_own_reading():
    """Under ATEN_CPU_CAPABILITY=avx2 PyTorch runs its AVX2 kernels, and JaneLM's class follows."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "PYTHONPATH": str(REPO)}
    code = ("import torch; from janelm.device import cpu_has_native_bf16, auto_preset; "
            "print(torch.backends.cpu.get_cpu_capability(), cpu_has_native_bf16(), auto_preset(False)[0])")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["AVX2", "False", "cpu-fp32"]
