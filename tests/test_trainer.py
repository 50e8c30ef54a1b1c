"""Training you can trust: exact resume, signals, non-finite losses, schedule, sampler."""

import csv
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import REPO, TINY, janelm
from janelm.checkpoint import load_checkpoint
from janelm.config import ModelConfig, TrainConfig
from janelm.data import BatchSampler, Mix, load_corpus
from janelm.errors import JaneLMError
from janelm.trainer import Trainer

RESUMABLE = [*TINY, "--max-iters", "120", "--eval-interval", "10", "--save-interval", "25", "--dropout", "0.1",
             "--seed", "3"]


def metrics_rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "elapsed_s"} for row in csv.DictReader(f)]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs"


def interrupt_at_random_step(args: list[str], run: Path, seed: int) -> subprocess.CompletedProcess:
    """Start training, wait until it has logged a random number of evaluations (1 to 8, so the
    signal lands inside the loop however fast the machine steps), SIGINT it after a random delay."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "janelm", "train", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    draw = random.Random(seed)
    rows = draw.randint(1, 8)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (run / "metrics.csv").exists() and len((run / "metrics.csv").read_text().splitlines()) > rows:
            break
        time.sleep(0.005)
    time.sleep(draw.uniform(0.0, 0.02))
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("average", [[], ["--average", "0.95"]], ids=["weights", "averaged"])
def test_resume_after_sigint_is_bitwise_identical(tmp_path, prepared, average):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    janelm("train", "--data", str(prepared), "--out", str(straight), *RESUMABLE, *average)

    first = interrupt_at_random_step(["--data", str(prepared), "--out", str(broken), *RESUMABLE, *average], broken,
                                     seed=os.getpid())
    if first.returncode == 0:
        pytest.skip("training finished before the signal arrived")
    assert first.returncode == 130, first.stderr
    assert "--resume" in first.stderr and "Traceback" not in first.stderr
    stopped_at = load_checkpoint(broken / "last.pt")["state"]["step"]
    assert 0 < stopped_at < 120

    janelm("train", "--data", str(prepared), "--out", str(broken), "--resume", "--quiet")
    assert load_checkpoint(broken / "last.pt")["state"]["step"] == 120
    assert_same_weights(straight / "last.pt", broken / "last.pt")
    assert_same_weights(straight / "best.pt", broken / "best.pt")
    assert metrics_rows(straight) == metrics_rows(broken)
    if average:
        for a, b in zip(*(load_checkpoint(run / "last.pt")["average"]["average"] for run in (straight, broken))):
            assert torch.equal(a, b)


def test_sigterm_saves_and_exits_143(tmp_path, prepared):
    run = tmp_path / "run"
    args = ["--data", str(prepared), "--out", str(run), *RESUMABLE[:-6], "--max-iters", "100000", "--seed", "3"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "janelm", "train", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None and not (run / "metrics.csv").exists():
        time.sleep(0.02)
    while proc.poll() is None and len((run / "metrics.csv").read_text().splitlines()) < 2:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "SIGTERM" in err and "--resume" in err
    assert load_checkpoint(run / "last.pt")["state"]["step"] > 0


def test_resumed_run_continues_the_same_schedule(tmp_path, prepared):
    """Resuming a finished run with a larger budget keeps its own lr and shape, not the preset's."""
    run = tmp_path / "run"
    janelm("train", "--data", str(prepared), "--out", str(run), *TINY, "--lr", "0.002")
    janelm("train", "--data", str(prepared), "--out", str(run), "--resume", "--max-iters", "40", "--quiet")
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["train_config"]["lr"] == 0.002 and ckpt["state"]["step"] == 40
    assert ckpt["model_config"]["n_embed"] == 32


