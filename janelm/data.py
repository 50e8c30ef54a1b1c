"""Token files on disk and the batches the trainer draws from them.

A prepared corpus folder holds:
    train.bin, val.bin   token ids, uint16 (or uint32 for vocabularies over 65,536), memory-mapped
    tokenizer.json       the tokenizer as plain data
    meta.json            sources, counts, and the token dtype

Batches are a pure function of (seed, step): every step's global batch of window offsets comes
from a generator seeded with both, so a resumed run draws exactly what an uninterrupted one would,
and the global batch is the same whatever the number of processes sharing it.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch

from janelm.errors import InputError
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


@dataclass
class Corpus:
    """A prepared corpus: tokenizer, metadata and the two token splits."""

    path: Path
    meta: dict[str, Any]
    tokenizer: Tokenizer
    train: torch.Tensor
    val: torch.Tensor


def load_corpus(path: str | Path) -> Corpus:
    """Open a folder written by `janelm prepare`, with a clear error for anything missing."""
    path = Path(path)
    fix = f"run `janelm prepare TEXT... --out {path}` first, or pass --data FOLDER"
    if not path.is_dir():
        raise InputError(f"no prepared corpus at {path}/: {fix}")
    for name in (META_FILE, TOKENIZER_FILE, "train.bin", "val.bin"):
        if not (path / name).is_file():
            raise InputError(f"{path}/ is not a prepared corpus ({name} is missing): {fix}")
    try:
        meta = json.loads((path / META_FILE).read_text())
        tokenizer = tokenizer_from_dict(json.loads((path / TOKENIZER_FILE).read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}/ holds a damaged {META_FILE} or {TOKENIZER_FILE} ({e}): {fix}") from None
    dtype = meta.get("token_dtype", token_dtype(tokenizer.vocab_size))
    train, val = (load_tokens(path / f"{split}.bin", dtype) for split in SPLITS)
    if len(train) == 0:
        raise InputError(f"{path}/train.bin holds no tokens: {fix}")
    return Corpus(path, meta, tokenizer, train, val)


def global_batch_offsets(seed: int, step: int, count: int, high: int) -> torch.Tensor:
    """`count` window start offsets in [0, high) for one step, a function of (seed, step) only."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.randint(0, high, (count,), generator=g)


class BatchSampler:
    """Random windows of `context + 1` tokens: inputs are the first `context`, targets are shifted by one.

    A step's global batch is `batch_size * grad_accum * world_size` windows; rank r takes its
    contiguous share and splits it into `grad_accum` micro-batches.
    """

    def __init__(self, tokens: torch.Tensor, context: int, batch_size: int, grad_accum: int = 1,
                 seed: int = 0, rank: int = 0, world_size: int = 1, device: torch.device | None = None):
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

    def windows(self, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets (B, context) for the windows starting at `offsets`."""
        rows = self.tokens[offsets[:, None] + self._arange].long()
        x, y = rows[:, :-1], rows[:, 1:]
        if self.device.type == "cuda":
            # Pinned host memory lets the copy overlap with compute.
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)

    def step_batches(self, step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's micro-batches for `step`."""
        per_rank = self.batch_size * self.grad_accum
        offsets = global_batch_offsets(self.seed, step, per_rank * self.world_size, len(self.tokens) - self.context)
        mine = offsets[self.rank * per_rank : (self.rank + 1) * per_rank]
        return [self.windows(chunk) for chunk in mine.split(self.batch_size)]

    def fixed_batches(self, count: int, salt: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The same `count` batches every time: used to evaluate comparably across steps."""
        g = torch.Generator().manual_seed(self.seed * 7_919 + salt)
        high = len(self.tokens) - self.context
        return [self.windows(torch.randint(0, high, (self.batch_size,), generator=g)) for _ in range(count)]
