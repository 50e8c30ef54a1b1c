"""transformers model folders: read one into a JaneLM checkpoint dict, write one from a checkpoint.

A folder holds ``config.json``, ``model.safetensors`` and ``tokenizer.json`` (and, as written by
`janelm export`, ``generation_config.json``, ``tokenizer_config.json`` and a ``README.md`` model
card). Weights are read from safetensors only: a folder with only pickled weights
(``pytorch_model.bin``) or with weights sharded over several files is refused in one line.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from janelm import __version__
from janelm.config import ModelConfig
from janelm.errors import InputError
from janelm.interop.architectures import (architecture_for, architecture_of, expected_shapes, weights_from_hf,
                                          weights_to_hf)
from janelm.interop.tokenizer_json import from_tokenizer_json, to_tokenizer_json
from janelm.tokenizer import Tokenizer
from janelm.tokenizer.huggingface import HF_EXTRA

if TYPE_CHECKING:
    import torch

CONFIG, WEIGHTS, TOKENIZER = "config.json", "model.safetensors", "tokenizer.json"
# What `janelm sample` does by default, so a pipeline samples the same way; nothing stops early.
GENERATION = {"do_sample": True, "temperature": 0.8, "top_p": 0.95, "top_k": 0,
              "bos_token_id": None, "eos_token_id": None, "pad_token_id": None}


def is_model_folder(path: Path) -> bool:
    return (Path(path) / CONFIG).is_file()


def _read_config(folder: Path) -> dict[str, Any]:
    try:
        hf = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"{folder}/{CONFIG} cannot be read ({getattr(e, 'strerror', None) or str(e)[:80]}): "
                         f"the folder is damaged or not a transformers model") from None
    if not isinstance(hf, dict):
        raise InputError(f"{folder}/{CONFIG} is not a JSON object: the folder is damaged or not a transformers model")
    return hf


def check_folder(folder: Path) -> Path:
    """What can be said of a model folder without torch: a supported architecture, its weights in
    one safetensors file, and a tokenizer.json. Raises InputError; returns the folder."""
    folder = Path(folder)
    hf = _read_config(folder)
    try:
        architecture_of(hf)
    except InputError as e:
        raise InputError(f"{folder}/: {e}") from None
    if not (folder / WEIGHTS).is_file():
        if (folder / f"{WEIGHTS}.index.json").is_file():
            raise InputError(f"{folder}/ holds weights sharded over several files, which JaneLM does not load: save "
                             f"the model as one file (save_pretrained(..., max_shard_size='100GB'))")
        if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
            raise InputError(f"{folder}/ holds pickled weights only (pytorch_model.bin), which JaneLM never loads "
                             f"(pickles can run code): save the model with safetensors (save_pretrained's default)")
        raise InputError(f"{folder}/ has {CONFIG} but no {WEIGHTS}: add the weights, or pass a JaneLM checkpoint")
    if not (folder / TOKENIZER).is_file():
        raise InputError(f"{folder}/ has no {TOKENIZER} (a tokenizers-format tokenizer): save the tokenizer into "
                         f"the folder (a fast tokenizer's save_pretrained writes one)")
    return folder


def load_folder(folder: Path) -> dict[str, Any]:
    """A model folder as a JaneLM checkpoint dict (model_config, tokenizer, model), in memory."""
    from janelm.checkpoint import FORMAT, MAX_CONTEXT, VERSION

    folder = check_folder(folder)
    try:
        hf = _read_config(folder)
        arch = architecture_of(hf)
        cfg = arch.config_from_hf(hf)
        cfg.validate()
        if cfg.context > MAX_CONTEXT:
            raise InputError(f"a context of {cfg.context:,} positions is more than JaneLM allows ({MAX_CONTEXT:,})")
        tokenizer = from_tokenizer_json((folder / TOKENIZER).read_text(encoding="utf-8"))
        state = weights_from_hf(arch, cfg, _read_weights(folder / WEIGHTS, arch, cfg))
    except InputError as e:
        raise InputError(f"{folder}/: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{folder}/ cannot be read ({getattr(e, 'strerror', None) or e}): check its files") from None
    return {"format": FORMAT, "version": VERSION, "janelm_version": __version__, "model_config": asdict(cfg),
            "tokenizer": tokenizer.to_dict(), "model": state, "source": {"folder": str(folder), "architecture": arch.name}}


def _read_weights(file: Path, arch, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The tensors `cfg` needs from a safetensors file, shapes checked before any is read."""
    try:
        from safetensors import SafetensorError, safe_open
    except ImportError:
        raise InputError(f"loading a transformers folder needs safetensors: {HF_EXTRA}") from None
    expected = expected_shapes(arch, cfg)
    try:
        with safe_open(str(file), framework="pt") as f:
            found = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
            # Older GPT-2 files name their tensors without the "transformer." prefix.
            stored = {name: name if name in found else name.removeprefix("transformer.") for name in expected}
            missing = sorted(name for name, key in stored.items() if key not in found)
            spare = set(found) - set(stored.values()) - {"lm_head.weight"}
            unexpected = sorted(name for name in spare if not name.endswith(arch.ignored))
            if missing or unexpected:
                raise InputError(f"{WEIGHTS} does not fit config.json: "
                                 + (f"{missing[0]} is missing" if missing else f"it holds an unexpected {unexpected[0]}"))
            for name, key in stored.items():
                if found[key] != expected[name]:
                    raise InputError(f"{WEIGHTS} does not fit config.json: {key} is {list(found[key])}, expected "
                                     f"{list(expected[name])}")
            return {name: f.get_tensor(key) for name, key in stored.items()}
    except SafetensorError as e:
        raise InputError(f"{WEIGHTS} is damaged or not a safetensors file ({str(e)[:100]})") from None


