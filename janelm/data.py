"""Token files on disk and the batches the trainer draws from them.

A prepared corpus folder holds:
    train.bin, val.bin   token ids, uint16 (or uint32 for vocabularies over 65,536), memory-mapped
    tokenizer.json       the tokenizer as plain data
    meta.json            sources, counts, and the token dtype

A corpus prepared with `--extra` sources holds two groups of training text: train.bin is the main
sources' training tokens, then the extra sources' (training-only text), and meta.json's
`train_ranges` gives each group's [start, end). val.bin is the main sources' alone.

Batches are a pure function of (seed, step): every step's global batch of window offsets comes
from a generator seeded with both, so a resumed run draws exactly what an uninterrupted one would,
and the global batch is the same whatever the number of processes sharing it. A window lies
inside one group; `Mix` says how often each group is drawn, and where a schedule moves that share
(janelm.mixing), the step's place in it is a function of the step too (janelm.schedule.mix_progress).
"""

from __future__ import annotations

import hashlib
import json
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch

from janelm.config import PrepareDefaults, TrainConfig
from janelm.errors import InputError
from janelm.mixing import Share, as_given, parse_extra_weight
from janelm.schedule import mix_step_progress
from janelm.tokenizer import Tokenizer, tokenizer_from_dict

META_FILE, TOKENIZER_FILE = "meta.json", "tokenizer.json"
SPLITS = ("train", "val")


