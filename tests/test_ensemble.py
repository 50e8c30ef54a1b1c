"""Ensembles (`--members N`): the average of the members' probabilities, members trained apart,
caches that change nothing, and every command that reads a checkpoint."""

import json
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY, janelm
from janelm.config import ModelConfig
from janelm.ensemble import Ensemble, make_model
from janelm.model import GPT

SMALL = ModelConfig(vocab_size=50, context=16, n_block=2, n_embed=32, n_head=4, members=2)


def ensemble() -> Ensemble:
    torch.manual_seed(0)
    return make_model(SMALL).eval()


def test_make_model_builds_an_ensemble_only_for_several_members():
    assert type(make_model(replace(SMALL, members=1))) is GPT
    model = ensemble()
    assert isinstance(model, Ensemble) and len(model.members) == 2
    first, second = (m.tok_embed.weight for m in model.members)
    assert not torch.equal(first, second)  # each member starts from its own weights
    assert model.num_params() == 2 * model.members[0].num_params()


def test_the_output_is_the_log_of_the_members_mean_probability():
    model = ensemble()
    idx = torch.randint(0, 50, (3, 10))
    targets = torch.randint(0, 50, (3, 10))
    logits, loss = model(idx, targets)
    probs = torch.stack([m(idx)[0].softmax(-1) for m in model.members]).mean(0)
    torch.testing.assert_close(logits.softmax(-1), probs)
    torch.testing.assert_close(loss, F.nll_loss(probs.log().view(-1, 50), targets.view(-1)))
    # averaging helps on average: the mixture's loss is at most the members' mean loss (Jensen)
    member_losses = [m(idx, targets)[1] for m in model.members]
    assert loss <= torch.stack(member_losses).mean() + 1e-6


def test_training_gives_each_member_its_own_rows_and_gradients():
    model = ensemble().train()
    idx, targets = torch.randint(0, 50, (4, 10)), torch.randint(0, 50, (4, 10))
    logits, loss = model(idx, targets)
    assert logits is None
    expected = (model.members[0](idx[:2], targets[:2])[1] + model.members[1](idx[2:], targets[2:])[1]) / 2
    torch.testing.assert_close(loss, expected)
    loss.backward()
    first = model.members[0].tok_embed.weight.grad.clone()
    model.zero_grad()
    other = torch.randint(0, 50, (2, 10))  # the second member's rows changed: the first's gradient did not
    model(torch.cat([idx[:2], other]), torch.cat([targets[:2], other]))[1].backward()
    torch.testing.assert_close(model.members[0].tok_embed.weight.grad, first)
    with pytest.raises(ValueError, match="does not split"):
        model(idx[:3], targets[:3])


def test_the_cache_and_the_decode_step_give_the_full_pass_logits():
    model = ensemble()
    idx = torch.randint(0, 50, (2, 12))
    full, _ = model(idx)
    with torch.no_grad():
        cache = model.new_cache(2)
        assert len(cache.keys) == 2 * SMALL.n_block
        prefix, _ = model(idx[:, :8], cache=cache)
        assert cache.length == 8
        torch.testing.assert_close(prefix, full[:, :8], rtol=1e-4, atol=1e-4)
        for t in range(8, 12):
            step = model.decode_step(idx[:, t : t + 1], torch.full((2,), t), cache)
            torch.testing.assert_close(step, full[:, t], rtol=1e-4, atol=1e-4)


def test_each_member_passes_over_the_text_as_often_as_a_lone_model():
    from janelm.presets import preset_configs
    from janelm.recipe import Pace, planned_steps

    model_cfg, train_cfg = preset_configs("cpu-3x256-x2")
    assert model_cfg.members == 2 and train_cfg.batch_size == 16
    fast = Pace(step_s=1e-3, eval_s=0.01, tokens_per_step=train_cfg.batch_size * 256)
    steps, plan = planned_steps(train_cfg, 0, train_cfg.max_time, fast, 889_138, members=2)
    # each member reads 8 rows a step: its passes over the text are the lone model's at batch 8
    assert steps == math.ceil(train_cfg.max_passes * 889_138 / (8 * 256))
    assert "by each of 2 members" in plan


def test_an_ensemble_trains_samples_scores_and_refuses_export(tmp_path, prepared):
    out = tmp_path / "run"
    janelm("train", "--data", str(prepared), "--out", str(out), *TINY, "--members", "2", "--no-compile")
    from janelm.checkpoint import load_model

    model, _, ckpt = load_model(out / "best.pt")
    assert isinstance(model, Ensemble) and ckpt["model_config"]["members"] == 2
    first = janelm("sample", "-c", str(out), "-n", "40", "--seed", "3", "--no-compile").stdout
    assert len(first) > 20 and first == janelm("sample", "-c", str(out), "-n", "40", "--seed", "3", "--no-compile").stdout
    score = json.loads(janelm("eval", "-c", str(out), "--data", str(prepared), "--json").stdout)
    assert 0 < score["bits_per_char"] < 10
    refused = janelm("export", "-c", str(out), str(tmp_path / "hf"), check=False)
    assert refused.returncode != 0 and "ensemble of 2" in refused.stderr and "Traceback" not in refused.stderr
    odd = janelm("train", "--data", str(prepared), "--out", str(tmp_path / "odd"), *TINY, "--members", "3", check=False)
    assert odd.returncode != 0 and "--members 3" in odd.stderr and "Traceback" not in odd.stderr


def test_bench_sample_times_the_ensemble_it_is_asked_for():
    """`bench sample --members N` decodes N members a token, as sampling a trained ensemble does;
    N need not split the training batch (tiny's 8), which only `bench train` trains on."""
    flags = ["--preset", "tiny", "--steps", "5", "--no-compile", "--json", "--device", "cpu"]
    one = json.loads(janelm("bench", "sample", *flags).stdout)
    three = json.loads(janelm("bench", "sample", *flags, "--members", "3").stdout)
    assert (one["members"], three["members"]) == (1, 3) and three["params"] == 3 * one["params"]
    refused = janelm("bench", "train", *flags, "--members", "3", "--batch-size", "8", check=False)
    assert refused.returncode != 0 and "does not split among --members 3" in refused.stderr


@pytest.mark.parametrize("flags, members, batch", [(["--preset", "cpu-3x256-x2", "--members", "3"], 3, 24),
                                                   (["--preset", "cpu", "--members", "2"], 2, 32),
                                                   (["--members", "3"], 3, 48),  # auto, until it chooses: the probe's row
                                                   (["--preset", "cpu-3x256-x3", "--members", "2", "--batch-size", "12"], 2, 12),
                                                   (["--preset", "cpu-3x256-x2"], 2, 16)])
def test_members_alone_train_each_on_as_many_rows_as_the_presets(flags, members, batch):
    """`--members 3` on a preset of batch 8 a member trains three members of 8 rows each (and under
    `auto`, the row it chooses: test_schedule); it used to be refused for a batch the preset's
    members shared and three do not."""
    from janelm.cli import build_parser
    from janelm.commands.train import configs_from_args

    model_cfg, train_cfg = configs_from_args(build_parser().parse_args(["train", *flags]))
    assert (model_cfg.members, train_cfg.batch_size) == (members, batch)


def test_members_with_a_batch_they_cannot_share_are_refused():
    from janelm.cli import build_parser
    from janelm.commands.train import configs_from_args
    from janelm.errors import InputError

    with pytest.raises(InputError, match=r"--batch-size 16 does not split among --members 3: give a multiple of 3"):
        configs_from_args(build_parser().parse_args(["train", "--preset", "cpu-3x256-x2", "--members", "3", "--batch-size", "16"]))