def check_export_target(out: Path, force: bool) -> None:
    """Refuse, before any work, to write over a file or a non-empty folder (unless `force`)."""
    if out.is_file() or (out.exists() and not out.is_dir()):
        raise InputError(f"{out} is a file, not a folder: choose another OUT")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise InputError(f"{out}/ is not empty: --force to replace it, or choose another OUT")


def write_folder(out: Path, cfg: ModelConfig, state: dict[str, torch.Tensor], tokenizer: Tokenizer,
                 card: str, force: bool) -> str:
    """Write the model as a transformers folder; returns its architecture's name.

    Everything goes to a hidden folder beside `out` first, which then takes its place: an
    interrupted export leaves `out` as it was."""
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise InputError(f"export needs safetensors and tokenizers: {HF_EXTRA}") from None
    arch = architecture_for(cfg)
    check_export_target(out, force)
    tokenizer_json = to_tokenizer_json(tokenizer)
    none = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    config = {**arch.config_to_hf(cfg), **none, "dtype": "float32", "use_cache": True, "janelm_version": __version__}
    tokenizer_config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": cfg.context,
                        "clean_up_tokenization_spaces": False, "add_bos_token": False, "add_eos_token": False}

    staging = out.with_name(f".{out.name}.export-{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        for name, data in ((CONFIG, config), ("generation_config.json", GENERATION),
                           ("tokenizer_config.json", tokenizer_config)):
            (staging / name).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        (staging / TOKENIZER).write_text(tokenizer_json, encoding="utf-8")
        (staging / "README.md").write_text(card, encoding="utf-8")
        save_file({k: v.float() for k, v in weights_to_hf(arch, cfg, state).items()}, str(staging / WEIGHTS),
                  metadata={"format": "pt"})
        os.chmod(staging / WEIGHTS, (staging / CONFIG).stat().st_mode)  # safetensors makes it private (0600)
        _replace_folder(staging, out)
    except OSError as e:
        raise InputError(f"cannot write {out}/ ({e.strerror or e}): choose another OUT") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return arch.name


def _replace_folder(new: Path, out: Path) -> None:
    """Put the folder `new` at `out`; an existing `out` is moved aside first and removed last."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}.tmp")
    if out.exists():
        os.replace(out, old)
    try:
        os.replace(new, out)
    except OSError:
        if old.exists():
            os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
