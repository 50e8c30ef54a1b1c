"""Fine-tuning: prepare new text with a checkpoint's tokenizer, train from its weights, get better on it."""

import json

from conftest import TINY, janelm, make_text


def test_fine_tuning_lowers_eval_loss_on_the_new_work(tmp_path, trained):
    work = tmp_path / "letters.txt"
    work.write_text(make_text(200, seed=11).replace("the", "thee"))
    data = tmp_path / "letters"
    janelm("prepare", str(work), "--tokenizer-from", str(trained), "--out", str(data))
    meta = json.loads((data / "meta.json").read_text())
    assert meta["settings"]["tokenizer_from"] == str(trained)

    before = json.loads(janelm("eval", "-c", str(trained), "--data", str(data), "--json").stdout)["loss"]
    tuned = tmp_path / "tuned"
    janelm("train", "--init-from", str(trained), "--data", str(data), "--out", str(tuned), *TINY[:-1],
           "--max-iters", "20", "--quiet")
    after = json.loads(janelm("eval", "-c", str(tuned), "--data", str(data), "--json").stdout)["loss"]
    assert after < before

    from janelm.checkpoint import load_checkpoint

    ckpt, base = load_checkpoint(tuned / "last.pt"), load_checkpoint(trained / "last.pt")
    assert ckpt["model_config"] == base["model_config"]  # the architecture comes from the checkpoint
    assert ckpt["train_config"]["lr"] < base["train_config"]["lr"]  # a gentler default learning rate
