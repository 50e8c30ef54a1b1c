"""Hugging Face interop: `janelm export` to transformers, and transformers folders as checkpoints.

transformers itself is the judge: it loads JaneLM's exports, and makes the folders JaneLM loads.
Models are tiny and made here; nothing is downloaded. The tests skip where the `hf` libraries
are missing (`pip install -e '.[test]'` brings them).
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import make_text
from gutenberg_like import bundled_text
from janelm.bundled import bundled_works
from janelm.checkpoint import load_checkpoint, load_model, save_checkpoint
from janelm.cli import main
from janelm.config import ModelConfig, to_dict
from janelm.errors import InputError
from janelm.model import GPT

pytest.importorskip("safetensors", reason="the hf extra is not installed: pip install -e '.[test]'")
pytest.importorskip("tokenizers", reason="the hf extra is not installed: pip install -e '.[test]'")
transformers = pytest.importorskip("transformers", reason="transformers is not installed: pip install -e '.[test]'")

PROMPTS = ["Elizabeth said", "“It is", "\n", "The morning was very"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run many times faster on one thread, above all on a busy machine (as in conftest's
    subprocesses)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cli(capsys, *args) -> str:
    """Run a janelm command in this process; its stdout."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def hf_greedy(model, tokenizer, prompt: str, new: int) -> str:
    """transformers' greedy continuation of `prompt`, as text (prompt included)."""
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, top_p=None, top_k=None,
                         temperature=None)
    return tokenizer.decode(out[0])


def assert_same_logits(hf_model, model, ids: torch.Tensor) -> None:
    with torch.no_grad():
        theirs = hf_model(ids).logits
        ours, _ = model(ids)
    assert (theirs - ours).abs().max().item() < 1e-4


def perturbed(model):
    """Every parameter moved off its initial value (zero biases, unit norms), so that a tensor
    mapped to the wrong place cannot go unseen."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


# --- JaneLM's default architecture → LlamaForCausalLM ----------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory, trained) -> Path:
    out = tmp_path_factory.mktemp("export") / "austen-llama"
    assert main(["export", "-c", str(trained), str(out)]) == 0
    return out


def test_export_writes_a_transformers_folder_with_a_model_card(exported, trained):
    names = sorted(p.name for p in exported.iterdir())
    assert names == ["README.md", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                     "tokenizer_config.json"]
    config = json.loads((exported / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["bos_token_id"] is None and config["eos_token_id"] is None  # nothing added, nothing stops early
    ckpt = load_checkpoint(trained / "best.pt")
    card = (exported / "README.md").read_text()
    best = ckpt["state"]["best_val_loss"]
    bits = best / math.log(2) / ckpt["data"]["chars_per_token"]["val"]
    for fact in (f"{ckpt['state']['step']:,} steps", f"{ckpt['state']['tokens_seen']:,} tokens seen", f"{bits:.3f} bits per character",
                 "`novel.txt`", "## A sample (48 tokens"):
        assert fact in card, fact
    assert (exported / "model.safetensors").stat().st_mode & 0o044  # readable by others, like the rest


def test_transformers_loads_the_export_and_agrees(exported, trained, text_file, capsys):
    """Done when (1): same ids and lossless text from the tokenizer, logits within 1e-4, and greedy
    generation equal to `janelm sample --temperature 0 --dtype float32`."""
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(exported).eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
    assert type(hf_model).__name__ == "LlamaForCausalLM"
    model, tokenizer, _ = load_model(trained, dtype=torch.float32)

    text = text_file.read_text()
    ids = hf_tokenizer(text).input_ids
    assert ids == tokenizer.encode(text) and hf_tokenizer.decode(ids) == text
    windows = torch.tensor(ids[: 4 * 32]).view(4, 32)
    assert_same_logits(hf_model, model, windows)
    for prompt in PROMPTS:
        ours = cli(capsys, "sample", "-c", trained, "--temperature", "0", "--dtype", "float32", "-n", "20",
                   "--prompt", prompt).removesuffix("\n")
        if prompt == "\n":  # sample does not echo the default prompt, a paragraph break
            ours = prompt + ours
        assert hf_greedy(hf_model, hf_tokenizer, prompt, 20) == ours


def test_sample_and_eval_of_the_export_equal_the_original(exported, trained, text_file, capsys):
    """Done when (2): -c EXPORT gives the original checkpoint's text and bits per character."""
    for args in (["--temperature", "0", "--dtype", "float32"], ["--seed", "3", "--top-k", "20"]):
        texts = [cli(capsys, "sample", "-c", c, "-n", "40", "--prompt", "She", *args) for c in (trained, exported)]
        assert texts[0] == texts[1]
    scores = [json.loads(cli(capsys, "eval", "-c", c, text_file, "--json")) for c in (trained, exported)]
    assert round(scores[0]["bits_per_char"], 4) == round(scores[1]["bits_per_char"], 4)
    assert scores[0]["tokens"] == scores[1]["tokens"]


