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

torch is imported only where a tensor is needed: `check_checkpoint_file` (a missing, empty,
truncated or foreign file) answers before it, so such mistakes fail in a fraction of a second.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from janelm import __version__
from janelm.config import ModelConfig
from janelm.errors import InputError, first_line
from janelm.files import atomic_write
from janelm.tokenizer import Tokenizer, tokenizer_from_dict

if TYPE_CHECKING:
    import torch

FORMAT = "janelm-checkpoint"
VERSION = 1
BEST, LAST = "best.pt", "last.pt"
MAX_CONTEXT = 1 << 20  # a sanity bound for configs read from files, far above any real run


def refuse_to_overwrite(out_dir: Path) -> None:
    """A new run never silently replaces another run's checkpoints."""
    existing = [n for n in (LAST, BEST) if (out_dir / n).exists()]
    if existing:
        raise InputError(f"{out_dir}/ already holds a run ({', '.join(existing)}): --resume to continue it, "
                         f"--force to replace it, or --out NEW_FOLDER")


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` to `path` atomically (`janelm.files.atomic_write`): a crash at any moment
    leaves the old file or the new one, and a failed write (a full disk) raises WriteFailure
    naming the file, with the old one intact."""
    import torch

    def write(file) -> None:
        keeper = _ErrorKeepingFile(file)
        try:
            torch.save({"format": FORMAT, "version": VERSION, "janelm_version": __version__, **payload}, keeper)
        except RuntimeError:
            if keeper.error is not None:
                raise keeper.error from None
            raise

    atomic_write(Path(path), write)


class _ErrorKeepingFile:
    """torch.save reports a failed write as an opaque RuntimeError ("unexpected pos …") and drops
    its errno: this wrapper keeps the OSError so the user hears "no space left on device".
    Streaming through it, rather than serialising into memory first, keeps the memory flat."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        try:
            self.file.flush()
        except OSError as e:
            self.error = self.error or e
            raise


def resolve_checkpoint(path: str | Path | None, default_dir: str = "checkpoints") -> Path:
    """A checkpoint file from a file or run folder (its best.pt, else last.pt), or a transformers
    model folder (`janelm.interop`), which every loading function below takes as a checkpoint."""
    p = Path(path) if path else Path(default_dir)
    if p.is_dir():
        for name in (BEST, LAST):
            if (p / name).is_file():
                return p / name
        from janelm.interop.folder import is_model_folder

        if is_model_folder(p):
            return p
    if p == Path(default_dir) and (p.is_dir() or not p.exists()):  # the first `sample`, before any `train`
        raise InputError(f"no trained model in {p}/ yet: run `janelm train` first, or pass -c CKPT")
    if p.is_dir():
        raise InputError(f"no checkpoint in {p}/ (looked for {BEST}, {LAST} and a transformers config.json): "
                         f"train one with `janelm train --out {p}`, or pass -c CKPT")
    if not p.exists():
        raise InputError(f"checkpoint {p} does not exist: check the path, or pass -c CKPT")
    return p


ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive; JaneLM never wrote anything else


def _refused_global(message: str) -> str | None:
    """The callable a pickle asked for that `weights_only` refused, from torch's message."""
    match = re.search(r"GLOBAL ([\w.]+)", message)
    return match.group(1) if match else None


def _not_an_archive(path: Path, head: bytes) -> InputError:
    """The error for a file that is not a zip archive, saying what it looks like instead."""
    fix = "pass a .pt file written by `janelm train`, or its run folder"
    if not head:
        return InputError(f"{path} is empty, not a JaneLM checkpoint: {fix}")
    if head[:1] == b"\x80":
        return InputError(f"{path} is a bare Python pickle, not a JaneLM checkpoint (refused unread: pickles can run code): {fix}")
    try:
        head.decode("utf-8")
        looks_like_text = b"\x00" not in head
    except UnicodeDecodeError as e:
        looks_like_text = e.start > len(head) - 4  # a character cut at the end of the sample
    if looks_like_text:
        return InputError(f"{path} is a text file, not a JaneLM checkpoint: {fix}")
    return InputError(f"{path} is not a JaneLM checkpoint (not a PyTorch checkpoint archive): {fix}")


def check_checkpoint_file(path: str | Path) -> Path:
    """Everything that can be said about a checkpoint file without torch: it exists, is readable,
    and is a complete PyTorch archive (or a model folder JaneLM can load). Raises InputError; returns the path."""
    path = Path(path)
    if path.is_dir():
        from janelm.interop.folder import check_folder

        return check_folder(path)
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as e:
        raise InputError(f"cannot read checkpoint {path} ({e.strerror or e}): check the path and its permissions") from None
    if not head.startswith(ZIP_MAGIC):
        raise _not_an_archive(path, head)
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except Exception:  # noqa: BLE001 - BadZipFile, EOFError, NotImplementedError (a damaged header)...
        raise InputError(f"{path} is a damaged or truncated checkpoint (its archive is incomplete): "
                         f"use another checkpoint (a run keeps best.pt and last.pt) or train again") from None
    if not any(name.endswith("/data.pkl") for name in names):
        raise InputError(f"{path} is a zip archive but not a PyTorch checkpoint: pass a .pt file written by "
                         f"`janelm train`, or its run folder")
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint file; anything else gets one clear InputError.

    Nothing in the file is trusted: it is opened as a zip archive first, then unpickled with
    `weights_only=True` (plain data and tensors only), and every failure to read it, whatever
    its type, means the same thing to the user: this file is not a checkpoint JaneLM can use.
    A transformers model folder is converted in memory (`janelm.interop.folder`)."""
    path = check_checkpoint_file(path)
    if path.is_dir():
        from janelm.interop.folder import load_folder

        return load_folder(path)
    import torch

    try:
        with warnings.catch_warnings():
            # A damaged file can make torch warn (e.g. of an unknown pickle protocol) before it
            # fails: the user gets one error line, not a warning around it.
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        refused = _refused_global(str(e))
        if refused:
            # weights_only refuses classes and callables: a file that needs them is not ours, and may be hostile.
            raise InputError(f"{path} is not a JaneLM checkpoint: it asks to run {refused}, which safe loading "
                             f"refuses (a crafted or foreign file; it was not loaded)") from None
        raise InputError(f"{path} is a damaged JaneLM checkpoint (its data cannot be read): "
                         f"use another checkpoint (a run keeps best.pt and last.pt) or train again") from None
    except MemoryError:
        raise InputError(f"{path} is a damaged checkpoint (it asks for more memory than there is)") from None
    except Exception as e:  # noqa: BLE001 - a foreign or damaged file can fail in any way
        if isinstance(e, RuntimeError) and "archive" in str(e) and "subdirectory" in str(e):
            raise InputError(f"{path} is a zip archive but not a PyTorch checkpoint: pass a .pt file written by "
                             f"`janelm train`, or its run folder") from None
        raise InputError(f"{path} is a damaged or foreign checkpoint that cannot be read ({first_line(e)}): "
                         f"use another checkpoint (a run keeps best.pt and last.pt) or train again") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise InputError(f"{path} is not a JaneLM checkpoint (a PyTorch file without JaneLM's format marker)")
    version = ckpt.get("version")
    if version != VERSION:
        raise InputError(
            f"{path} is a JaneLM checkpoint of format version {version!r}, but this janelm "
            f"({__version__}) reads version {VERSION}: use the janelm release that wrote it "
            f"(janelm {str(ckpt.get('janelm_version', 'unknown'))[:40]})"
        )
    for key in ("model_config", "tokenizer", "model"):
        if key not in ckpt:
            raise InputError(f"{path} is an incomplete JaneLM checkpoint ({key} is missing)")
    return ckpt


def load_model(path: str | Path | None, device: torch.device | str = "cpu", dtype=None, quantize: str | None = None):
    """The one way commands get a trained model: (model in eval mode, tokenizer, checkpoint dict).
    `dtype` and `quantize` set the weights' precision (`janelm.quantize.inference_weights`)."""
    file = check_checkpoint_file(resolve_checkpoint(path))
    ckpt = load_checkpoint(file)
    tokenizer = checkpoint_tokenizer(ckpt, file)
    model = build_model(ckpt, file)
    if tokenizer.vocab_size != model.config.vocab_size:
        raise InputError(f"{file} is inconsistent: its tokenizer has {tokenizer.vocab_size} tokens but its model "
                         f"{model.config.vocab_size}: use another checkpoint or train again")
    from janelm.quantize import inference_weights

    return inference_weights(model, device, dtype, quantize), tokenizer, ckpt


def checkpoint_tokenizer(ckpt: dict[str, Any], file: Path | str = "checkpoint") -> Tokenizer:
    """The checkpoint's tokenizer; a damaged one is an InputError naming the file."""
    try:
        return tokenizer_from_dict(ckpt["tokenizer"])
    except InputError as e:
        raise InputError(f"{file}: {e}") from None
    except Exception as e:  # noqa: BLE001 - damaged data can fail in any way
        raise InputError(f"{file} holds a damaged tokenizer ({first_line(e)}): use another checkpoint or train again") from None


def build_model(ckpt: dict[str, Any], file: Path | str = "checkpoint"):
    """A GPT (or an ensemble of them) from a checkpoint dict's config and weights, with clear errors for mismatches.

    The weights' shapes are checked against a model built on the `meta` device (no memory)
    first, so a damaged config cannot make us allocate a huge model before failing."""
    import torch

    from janelm.ensemble import make_model
    from janelm.model import weights_uninitialised

    def unfit(detail: str) -> InputError:
        return InputError(f"{file} holds weights that do not fit its model config ({detail[:160]})")

    try:
        config = ModelConfig.from_dict(ckpt["model_config"])
        state = ckpt["model"]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise unfit("the weights are not a dict of tensors")
        if not isinstance(config.n_block, int) or config.n_block > len(state):
            raise unfit(f"{config.n_block!r} blocks but {len(state)} tensors")
        if not isinstance(config.context, int) or config.context > MAX_CONTEXT:
            # Rotary tables grow with the context but hold no weights: the shapes cannot catch it.
            raise unfit(f"a context of {config.context!r} positions (at most {MAX_CONTEXT:,})")
        with torch.device("meta"), weights_uninitialised():
            shell = make_model(config)
        expected = {k: tuple(v.shape) for k, v in shell.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in state.items()}
        if expected != found:
            missing = sorted(expected.keys() - found.keys())
            extra = sorted(found.keys() - expected.keys())
            wrong = sorted(k for k in expected.keys() & found.keys() if expected[k] != found[k])
            detail = (f"missing {missing[0]}" if missing else f"unexpected {extra[0]}" if extra else
                      f"{wrong[0]} is {list(found[wrong[0]])}, expected {list(expected[wrong[0]])}")
            raise unfit(detail)
        with weights_uninitialised():  # every weight is loaded next
            model = make_model(config)
        model.load_state_dict(state)
    except InputError as e:
        if str(e).startswith(str(file)):
            raise
        raise unfit(str(e)) from None
    except Exception as e:  # noqa: BLE001 - damaged data can fail in any way
        raise unfit(first_line(e, 160)) from None
    return model

