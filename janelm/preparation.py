"""Building a prepared corpus folder: text → cleaned works → per-work splits → tokenizer → token files.

The folder is written through a temporary sub-folder and its files renamed into place only when
all are complete, so a failed or interrupted prepare never leaves a corpus that looks whole, and
never damages one already there.

Reading and checking the input imports no torch (janelm.data is imported where token files are
written), so a mistyped path or a bad file fails in a fraction of a second.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from janelm import __version__
from janelm.corpus import clean_gutenberg, normalise, read_text, split_work
from janelm.errors import InputError
from janelm.files import reporting_write_failures
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


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse to replace a corpus unless asked (called with the folder locked, `janelm.files.locked_folder`)."""
    from janelm.data import META_FILE

    if (out / META_FILE).exists() and not force:
        raise InputError(f"{out}/ already holds a prepared corpus: use --force to replace it, or --out NEW_FOLDER")


def write_corpus(out: Path, works: list[Work], tokenizer: Tokenizer, settings: dict[str, Any],
                 min_tokens: int, progress: Callable[[str, int], Any] | None = None) -> dict[str, Any]:
    """Encode the works and write token files, tokenizer and meta.json into `out`; returns meta."""
    from janelm.data import META_FILE, SPLITS, TOKENIZER_FILE, TokenWriter, token_dtype, tokenizer_fingerprint

    staging = out / ".prepare-tmp"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with reporting_write_failures(out):
            staging.mkdir(parents=True)
        counts, chars = {}, {}
        for split in SPLITS:
            chars[split] = 0
            with reporting_write_failures(out / f"{split}.bin"), \
                    TokenWriter(staging / f"{split}.bin", tokenizer.vocab_size) as writer:
                for work in works:
                    text, before = getattr(work, split), writer.count
                    # Paragraph by paragraph: bounded memory, and newlines are token boundaries anyway.
                    for para in text.splitlines(keepends=True):
                        writer.write(tokenizer.encode(para))
                    chars[split] += len(text)
                    work.info[f"{split}_tokens"] = writer.count - before
                    if progress:
                        progress(split, len(text))
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
        for name, data in ((TOKENIZER_FILE, tokenizer.to_dict()), (META_FILE, meta)):
            with reporting_write_failures(out / name):
                (staging / name).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        # meta.json marks a complete corpus: remove the old one first, put the new one in last.
        with reporting_write_failures(out / META_FILE):
            (out / META_FILE).unlink(missing_ok=True)
        for name in ("train.bin", "val.bin", TOKENIZER_FILE, META_FILE):
            with reporting_write_failures(out / name):
                (staging / name).replace(out / name)
        return meta
    finally:
        shutil.rmtree(staging, ignore_errors=True)
