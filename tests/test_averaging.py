"""`train --average D` (janelm.averaging): an exponential moving average of the weights, the model
that evaluation scores and `best` keeps, while training goes on with its own weights; a resumed run
carries the average on (tests/test_trainer.py: bit for bit after a SIGINT)."""

from __future__ import annotations

import pytest
import torch

from janelm.averaging import EVERY, WeightAverage
from janelm.checkpoint import load_checkpoint
from janelm.config import TrainConfig
from janelm.data import load_corpus
from janelm.errors import InputError
from janelm.trainer import Trainer
from test_schedule import TINY_MODEL


def test_the_average_follows_its_formula_and_swapping_it_in_leaves_the_weights_as_they_were():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    average = WeightAverage(model, 0.9)
    expected = [p.detach().clone() for p in model.parameters()]
    updates = 0
    for step in range(1, 4 * EVERY + 2):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        average.update(step)
        if step % EVERY == 0:
            updates += 1
            keep = min(0.9 ** EVERY, (1 + updates) / (10 + updates))
            expected = [keep * e + (1 - keep) * p.detach() for e, p in zip(expected, model.parameters())]
    own = [p.detach().clone() for p in model.parameters()]
    with average.swapped_in():
        for p, e in zip(model.parameters(), expected):
            torch.testing.assert_close(p.detach(), e)
    assert all(torch.equal(p, o) for p, o in zip(model.parameters(), own))
    again = WeightAverage(model, 0.9)
    again.load_state_dict(average.state_dict())
    assert again.updates == updates and all(torch.equal(a, b) for a, b in zip(again.average, average.average))


def test_best_holds_the_average_and_last_the_trained_weights_with_the_average_beside(prepared, tmp_path):
    cfg = TrainConfig(batch_size=4, lr=3e-3, warmup_iters=3, max_iters=40, max_time=0.0, eval_interval=40,
                      eval_batches=2, dtype="float32", average=0.9)
    trainer = Trainer(TINY_MODEL, cfg, load_corpus(prepared), tmp_path, progress=False)
    trainer.run()
    best, last = load_checkpoint(tmp_path / "best.pt"), load_checkpoint(tmp_path / "last.pt")
    assert best["state"]["step"] == last["state"]["step"] == 40  # one evaluation, at the end: it is the best
    names = [name for name, _ in trainer.model.named_parameters()]
    for name, trained, averaged in zip(names, trainer.model.parameters(), trainer.average.average):
        assert torch.equal(last["model"][name], trained.detach()) and torch.equal(best["model"][name], averaged)
        assert not torch.equal(trained, averaged)
    assert best["average"] is None and last["average"]["updates"] == 40 // EVERY
    with trainer.evaluated():
        assert trainer.evaluate()["val"] == pytest.approx(best["state"]["best_val_loss"])
    assert trainer.evaluate()["val"] != pytest.approx(best["state"]["best_val_loss"])


@pytest.mark.parametrize("decay", [-0.1, 1.0])
def test_a_decay_outside_0_to_1_is_refused(decay):
    with pytest.raises(InputError, match="--average must be in"):
        TrainConfig(average=decay).validate()