def test_the_export_keeps_the_tokenizer_for_fine_tuning(exported, trained):
    """The export's tokenizer is read back as the original itself (same fingerprint), so
    `--init-from EXPORT` trains on a corpus prepared by the original."""
    assert load_checkpoint(exported)["tokenizer"] == load_checkpoint(trained / "best.pt")["tokenizer"]


@pytest.mark.slow
def test_the_exported_tokenizers_give_janelm_ids_on_the_novels():
    """JaneLM's split pattern survives the conversion: the same ids on every novel, and the text back."""
    from janelm.interop.tokenizer_json import from_tokenizer_json, to_tokenizer_json
    from janelm.tokenizer import train_tokenizer

    from tokenizers import Tokenizer

    novels = [bundled_text(name) for name in sorted(bundled_works())]
    bpe = train_tokenizer("bpe", [novels[-2][:150_000]], vocab_size=1000, progress=False)
    char = train_tokenizer("char", novels[:2])
    for tokenizer, texts in ((bpe, novels), (char, novels[:2])):
        spec = to_tokenizer_json(tokenizer)
        hf = transformers.PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(spec))
        for text in texts:
            ids = hf(text).input_ids
            assert ids == tokenizer.encode(text)
            assert hf.decode(ids) == text
        assert from_tokenizer_json(spec).to_dict() == tokenizer.to_dict()
    with pytest.raises(Exception):  # like JaneLM's, the exported character tokenizer refuses unseen characters
        hf("漢")


# --- a folder made by transformers: Llama with grouped-query attention --------------------------


