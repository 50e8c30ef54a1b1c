"""Building a prepared corpus folder: text → cleaned works → per-work splits → tokenizer → token files.

The folder is written through a temporary sub-folder and its files renamed into place only when
all are complete, so a failed or interrupted prepare never leaves a corpus that looks whole, and
never damages one already there.

Reading and checking the input imports no torch (janelm.data is imported where token files are
written), so a mistyped path or a bad file fails in a fraction of a second.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from janelm import __version__
from janelm.corpus import clean_gutenberg, normalise, read_text, split_work
from janelm.errors import InputError
from janelm.tokenizer import Tokenizer


@dataclass
class Work:
    """One source text after cleaning and splitting."""

    name: str
    train: str
    val: str
    info: dict[str, Any] = field(default_factory=dict)


def load_work(source: Path | str, *, clean: bool, ascii: bool, val_fraction: float,
              extra: dict[str, Any] | None = None) -> Work:
    """Read, clean and split one source; `info` records where it came from and its sizes."""
    raw = read_text(source)
    text = clean_gutenberg(raw, ascii=ascii) if clean else normalise(raw)
    name = "stdin" if source == "-" else str(source)
    if not text.strip():
        raise InputError(f"{name}: no text left after cleaning: check the file, or use --no-clean")
    train, val = split_work(text, val_fraction)
    info = {"source": name, "sha256": hashlib.sha256(raw.encode()).hexdigest(), "chars": len(text),
            "train_chars": len(train), "val_chars": len(val), **(extra or {})}
    return Work(name, train, val, info)


def check_out_dir(out: Path, force: bool) -> Path | None:
    """Refuse to replace a corpus unless asked, and fail early on a folder we cannot write.

    Creates `out` (and missing parents) when needed; returns the top-most folder it created,
    or None, so a failed prepare can remove what it made (see `remove_created`)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, not a folder: choose another --out")
    if out.is_dir():
        from janelm.data import META_FILE

        if (out / META_FILE).exists() and not force:
            raise InputError(f"{out}/ already holds a prepared corpus: use --force to replace it, or --out NEW_FOLDER")
    top = None
    for folder in (out, *out.parents):
        if folder.exists():
            break
        top = folder
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{time.time_ns()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        remove_created(out, top)
        raise InputError(f"cannot write to {out}/ ({e.strerror or e}): choose another --out") from None
    return top


def remove_created(out: Path, top: Path | None) -> None:
    """Remove the folders from `out` up to `top` that a failed command created, as long as they
    are empty: a download cache (out/raw) is worth keeping, and keeps them."""
    if top is None or (out != top and top not in out.parents):
        return
    for folder in (out, *out.parents):
        try:
            folder.rmdir()
        except OSError:
            return
        if folder == top:
            return


def write_corpus(out: Path, works: list[Work], tokenizer: Tokenizer, settings: dict[str, Any],
                 min_tokens: int, progress: Callable[[str, int], Any] | None = None) -> dict[str, Any]:
    """Encode the works and write token files, tokenizer and meta.json into `out`; returns meta."""
    from janelm.data import META_FILE, SPLITS, TOKENIZER_FILE, TokenWriter, token_dtype, tokenizer_fingerprint, write_json

    staging = out / ".prepare-tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        counts, chars = {}, {}
        for split in SPLITS:
            writer = TokenWriter(staging / f"{split}.bin", tokenizer.vocab_size)
            chars[split] = 0
            for work in works:
                text, before = getattr(work, split), writer.count
                # Paragraph by paragraph: bounded memory, and newlines are token boundaries anyway.
                for para in text.splitlines(keepends=True):
                    writer.write(tokenizer.encode(para))
                chars[split] += len(text)
                work.info[f"{split}_tokens"] = writer.count - before
                if progress:
                    progress(split, len(text))
            writer.close()
            counts[split] = writer.count
        if counts["train"] < min_tokens:
            raise InputError(
                f"the corpus is too short: {counts['train']} training tokens, fewer than one context "
                f"window ({min_tokens}): give more text"
            )
        meta = {
            "janelm_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "tokenizer": {"kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size,
                          "fingerprint": tokenizer_fingerprint(tokenizer)},
            "token_dtype": token_dtype(tokenizer.vocab_size),
            "settings": settings,
            "sources": [w.info for w in works],
            "tokens": counts,
            "chars": chars,
            "chars_per_token": {s: chars[s] / counts[s] if counts[s] else None for s in SPLITS},
        }
        write_json(staging / TOKENIZER_FILE, tokenizer.to_dict())
        write_json(staging / META_FILE, meta)
        # meta.json marks a complete corpus: remove the old one first, put the new one in last.
        (out / META_FILE).unlink(missing_ok=True)
        for name in ("train.bin", "val.bin", TOKENIZER_FILE, META_FILE):
            (staging / name).replace(out / name)
        return meta
    finally:
        shutil.rmtree(staging, ignore_errors=True)
