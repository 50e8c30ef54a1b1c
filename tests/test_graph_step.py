"""The uncompiled GPU training step, replayed from a CUDA graph (janelm.graph_step): the eager
step's numbers, dropout that differs each step, and eager steps where a capture fails."""

from dataclasses import replace

import pytest
import torch

from conftest import TINY, janelm
from janelm.config import ModelConfig, TrainConfig
from janelm.data import load_corpus
from janelm.trainer import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")

MODEL = ModelConfig(context=32, n_block=2, n_embed=32, n_head=2)
TRAIN = TrainConfig(batch_size=4, grad_accum=2, max_iters=12, eval_interval=12, eval_batches=1, warmup_iters=2,
                    dtype="float32", device="cuda", grad_clip=0.5)


def steps(trainer: Trainer, n: int) -> list[float]:
    losses = []
    for _ in range(n):
        losses.append(trainer.train_step())
        trainer.state.step += 1
    return losses


def test_the_graph_replays_the_eager_steps_numbers(tmp_path, prepared):
    """Two micro-batches, clipping and AdamW: the same losses and weights as eager steps on the same GPU."""
    corpus = load_corpus(prepared)
    graphed = Trainer(MODEL, TRAIN, corpus, tmp_path / "graphed", progress=False)
    eager = Trainer(MODEL, TRAIN, corpus, tmp_path / "eager", progress=False)
    eager.training_step.graphed = None
    assert steps(graphed, 8) == pytest.approx(steps(eager, 8), rel=1e-5)
    assert graphed.training_step.graphed.captured and graphed.training_step.graphed.calls == 8
    for (name, a), b in zip(graphed.model.state_dict().items(), eager.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_bf16_dropout_draws_new_masks_each_replay_and_learns(tmp_path, prepared):
    """The same batch replayed twice gives two losses (the graph advances the generator), and a
    bf16 run with dropout learns: its loss falls."""
    corpus = load_corpus(prepared)
    cfg = replace(TRAIN, dtype="bfloat16", max_iters=60, lr=3e-3)
    trainer = Trainer(replace(MODEL, dropout=0.2), cfg, corpus, tmp_path / "run", progress=False)
    losses = steps(trainer, 60)
    assert trainer.training_step.graphed.captured
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.3
    fixed = trainer.train_batches.step_batches(0)
    trainer.train_batches.step_batches = lambda step, progress=0.0: fixed
    trainer.cfg = replace(trainer.cfg, lr=0.0)  # replays that move no weight, only the generator
    assert len({trainer.train_step() for _ in range(3)}) == 3


def test_a_failed_capture_trains_eagerly_with_one_note(tmp_path, prepared, monkeypatch, capsys):
    corpus = load_corpus(prepared)
    eager = Trainer(MODEL, TRAIN, corpus, tmp_path / "eager", progress=False)
    eager.training_step.graphed = None
    steps(eager, 6)

    def refuse(*args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing\nmore")

    monkeypatch.setattr(torch.cuda, "graph", refuse)
    failing = Trainer(MODEL, TRAIN, corpus, tmp_path / "failing", progress=False)
    steps(failing, 6)
    assert not failing.training_step.graphed.captured
    err = capsys.readouterr().err
    assert err.count("note: could not capture the training step in a CUDA graph (operation not permitted") == 1
    for (name, a), b in zip(failing.model.state_dict().items(), eager.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_janelm_train_on_a_gpu_captures_and_resumes(tmp_path, prepared):
    """Through the command: a run, then a resumed run that warms up eagerly and captures again."""
    run = tmp_path / "run"
    args = ["--data", str(prepared), "--out", str(run), *TINY, "--device", "cuda", "--dropout", "0.1"]
    for more in (["--max-iters", "20"], ["--max-iters", "40", "--resume"]):
        assert "could not capture" not in janelm("train", *args, *more).stderr
    last = (run / "metrics.csv").read_text().splitlines()[-1].split(",")
    assert last[0] == "40" and float(last[3]) < 5.0
