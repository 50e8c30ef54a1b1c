"""Building a prepared corpus folder: text → cleaned works → per-work splits → tokenizer → token files.

Works come in two groups. The main sources (`janelm prepare PATH...`, `--gutenberg`) are split
into training and validation text; the extra sources (`--extra`, `--extra-gutenberg`) are
training text only, written after the main ones in train.bin, so the validation figure stays on
the main sources' own text. A corpus without extras is written exactly as before groups existed.

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
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from janelm import __version__
from janelm.bundled import find_work, is_bundled
from janelm.cleaning import clean_gutenberg
from janelm.corpus import normalise, read_text, split_work
from janelm.errors import InputError
from janelm.files import reporting_write_failures
from janelm.tokenizer import Tokenizer


MAIN, EXTRA = "main", "extra"
# Validation paragraphs at least this long must not appear in the extra text (shorter ones, such as
# "CHAPTER I" or "THE END", recur between books without leaking anything).
LEAK_MIN_CHARS = 80


@dataclass
class Work:
    """One source text after cleaning and splitting."""

    name: str
    train: str
    val: str
    info: dict[str, Any] = field(default_factory=dict)
    group: str = MAIN


def load_work(source: Path | str, *, clean: bool, ascii: bool, val_fraction: float,
              info: dict[str, Any] | None = None, group: str = MAIN) -> Work:
    """Read, clean and split one source (an extra one is all training text); `info` records where
    it came from and its sizes (and a bundled work's title and eBook number)."""
    if is_bundled(source):
        work = find_work(str(source))
        info = {"gutenberg": work.gutenberg, "title": work.title, **(info or {})}
    raw = read_text(source)
    text = clean_gutenberg(raw, ascii=ascii) if clean else normalise(raw)
    name = "stdin" if source == "-" else str(source)
    if not text.strip():
        raise InputError(f"{name}: no text left after cleaning: check the file, or use --no-clean")
    train, val = split_work(text, val_fraction if group == MAIN else 0.0)
    info = {"source": name, "sha256": hashlib.sha256(raw.encode()).hexdigest(), "chars": len(text),
            "train_chars": len(train), "val_chars": len(val), **(info or {})}
    return Work(name, train, val, info, group)


def download_work(number: int, raw_dir: Path, mirror: str, backoff: float, *, clean: bool, ascii: bool,
                  val_fraction: float, group: str = MAIN) -> Work:
    """Fetch eBook `number` into `raw_dir` (or find it there intact) and load it as a work."""
    from janelm.gutenberg import TITLES, fetch_book, sha256_file

    path, _ = fetch_book(number, raw_dir, mirror, backoff=backoff, progress=sys.stderr.isatty())
    info = {"gutenberg": number, "title": TITLES.get(number), "raw_sha256": sha256_file(path)}
    return load_work(path, clean=clean, ascii=ascii, val_fraction=val_fraction, info=info, group=group)


def check_no_leaks(works: list[Work]) -> None:
    """Refuse extra text that holds main validation text: the same file in both groups, or any
    long paragraph of a main work's validation split (the same novel from another download)."""
    mains = [w for w in works if w.group == MAIN]
    by_hash = {w.info["sha256"]: w for w in mains}
    held_out = {para: w for w in mains for para in w.val.splitlines() if len(para) >= LEAK_MIN_CHARS}
    for extra in (w for w in works if w.group == EXTRA):
        if main := by_hash.get(extra.info["sha256"]):
            raise InputError(f"--extra {extra.name} is the same text as the main source {main.name} (equal sha256), so "
                             f"training would see its validation split: give it once, as a main source")
        leak = next((para for para in extra.train.splitlines() if para in held_out), None)
        if leak is not None:
            raise InputError(f"--extra {extra.name} holds a paragraph of {held_out[leak].name}'s validation split "
                             f"(“{leak[:40]}…”), which training would see: leave that text out of --extra")


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse to replace a corpus unless asked (called with the folder locked, `janelm.files.locked_folder`)."""
    from janelm.data import META_FILE

    if (out / META_FILE).exists() and not force:
        raise InputError(f"{out}/ already holds a prepared corpus: use --force to replace it, or --out NEW_FOLDER")


def write_corpus(out: Path, works: list[Work], tokenizer: Tokenizer, settings: dict[str, Any],
                 min_tokens: int, progress: Callable[[str, int], Any] | None = None,
                 extra_weight: float | None = None) -> dict[str, Any]:
    """Encode the works and write token files, tokenizer and meta.json into `out`; returns meta.

    Main works come first in train.bin, extra ones after; `extra_weight` is the corpus's default
    share of training windows from the extras (None: plain mixing)."""
    from janelm.data import META_FILE, SPLITS, TOKENIZER_FILE, TokenWriter, token_dtype, tokenizer_fingerprint

    works = sorted(works, key=lambda w: w.group == EXTRA)  # stable: main works keep their order
    grouped = any(w.group == EXTRA for w in works)  # without extras, meta.json is as it always was
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
            "sources": [{**w.info, "group": w.group} if grouped else w.info for w in works],
            "tokens": counts,
            "chars": chars,
            "chars_per_token": {s: chars[s] / counts[s] if counts[s] else None for s in SPLITS},
        }
        if grouped:
            meta.update(group_meta(works, extra_weight))
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


def group_meta(works: list[Work], extra_weight: float | None) -> dict[str, Any]:
    """meta.json's record of the groups: each group's [start, end) in train.bin (main first), and
    the default mix."""
    boundary = sum(w.info["train_tokens"] for w in works if w.group == MAIN)
    total = sum(w.info["train_tokens"] for w in works)
    return {"train_ranges": {MAIN: [0, boundary], EXTRA: [boundary, total]}, "extra_weight": extra_weight}
