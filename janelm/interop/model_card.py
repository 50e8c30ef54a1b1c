"""The README.md model card of an exported model: what it is, what it was trained on, how well it
does, a sample of its own text, and how to use it.

It holds no corpus text: the data are named (sources, sizes), and the only prose is the model's
own sample.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from janelm import __version__
from janelm.config import ModelConfig


def _data_lines(ckpt: dict[str, Any]) -> list[str]:
    """The training data, from the corpus's meta.json where it is still there."""
    data = ckpt.get("data") or {}
    folder = data.get("path")
    if not folder:
        return ["- not recorded (the model was not trained by JaneLM, or its checkpoint predates the record)"]
    try:
        meta = json.loads((Path(folder) / "meta.json").read_text(encoding="utf-8"))
        sources = meta["sources"]
    except (OSError, ValueError, KeyError, TypeError):
        return [f"- the corpus prepared in `{folder}` (its meta.json is no longer there)"]
    lines = [f"- `{Path(str(s.get('source', '?'))).name}`: {s.get('chars', 0):,} characters" for s in sources]
    tokens = meta.get("tokens") or {}
    held_out = (meta.get("settings") or {}).get("val_fraction")
    lines.append(f"- {tokens.get('train', 0):,} training and {tokens.get('val', 0):,} validation tokens"
                 + (f" (the last {held_out:.0%} of every text held out)" if isinstance(held_out, float) else ""))
    return lines


def _training_lines(ckpt: dict[str, Any]) -> list[str]:
    state = ckpt.get("state") or {}
    if not state:
        return ["- not recorded"]
    lines = [f"- {state.get('step', 0):,} steps, {state.get('tokens_seen', 0):,} tokens seen"]
    best = state.get("best_val_loss", math.inf)
    chars_per_token = ((ckpt.get("data") or {}).get("chars_per_token") or {}).get("val")
    if isinstance(best, float) and math.isfinite(best) and chars_per_token:
        lines.append(f"- validation: {best:.4f} nats per token, {best / math.log(2) / chars_per_token:.3f} bits per "
                     f"character (best evaluation during training, on fixed batches of the held-out split)")
    return lines


TOKENIZERS = {"bpe": "a byte-level BPE trained on the corpus", "char": "one token per character",
              "gpt2": "GPT-2's byte-level BPE", "hf": "the byte-level BPE of the model it was fine-tuned from"}


def model_card(ckpt: dict[str, Any], cfg: ModelConfig, architecture: str, tokenizer_kind: str,
               n_params: int, sample: str, sample_settings: str, folder: str) -> str:
    """The card's Markdown text; `folder` is where the model is, for the usage lines."""
    heads = f"{cfg.n_head} heads" + (f" ({cfg.kv_heads} key/value heads)" if cfg.kv_heads != cfg.n_head else "")
    fence = "`" * max(3, 1 + max(map(len, re.findall("`+", sample)), default=0))  # longer than any run inside
    return "\n".join([
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "language: en",
        "tags: [janelm, jane-austen]",
        "---",
        "",
        f"# A JaneLM model ({architecture})",
        "",
        f"A small decoder-only transformer trained with JaneLM {__version__} and exported "
        f"as a transformers `{architecture}`.",
        "",
        "## Model",
        "",
        f"- {n_params / 1e6:.2f}M parameters: {cfg.n_block} blocks, width {cfg.n_embed}, {heads} of "
        f"{cfg.head_dim}, MLP width {cfg.mlp_width}, context {cfg.context} tokens",
        f"- tokenizer: {TOKENIZERS.get(tokenizer_kind, tokenizer_kind)}, {cfg.vocab_size:,} tokens; no BOS or EOS token is added, and "
        "generation never stops early (ask for the number of new tokens you want)",
        "",
        "## Training data",
        "",
        *_data_lines(ckpt),
        "",
        "## Training",
        "",
        *_training_lines(ckpt),
        "",
        f"## A sample ({sample_settings})",
        "",
        fence + "text",
        sample.strip("\n"),
        fence,
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f"model = AutoModelForCausalLM.from_pretrained({folder!r})",
        f"tokenizer = AutoTokenizer.from_pretrained({folder!r})",
        'ids = tokenizer("It is a truth universally acknowledged", return_tensors="pt").input_ids',
        "print(tokenizer.decode(model.generate(ids, max_new_tokens=100)[0]))",
        "```",
        "",
        f"or with JaneLM: `janelm sample -c {folder}`; fine-tune it with `janelm train --init-from {folder}`.",
        "",
    ])


def card_sample(model, tokenizer, n_tokens: int = 48, seed: int = 0) -> tuple[str, str]:
    """A short text the model writes from a fresh paragraph, and how it was sampled."""
    import torch

    from janelm.config import SamplingOptions
    from janelm.generate import generate_tokens

    opts = SamplingOptions(temperature=0.8, top_p=0.95)
    rng = torch.Generator().manual_seed(seed)
    ids = [int(t) for t in generate_tokens(model, tokenizer.encode("\n"), n_tokens, opts, rng=rng)]
    return tokenizer.decode(ids), f"{n_tokens} tokens, temperature {opts.temperature}, top-p {opts.top_p}, seed {seed}"