def byte_level_bpe(text: str, vocab_size: int = 300):
    """A tokenizers byte-level BPE as transformers users train one (ids not in merge order)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator([text], trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer)


@pytest.fixture(scope="module")
def hf_llama(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hf") / "llama-gqa"
    tokenizer = byte_level_bpe(make_text(150, seed=3))
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=72,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=5000.0,
                                      tie_word_embeddings=False)
    torch.manual_seed(0)  # the same weights on every run: greedy checks must not depend on test order
    model = perturbed(transformers.LlamaForCausalLM(config))
    with torch.no_grad():
        model.lm_head.weight.mul_(20)  # peaked outputs: greedy choices far from ties that rounding could flip
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_transformers_llama_with_gqa_loads_samples_and_evaluates(hf_llama, tmp_path, capsys):
    """Done when (3), first half: the folder is a checkpoint to sample, chat and eval."""
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_llama).eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(hf_llama)
    model, tokenizer, _ = load_model(hf_llama, dtype=torch.float32)
    assert tokenizer.kind == "hf" and model.config.kv_heads == 2 and model.config.n_head == 4
    assert model.new_cache(1).keys[0].shape[1] == 2  # the cache holds the 2 key/value heads only

    text = make_text(20, seed=9)
    assert tokenizer.encode(text) == hf_tokenizer(text).input_ids
    ids = torch.tensor(tokenizer.encode(text)[:128]).view(2, 64)
    assert_same_logits(hf_model, model, ids)
    for prompt in PROMPTS[:2]:
        ours = cli(capsys, "sample", "-c", hf_llama, "--temperature", "0", "--dtype", "float32", "-n", "20",
                   "--prompt", prompt)
        assert ours.removesuffix("\n") == hf_greedy(hf_model, hf_tokenizer, prompt, 20)

    short = tmp_path / "short.txt"  # within one context: scored in one window, as transformers scores it
    short.write_text(tokenizer.decode(tokenizer.encode(text)[:60]))
    score = json.loads(cli(capsys, "eval", "-c", hf_llama, short, "--json"))
    window = torch.tensor([tokenizer.encode(short.read_text())])
    with torch.no_grad():
        expected = hf_model(window, labels=window).loss.item()
    assert score["tokens"] == window.size(1) - 1
    assert abs(score["loss"] - expected) < 1e-5


def test_a_transformers_llama_fine_tunes_and_exports_back(hf_llama, tmp_path, capsys):
    """Done when (3), second half: prepare with its tokenizer, `train --init-from` it, export again."""
    letters = tmp_path / "letters.txt"
    letters.write_text(make_text(120, seed=21))
    cli(capsys, "prepare", letters, "--tokenizer-from", hf_llama, "--out", tmp_path / "data")
    tuned = tmp_path / "tuned"
    cli(capsys, "train", "--init-from", hf_llama, "--data", tmp_path / "data", "--out", tuned, "--batch-size", "4",
        "--max-iters", "4", "--eval-interval", "2", "--eval-batches", "1", "--warmup-iters", "1", "--dtype", "float32",
        "--quiet")
    before = json.loads(cli(capsys, "eval", "-c", hf_llama, letters, "--json"))["loss"]
    after = json.loads(cli(capsys, "eval", "-c", tuned, letters, "--json"))["loss"]
    assert after < before

    back = tmp_path / "back"
    cli(capsys, "export", "-c", tuned, back)
    config = json.loads((back / "config.json").read_text())
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["intermediate_size"]) == (4, 2, 72)
    assert (config["rms_norm_eps"], config["rope_theta"]) == (1e-6, 5000.0)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(back).eval()
    model, tokenizer, _ = load_model(tuned, dtype=torch.float32)
    assert_same_logits(hf_model, model, torch.tensor([tokenizer.encode(make_text(5, seed=2))[:64]]))
    assert load_checkpoint(back)["tokenizer"] == load_checkpoint(hf_llama)["tokenizer"]  # the same hf tokenizer


# --- learned positions, LayerNorm, GELU → GPT2LMHeadModel -------------------------------------------


SEED_SHAPE = ["--preset", "seed", "--n-block", "2", "--n-embed", "32", "--n-head", "2", "--head-size", "16",
              "--context", "32", "--batch-size", "4", "--max-iters", "6", "--eval-interval", "3",
              "--eval-batches", "1", "--warmup-iters", "2", "--dtype", "float32", "--quiet"]


def test_a_seed_preset_model_round_trips_through_gpt2(prepared, text_file, tmp_path, capsys):
    """Done when (4): learned positions, LayerNorm, GELU, untied head, no biases → GPT2LMHeadModel
    (zero biases), and back, with the same text and bits per character."""
    run, export = tmp_path / "seed", tmp_path / "seed-gpt2"
    cli(capsys, "train", "--data", prepared, "--out", run, *SEED_SHAPE)
    cli(capsys, "export", "-c", run, export)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(export).eval()
    assert type(hf_model).__name__ == "GPT2LMHeadModel" and not hf_model.config.tie_word_embeddings
    model, tokenizer, _ = load_model(run, dtype=torch.float32)
    assert (model.config.position, model.config.norm, model.config.mlp, model.config.bias) == ("learned", "layer", "gelu", False)
    assert_same_logits(hf_model, model, torch.tensor([tokenizer.encode(text_file.read_text())[:32]]))

    samples = [cli(capsys, "sample", "-c", c, "-n", "30", "--temperature", "0", "--dtype", "float32", "--prompt", "Jane")
               for c in (run, export)]
    assert samples[0] == samples[1]
    scores = [json.loads(cli(capsys, "eval", "-c", c, text_file, "--json"))["bits_per_char"] for c in (run, export)]
    assert round(scores[0], 4) == round(scores[1], 4)


def test_a_transformers_gpt2_loads(tmp_path):
    """GPT-2 as transformers makes it: biases, tied embeddings, the tanh GELU ("gelu_new")."""
    folder = tmp_path / "gpt2"
    tokenizer = byte_level_bpe(make_text(100, seed=4))
    config = transformers.GPT2Config(vocab_size=len(tokenizer), n_positions=48, n_embd=32, n_layer=2, n_head=4,
                                     bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    hf_model = perturbed(transformers.GPT2LMHeadModel(config))
    hf_model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    model, ours, _ = load_model(folder, dtype=torch.float32)
    assert (model.config.mlp, model.config.bias, model.config.tie_embeddings) == ("gelu_tanh", True, True)
    assert_same_logits(hf_model, model, torch.tensor([ours.encode(make_text(5))[:48]]))


# --- refusals and units ------------------------------------------------------------------------------


@pytest.mark.parametrize("change, says", [
    ({"mlp": "relu2"}, "--mlp relu2 with --position rope has no transformers equivalent"),
    ({"bias": True}, "--bias with --position rope"),
    ({"position": "learned"}, "--norm rms with --position learned"),
    ({"position": "learned", "norm": "layer", "mlp": "gelu", "head_size": 12}, "--head-size 12 with --position learned"),
    ({"position": "learned", "norm": "layer", "mlp": "gelu", "n_kv_head": 2}, "--n-kv-head 2"),
])
def test_settings_without_a_transformers_equivalent_are_named(change, says):
    from janelm.interop.architectures import architecture_for

    with pytest.raises(InputError, match=says.replace("+", r"\+")):
        architecture_for(replace(ModelConfig(vocab_size=10, n_embed=32, n_head=4), **change))


def test_export_refuses_before_writing_anything(trained, tmp_path, capsys):
    """A refused export leaves no folder; --force replaces a non-empty one whole."""
    ckpt = load_checkpoint(trained / "best.pt")
    cfg = replace(ModelConfig.from_dict(ckpt["model_config"]), mlp="relu2")
    save_checkpoint(tmp_path / "relu2.pt", {**ckpt, "model_config": to_dict(cfg), "model": GPT(cfg).state_dict()})
    assert main(["export", "-c", str(tmp_path / "relu2.pt"), str(tmp_path / "out")]) == 2
    assert "--mlp relu2" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "relu2.pt"]  # no staging folder left behind

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "old.txt").write_text("an earlier export")
    assert main(["export", "-c", str(trained), str(taken)]) == 2
    assert "--force" in capsys.readouterr().err and (taken / "old.txt").exists()
    assert main(["export", "-c", str(trained), str(taken), "--force"]) == 0
    assert not (taken / "old.txt").exists() and (taken / "model.safetensors").is_file()


def test_a_foreign_byte_level_bpe_is_served_by_tokenizers():
    from janelm.interop.tokenizer_json import from_tokenizer_json
    from janelm.tokenizer import tokenizer_from_dict

    hf = byte_level_bpe(make_text(60, seed=5), vocab_size=280)
    spec = hf.backend_tokenizer.to_str()
    ours = from_tokenizer_json(spec)
    text = "“Mr. Darcy,” said she — ’tis naïve! <|endoftext|>\n\n"
    assert ours.kind == "hf" and ours.encode(text) == hf(text).input_ids and ours.decode(ours.encode(text)) == text
    assert tokenizer_from_dict(ours.to_dict()).encode(text) == ours.encode(text)
    split = "é".encode()
    assert ours.token_bytes(ours.encode("é")[:1]) + ours.token_bytes(ours.encode("é")[1:]) == split
    with pytest.raises(InputError, match="outside the tokenizer's vocabulary"):
        ours.decode([ours.vocab_size])
    with pytest.raises(InputError, match="outside"):
        ours.decode([-1])


def test_merges_come_from_the_ranks():
    """Each token of rank r becomes the merge of the two parts tiktoken ends with on its bytes."""
    from janelm.interop.tokenizer_json import bpe_merges

    tokens = [bytes([b]) for b in range(256)] + [b"ab", b"bc", b"abc", b"cab"]
    a, b, c = ord("a"), ord("b"), ord("c")
    assert bpe_merges(tokens) == [(a, b), (b, c), (256, c), (c, 256)]