def token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    """A short hash of the tokenizer's data: equal fingerprints mean identical token ids."""
    blob = json.dumps(tokenizer.to_dict(), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class TokenWriter:
    """Appends token ids to a .bin file in chunks, so a large corpus never sits in memory as ints."""

    def __init__(self, path: Path, vocab_size: int):
        self.path, self.count = path, 0
        self.typecode = "H" if token_dtype(vocab_size) == "uint16" else "I"
        self.file = open(path, "wb")

    def write(self, ids: Iterable[int]) -> None:
        chunk = array(self.typecode, ids)
        if chunk.itemsize * 8 != (16 if self.typecode == "H" else 32):
            raise RuntimeError("unexpected C integer size on this platform")
        chunk.tofile(self.file)
        self.count += len(chunk)

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> "TokenWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_tokens(path: Path, dtype: str) -> torch.Tensor:
    """Memory-map a token file as a 1-D tensor (pages are read on demand, not copied up front)."""
    torch_dtype = torch.uint16 if dtype == "uint16" else torch.uint32
    itemsize = 2 if dtype == "uint16" else 4
    size = path.stat().st_size // itemsize
    if size == 0:
        return torch.zeros(0, dtype=torch.int64)
    return torch.from_file(str(path), shared=False, size=size, dtype=torch_dtype)


@dataclass(frozen=True)
class Mix:
    """Where training windows come from: the main tokens are train[:extra_start], the extra ones
    train[extra_start:] (None: a corpus without extras). `extra_weight` is the share of windows drawn
    from the extra group, fixed or a schedule; None mixes plainly, every window equally likely
    wherever it lies."""

    extra_start: int | None = None
    extra_weight: float | Share | None = None

    @property
    def share(self) -> Share | None:
        """The share as a schedule: a fixed one starts and ends on it."""
        weight = self.extra_weight
        return Share(weight, weight) if isinstance(weight, (int, float)) else weight

    def describe(self, given: float | str, cfg: TrainConfig) -> str:
        """The run's line about its mix: the extra text's share of the training windows, and for a
        schedule the steps where it moves (`given`: --extra-weight as TrainConfig holds it)."""
        origin = f"--extra-weight {as_given(given)}" if parse_extra_weight(given) is not None else \
            "the corpus's default, from janelm prepare --extra-weight"
        share = self.share
        if share is None:
            return "mix: plain, every window of the training text equally likely (--extra-weight sets a share)"
        if share.start == share.end:
            return f"mix: {share.start:.0%} of the training windows from the extra sources ({origin})"
        # Steps as the log counts them: the one at index i is step i + 1.
        last = f"step {cfg.max_iters:,}" if cfg.max_iters else "the last step (planned after warm-up)"
        if share.switch is None:
            moves = (f"{share.start:.0%} through warm-up ({cfg.warmup_iters:,} steps), then linearly to {share.end:.0%} "
                     f"at {last}")
        elif cfg.max_iters:
            switch = next((i for i in range(cfg.max_iters) if mix_step_progress(cfg, i) >= share.switch), cfg.max_iters)
            moves = f"{share.start:.0%} to step {switch:,}, then {share.end:.0%} to {last}"
        else:
            moves = (f"{share.start:.0%}, then {share.end:.0%} from {share.switch:.0%} of the way from the end of "
                     f"warm-up ({cfg.warmup_iters:,} steps) to {last}")
        return f"mix: the extra sources' share of the training windows is {moves} ({origin})"


@dataclass
class Corpus:
    """A prepared corpus: tokenizer, metadata and the two token splits."""

    path: Path
    meta: dict[str, Any]
    tokenizer: Tokenizer
    train: torch.Tensor
    val: torch.Tensor

    @property
    def extra_start(self) -> int | None:
        """Where the extra sources' tokens begin in train (None: the corpus has no extras)."""
        ranges = self.meta.get("train_ranges")
        return ranges["extra"][0] if ranges else None

    def mix(self, extra_weight: float | str | None = None) -> Mix:
        """The training mix: `extra_weight` as --extra-weight takes it (janelm.mixing: a share from 0
        to 1 or a schedule), or None (or negative) for the corpus's own default (`janelm prepare
        --extra-weight`, else plain mixing)."""
        weight = None if extra_weight is None else parse_extra_weight(extra_weight)
        if self.extra_start is None:
            if weight:  # a schedule, or a share above 0: what would it draw?
                raise InputError(f"--extra-weight {as_given(extra_weight)}: {self.path}/ has no extra sources to draw "
                                 f"from: prepare it with `janelm prepare PATH... --extra PATH...`, or drop the flag")
            return Mix()
        return Mix(self.extra_start, self.meta.get("extra_weight") if weight is None else weight)


def check_corpus_folder(path: Path) -> str:
    """Refuse a folder that holds no prepared corpus, before anything is loaded; returns the fix
    that errors about the folder give: the `janelm prepare` that writes it."""
    if path == Path(PrepareDefaults.out):  # the newcomer's case: a bare `janelm prepare` writes it
        fix = "run `janelm prepare` first (the Austen bundled with JaneLM, or text you give it), or pass --data FOLDER"
    else:
        fix = f"run `janelm prepare TEXT... --out {path}` first, or pass --data FOLDER"
    if not path.is_dir():
        raise InputError(f"no prepared corpus at {path}/: {fix}")
    for name in (META_FILE, TOKENIZER_FILE, "train.bin", "val.bin"):
        if not (path / name).is_file():
            raise InputError(f"{path}/ is not a prepared corpus ({name} is missing): {fix}")
    return fix


def load_corpus(path: str | Path) -> Corpus:
    """Open a folder written by `janelm prepare`, with a clear error for anything missing."""
    path = Path(path)
    fix = check_corpus_folder(path)
    try:
        meta = json.loads((path / META_FILE).read_text())
        tokenizer = tokenizer_from_dict(json.loads((path / TOKENIZER_FILE).read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}/ holds a damaged {META_FILE} or {TOKENIZER_FILE} ({e}): {fix}") from None
    dtype = meta.get("token_dtype", token_dtype(tokenizer.vocab_size))
    train, val = (load_tokens(path / f"{split}.bin", dtype) for split in SPLITS)
    if len(train) == 0:
        raise InputError(f"{path}/train.bin holds no tokens: {fix}")
    if "train_ranges" in meta and not ranges_fit(meta["train_ranges"], len(train)):
        raise InputError(f"{path}/{META_FILE}'s train_ranges {meta['train_ranges']} do not fit train.bin's "
                         f"{len(train)} tokens: {fix}")
    return Corpus(path, meta, tokenizer, train, val)


def ranges_fit(ranges: Any, size: int) -> bool:
    """Whether meta.json's train_ranges split [0, size) into a main group and then an extra one."""
    try:
        (start, boundary), (boundary_again, end) = ranges["main"], ranges["extra"]
    except (KeyError, TypeError, ValueError):
        return False
    return start == 0 and boundary == boundary_again and end == size and 0 < boundary < size


class BatchSampler:
    """Random windows of `context + 1` tokens: inputs are the first `context`, targets are shifted by one.

    A step's global batch is `batch_size * grad_accum * world_size` windows; rank r takes its
    contiguous share and splits it into `grad_accum` micro-batches.

    With a `mix` of two groups no window crosses from the main tokens into the extra ones. Plain
    mixing draws each window start uniformly over all the starts that fit in a group (for a corpus
    without extras: over the whole file, one randint as ever, so old seeds draw the same batches);
    a weight draws each window's group first (extra with probability the share at the step's
    `progress`, janelm.schedule.mix_progress), then its start uniformly within that group.
    """

    def __init__(self, tokens: torch.Tensor, context: int, batch_size: int, grad_accum: int = 1,
                 seed: int = 0, rank: int = 0, world_size: int = 1, device: torch.device | None = None,
                 mix: Mix = Mix()):
        if len(tokens) < context + 2:
            raise InputError(
                f"the corpus has {len(tokens)} tokens, fewer than one context window of {context} + 1: "
                f"use more text or a smaller --context"
            )
        self.tokens, self.context = tokens, context
        self.batch_size, self.grad_accum = batch_size, grad_accum
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.device = device or torch.device("cpu")
        self._arange = torch.arange(context + 1)
        # Window starts that fit in each group: main [0, main_starts), extra [extra_start, extra_start + extra_starts).
        boundary = len(tokens) if mix.extra_start is None else mix.extra_start
        sizes = {"main": boundary, "extra": len(tokens) - boundary}
        share = self.share = mix.share
        drawn = {"main": share is None or share.lowest < 1,
                 "extra": mix.extra_start is not None and (share is None or share.highest > 0)}
        for group, size in sizes.items():
            if drawn[group] and size < context + 1:
                raise InputError(
                    f"the {group} sources have {size} training tokens, fewer than one context window of {context} + 1: "
                    f"give more text, train with a smaller --context, or leave them out with --extra-weight"
                )
        self.extra_start = boundary
        self.main_starts, self.extra_starts = (max(size - context, 0) for size in sizes.values())

    def offsets(self, g: torch.Generator, count: int, progress: float) -> torch.Tensor:
        """`count` window start offsets drawn from `g` according to the mix at `progress`."""
        if self.share is None:
            starts = torch.randint(0, self.main_starts + self.extra_starts, (count,), generator=g)
            # Starts past the main group's move over the boundary, to the extra group's own.
            return torch.where(starts < self.main_starts, starts, starts - self.main_starts + self.extra_start)
        extra = torch.rand(count, generator=g, dtype=torch.float64) < self.share.at(progress)
        where = torch.rand(count, generator=g, dtype=torch.float64)
        size = torch.where(extra, self.extra_starts, self.main_starts)
        return torch.where(extra, self.extra_start, 0) + (where * size).long()

    def windows(self, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets (B, context) for the windows starting at `offsets`."""
        rows = self.tokens[offsets[:, None] + self._arange].long()
        x, y = rows[:, :-1], rows[:, 1:]
        if self.device.type == "cuda":
            # Pinned host memory lets the copy overlap with compute.
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)

    def step_batches(self, step: int, progress: float = 0.0) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's micro-batches for `step`, which stands at `progress` in the mix's schedule."""
        per_rank = self.batch_size * self.grad_accum
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        offsets = self.offsets(g, per_rank * self.world_size, progress)
        mine = offsets[self.rank * per_rank : (self.rank + 1) * per_rank]
        return [self.windows(chunk) for chunk in mine.split(self.batch_size)]

    def fixed_batches(self, count: int, salt: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The same `count` batches every time: used to evaluate comparably across steps. A schedule's
        are drawn with the share it ends on, the text the run is heading for."""
        g = torch.Generator().manual_seed(self.seed * 7_919 + salt)
        return [self.windows(self.offsets(g, self.batch_size, progress=1.0)) for _ in range(count)]
