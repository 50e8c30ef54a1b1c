"""`janelm prepare`: text files, folders, stdin or Gutenberg downloads → a prepared corpus folder."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from janelm.config import ModelConfig
from janelm.console import stderr
from janelm.errors import InputError

BACKOFF_ENV = "JANELM_DOWNLOAD_BACKOFF"
DEFAULT_BACKOFF = 2.0  # seconds before the first retry of a download; doubles after each


def download_backoff() -> float:
    """Seconds before the first retry of a failed download (doubling after each):
    $JANELM_DOWNLOAD_BACKOFF, default 2. Tests and impatient users set it lower."""
    raw = os.environ.get(BACKOFF_ENV, "").strip()
    if not raw:
        return DEFAULT_BACKOFF
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 3600.0:
        raise InputError(f"${BACKOFF_ENV} must be a number of seconds from 0 to 3600, got {raw!r}")
    return value


def check_flags(args: argparse.Namespace) -> None:
    """Flag values that are wrong whatever the input: checked before any text is read."""
    from janelm.tokenizer import MAX_BPE_VOCAB_SIZE, MIN_BPE_VOCAB_SIZE

    if args.extra_weight is not None:
        if not (args.extra or args.extra_gutenberg):
            raise InputError("--extra-weight needs extra sources to weigh: add --extra PATH... or --extra-gutenberg "
                             "BOOKS, or drop it")
        if not 0.0 <= args.extra_weight <= 1.0:
            raise InputError(f"--extra-weight must be from 0 to 1 (the share of training windows drawn from the "
                             f"extra sources), got {args.extra_weight}")
    if not 0.0 < args.val_fraction < 0.5:
        raise InputError(f"--val-fraction must be between 0 and 0.5, got {args.val_fraction}")
    if args.tokenizer == "bpe" and not args.tokenizer_from:
        if args.vocab_size < MIN_BPE_VOCAB_SIZE:
            raise InputError(f"--vocab-size must be at least {MIN_BPE_VOCAB_SIZE} for bpe (256 byte tokens + merges), "
                             f"got {args.vocab_size}")
        if args.vocab_size > MAX_BPE_VOCAB_SIZE:
            raise InputError(f"--vocab-size {args.vocab_size} is too large for bpe: use at most {MAX_BPE_VOCAB_SIZE} "
                             f"(up to 65536 keeps token ids in uint16)")
    if args.tokenizer_sample < 1:
        raise InputError(f"--tokenizer-sample must be positive, got {args.tokenizer_sample}")


def run(args: argparse.Namespace) -> int:
    from janelm.bundled import bundled_works
    from janelm.corpus import iter_sources
    from janelm.files import locked_folder, remove_created
    from janelm.gutenberg import parse_books
    from janelm.preparation import EXTRA, MAIN, check_out_dir

    check_flags(args)
    bundled = not args.paths and not args.gutenberg  # no main text given: Austen's works, bundled
    paths = [w.source for w in bundled_works().values()] if bundled else args.paths
    # Per group: eBook numbers to download, then local sources; all checked before anything is fetched.
    groups = {MAIN: (parse_books(args.gutenberg) if args.gutenberg else [], iter_sources(paths) if paths else []),
              EXTRA: (parse_books(args.extra_gutenberg, "--extra-gutenberg") if args.extra_gutenberg else [],
                      iter_sources(args.extra) if args.extra else [])}
    backoff = download_backoff() if args.gutenberg or args.extra_gutenberg else DEFAULT_BACKOFF
    out = Path(args.out)
    # One prepare per folder; a failed one removes the folders it created.
    with locked_folder(out, "prepare"):
        check_out_dir(out, args.force)
        try:
            return prepare(args, out, groups, backoff, bundled)
        except BaseException:
            remove_created(out / "raw", out / "raw")  # an empty download cache; one with books stays
            raise


def prepare(args: argparse.Namespace, out: Path, groups: dict[str, tuple[list[int], list]], backoff: float,
            bundled: bool) -> int:
    from janelm.console import note
    from janelm.preparation import MAIN, Work, check_no_leaks, download_work, load_work, write_corpus

    works: list[Work] = []
    options = {"clean": args.clean, "ascii": args.ascii, "val_fraction": args.val_fraction}
    for group, (books, sources) in groups.items():
        works += [download_work(number, out / "raw", args.mirror, backoff, **options, group=group) for number in books]
        works += [load_work(source, **options, group=group) for source in sources]
    if bundled:  # the first line says what a bare `janelm prepare` took, and how to give it other text
        mains = [w for w in works if w.group == MAIN]
        note(f"no text given: preparing the {len(mains)} works of Jane Austen bundled with JaneLM "
             f"({sum(w.info['chars'] for w in mains):,} characters; austen:NAME picks some, e.g. austen:emma); "
             f"for other text give files or folders (janelm prepare FILE...), or download with --gutenberg")
    check_no_leaks(works)

    tokenizer = make_tokenizer(args, works)
    settings = {**options, "tokenizer": args.tokenizer, "vocab_size": args.vocab_size,
                "tokenizer_from": args.tokenizer_from, "tokenizer_sample_chars": args.tokenizer_sample}
    meta = write_corpus(out, works, tokenizer, settings, min_tokens=min(ModelConfig().context, 64) + 2,
                        extra_weight=args.extra_weight)
    show_summary(out, meta)
    return 0


def make_tokenizer(args: argparse.Namespace, works):
    from janelm.tokenizer import train_tokenizer

    if args.tokenizer_from:
        from janelm.checkpoint import checkpoint_tokenizer, load_checkpoint, resolve_checkpoint

        path = resolve_checkpoint(args.tokenizer_from)
        return checkpoint_tokenizer(load_checkpoint(path), path)
    # All training text, main and extra: the sample bound takes the same leading share of every work.
    texts = [w.train for w in works]
    if args.tokenizer == "char":
        # Every character must have an id, or encoding the validation split fails on a letter
        # that only appears there (an 'à' in one novel's last tenth): the vocabulary is all of it.
        texts += [w.val for w in works]
    # A progress bar only for a person watching: in a log or a pipe it is noise around the one error line.
    return train_tokenizer(args.tokenizer, texts, args.vocab_size, progress=sys.stderr.isatty(),
                           max_chars=args.tokenizer_sample)


def show_summary(out: Path, meta: dict) -> None:
    from rich.table import Table

    grouped = "train_ranges" in meta
    table = Table(title=f"prepared corpus in {out}/", title_justify="left")
    for col in ("source", *(("group",) if grouped else ()), "train chars", "val chars", "train tokens", "val tokens"):
        table.add_column(col, justify="left" if col in ("source", "group") else "right")
    for s in meta["sources"]:
        table.add_row(Path(s["source"]).name, *((s["group"],) if grouped else ()), f"{s['train_chars']:,}",
                      f"{s['val_chars']:,}", f"{s['train_tokens']:,}", f"{s['val_tokens']:,}")
    tok = meta["tokenizer"]
    cpt = meta["chars_per_token"]["train"]
    table.caption = (f"tokenizer {tok['kind']}, vocabulary {tok['vocab_size']:,}, "
                     f"{cpt:.2f} characters per token" if cpt else f"tokenizer {tok['kind']}")
    if grouped:
        weight = meta["extra_weight"]
        table.caption += ("; training mixes all text plainly" if weight is None else
                          f"; {weight:.0%} of training windows from the extra sources")
    stderr().print(table)