def test_nonfinite_loss_stops_and_keeps_good_checkpoints(tmp_path, prepared, monkeypatch):
    corpus = load_corpus(prepared)
    cfg = TrainConfig(batch_size=4, max_iters=50, eval_interval=5, save_interval=5, eval_batches=1, warmup_iters=2,
                      dtype="float32")
    trainer = Trainer(ModelConfig(context=32, n_block=1, n_embed=32, n_head=2), cfg, corpus, tmp_path, progress=False)
    real_step = trainer.train_step

    def poisoned() -> float:
        loss = real_step()
        if trainer.state.step >= 12:
            with torch.no_grad():
                for p in trainer.model.parameters():
                    p.fill_(math.nan)
            return math.nan
        return loss

    monkeypatch.setattr(trainer, "train_step", poisoned)
    with pytest.raises(JaneLMError, match="step 13"):
        trainer.run()
    for name in ("last.pt", "best.pt"):
        weights = load_checkpoint(tmp_path / name)["model"]
        assert all(torch.isfinite(w).all() for w in weights.values())
    assert load_checkpoint(tmp_path / "last.pt")["state"]["step"] == 10


@pytest.mark.parametrize("mix", [Mix(), Mix(extra_start=3_000), Mix(extra_start=3_000, extra_weight=0.3)],
                         ids=["one-group", "plain-mix", "weighted-mix"])
def test_batches_depend_only_on_seed_and_step_and_not_on_world_size(mix):
    tokens = torch.arange(10_000, dtype=torch.int32)
    one = BatchSampler(tokens, context=8, batch_size=4, grad_accum=2, seed=1, mix=mix)
    halves = [BatchSampler(tokens, context=8, batch_size=4, grad_accum=1, seed=1, rank=r, world_size=2, mix=mix)
              for r in range(2)]
    for step in (0, 5, 17):
        x_one = torch.cat([x for x, _ in one.step_batches(step)])
        x_two = torch.cat([x for h in halves for x, _ in h.step_batches(step)])
        assert torch.equal(x_one, x_two)
        x, y = one.step_batches(step)[0]
        assert torch.equal(x[:, 1:], y[:, :-1])
    assert not torch.equal(one.step_batches(0)[0][0], one.step_batches(1)[0][0])


def test_training_writes_a_loss_plot_and_plot_command_combines_runs(trained, tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    assert imread(trained / "loss.png").shape[:2] == (500, 800)  # decodes, 800 × 500 pixels
    out = tmp_path / "both.png"
    janelm("plot", str(trained), str(trained), "-o", str(out))
    assert imread(out).shape[:2] == (500, 800)


def test_muon_optimizer_trains_and_resumes(tmp_path, prepared):
    if not hasattr(torch.optim, "Muon"):
        pytest.skip("this PyTorch has no torch.optim.Muon")
    corpus = load_corpus(prepared)
    cfg = TrainConfig(batch_size=4, max_iters=30, eval_interval=10, save_interval=10, eval_batches=2, warmup_iters=2,
                      dtype="float32", optimizer="muon", lr=0.01)
    trainer = Trainer(ModelConfig(context=32, n_block=1, n_embed=32, n_head=2), cfg, corpus, tmp_path, progress=False)
    before = trainer.evaluate()["train"]
    summary = trainer.run()
    assert summary["best_val_loss"] < before  # it learns
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert set(ckpt["optimizer"]) == {"muon", "adamw"}
    resumed = Trainer(ModelConfig(), replace(cfg, max_iters=35), corpus, tmp_path, resume=ckpt, progress=False)
    assert resumed.run()["step"] == 35


@pytest.mark.parametrize("argv, expected", [(["--preset", "cpu-2x256"], 0.3), (["--preset", "cpu-5x256-d2"], 0.3),
                                            (["--preset", "cpu-3x256"], 1.0), (["--preset", "cpu-5x256"], 0.5),
                                            (["--preset", "cpu-3x256-x2"], 1.0), (["--preset", "cpu-3x256-x3"], 1.0),
                                            (["--preset", "cpu-4x256-x3"], 1.0),
                                            (["--preset", "cpu-5x256", "--weight-decay", "0.05"], 0.05),
                                            (["--preset", "cpu"], TrainConfig().weight_decay)])
def test_weight_decay_pulls_the_rows_matrices_and_the_flag_overrides_it(argv, expected):
    """The compute table's rows train with weight decay 0.3 or more (their many passes over Austen), on
    matrices only (norms' gains are not pulled towards zero); --weight-decay has the last word."""
    from janelm.cli import build_parser
    from janelm.commands.train import configs_from_args
    from janelm.ensemble import make_model
    from janelm.optim import make_optimizer

    model_cfg, train_cfg = configs_from_args(build_parser().parse_args(["train", *argv]))
    model = make_model(replace(model_cfg, vocab_size=64, n_block=1))  # an ensemble's members too
    decay = {id(p): group["weight_decay"] for group in make_optimizer(model, train_cfg).param_groups
             for p in group["params"]}
    assert {decay[id(p)] for p in model.parameters() if p.dim() >= 2} == {expected}
    assert {decay[id(p)] for p in model.parameters() if p.dim() < 2} == {0.0}


@pytest.mark.slow
def test_compiled_model_gives_the_eager_loss(tmp_path, prepared):
    corpus = load_corpus(prepared)
    cfg = TrainConfig(batch_size=4, max_iters=10, eval_interval=10, eval_batches=1, warmup_iters=2, dtype="float32")
    model_cfg = ModelConfig(context=32, n_block=1, n_embed=32, n_head=2)
    losses = []
    for compile in (False, True):
        trainer = Trainer(model_cfg, replace(cfg, compile=compile), corpus, tmp_path / str(compile), progress=False)
        run = []
        for _ in range(3):
            run.append(trainer.train_step())
            trainer.state.step += 1
        losses.append(run)
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"))])
def test_a_compiled_run_on_two_threads_replays_bit_for_bit(tmp_path, prepared, device):
    """The compiler's embedding backward raced two threads' (or a GPU's blocks') atomic adds, so one
    seed gave two runs (janelm.device.deterministic_compiling); each run here compiles afresh."""
    args = ["--data", str(prepared), *TINY, "--n-embed", "64", "--context", "64", "--batch-size", "8",
            "--max-iters", "12", "--compile", "--no-compile-decode", "--dropout", "0.1", "--device", device]
    for name in "ab":
        janelm("train", *args, "--out", str(tmp_path / name),
               env={"OMP_NUM_THREADS": "2", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / f"inductor-{name}")})
    assert_same_weights(tmp_path / "a" / "last.pt", tmp_path / "b" / "last.pt")


