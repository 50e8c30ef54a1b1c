"""Checkpoints: one self-contained file, written atomically, loaded without running code.

A checkpoint is a `torch.save`d dict of plain data and tensors only:
    format, version, janelm_version   what this file is
    model_config, train_config        dicts of the config dataclasses
    tokenizer                         the tokenizer as plain data
    model, optimizer                  state dicts
    state                             step, tokens seen, best val loss, patience count, elapsed
    rng                               Python and torch RNG states

`torch.load(weights_only=True)` refuses any pickle that would build other objects, so a crafted
file cannot run code when loaded.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from janelm import __version__
from janelm.config import ModelConfig
from janelm.errors import InputError
from janelm.tokenizer import Tokenizer, tokenizer_from_dict

FORMAT = "janelm-checkpoint"
VERSION = 1
BEST, LAST = "best.pt", "last.pt"


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` to `path` so that a crash at any moment leaves the old file or the new one,
    never a mix: temporary file, fsync, rename, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, "version": VERSION, "janelm_version": __version__, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def resolve_checkpoint(path: str | Path | None, default_dir: str = "checkpoints") -> Path:
    """A checkpoint file from a file or run folder (its best.pt, else last.pt)."""
    p = Path(path) if path else Path(default_dir)
    if p.is_dir():
        for name in (BEST, LAST):
            if (p / name).is_file():
                return p / name
        raise InputError(f"no checkpoint in {p}/ (looked for {BEST} and {LAST}): train one with `janelm train --out {p}`, or pass -c FILE")
    if not p.exists():
        hint = "train one with `janelm train`" if not path else "check the path"
        raise InputError(f"checkpoint {p} does not exist: {hint}, or pass -c FILE")
    return p


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint file; anything else gets one clear InputError."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses classes and callables: a file that needs them is not ours, and may be hostile.
        raise InputError(f"{path} is not a JaneLM checkpoint: it asks to build objects that safe loading refuses ({str(e).splitlines()[0][:120]})") from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError, UnicodeDecodeError, KeyError) as e:
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise InputError(f"{path} is not a readable JaneLM checkpoint (truncated or another kind of file: {reason})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise InputError(f"{path} is not a JaneLM checkpoint (no JaneLM format marker)")
    if ckpt.get("version") != VERSION:
        raise InputError(
            f"{path} is a JaneLM checkpoint of format version {ckpt.get('version')}, but this janelm "
            f"({__version__}) reads version {VERSION}: use the janelm release that wrote it"
        )
    for key in ("model_config", "tokenizer", "model"):
        if key not in ckpt:
            raise InputError(f"{path} is an incomplete JaneLM checkpoint ({key} is missing)")
    return ckpt


def load_model(path: str | Path | None, device: torch.device | str = "cpu"):
    """The one way commands get a trained model: (model in eval mode, tokenizer, checkpoint dict)."""
    from janelm.model import GPT

    file = resolve_checkpoint(path)
    ckpt = load_checkpoint(file)
    tokenizer = tokenizer_from_dict(ckpt["tokenizer"])
    model = build_model(ckpt, file)
    model.to(device).eval()
    return model, tokenizer, ckpt


def build_model(ckpt: dict[str, Any], file: Path | str = "checkpoint"):
    """A GPT from a checkpoint dict's config and weights, with clear errors for mismatches."""
    from janelm.model import GPT

    try:
        config = ModelConfig.from_dict(ckpt["model_config"])
        model = GPT(config)
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, RuntimeError, KeyError, AttributeError, InputError) as e:
        raise InputError(f"{file} holds weights that do not fit its model config ({str(e).splitlines()[0][:160]})") from None
    return model


def tokenizer_of(ckpt: dict[str, Any]) -> Tokenizer:
    return tokenizer_from_dict(ckpt["tokenizer"])