def test_a_training_step_that_cannot_be_compiled_trains_uncompiled(tmp_path, prepared, monkeypatch, capsys):
    """No C++ compiler, an operation the compiler lacks: the first step's failure is one note, and
    training goes on with the eager model, from the same weights (the failed step took no update)."""
    def compile_that_fails(model, **kwargs):
        def compiled(*args, **kw):
            raise RuntimeError("InductorError: CppCompileError: C++ compile error\nmore lines")
        return compiled

    corpus = load_corpus(prepared)
    cfg = TrainConfig(batch_size=4, max_iters=6, eval_interval=3, eval_batches=1, warmup_iters=2, dtype="float32")
    model_cfg = ModelConfig(context=32, n_block=1, n_embed=32, n_head=2)
    eager = Trainer(model_cfg, cfg, corpus, tmp_path / "eager", progress=False)
    eager.run()
    monkeypatch.setattr(torch, "compile", compile_that_fails)
    failing = Trainer(model_cfg, replace(cfg, compile=True), corpus, tmp_path / "failing", progress=False)
    failing.run()
    assert capsys.readouterr().err.count("note: could not compile the training step (InductorError: CppCompileError") == 1
    for name, w in eager.model.state_dict().items():
        assert torch.equal(w, failing.model.state_dict()[name]), name


@pytest.mark.slow
def test_train_compiles_the_decode_step_so_the_first_sample_is_compiled(tmp_path, prepared):
    run, env = tmp_path / "run", {"JANELM_CACHE": str(tmp_path / "cache")}
    proc = janelm("train", "--data", str(prepared), "--out", str(run), *TINY, "--compile-decode", env=env)
    assert "compiled in" in proc.stderr
    result = json.loads(janelm("bench", "sample", "-c", str(run), "--steps", "5", "--json", env=env).stdout)
    assert result["compiled"] and result["compile_s"] < 5  # loaded from the cache, not compiled again
