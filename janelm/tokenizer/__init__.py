"""Tokenizers: turn text into token ids and back.

Four kinds, all behind the `Tokenizer` interface (`base`), one module each:

- ``char`` (`char`): one token per character seen in the training corpus. Tiny vocabulary,
  long sequences, and it cannot encode characters it never saw.
- ``bpe`` (`bpe`, trained by `bpe_training`): byte-level BPE trained here on the corpus, then
  served by tiktoken. Lossless for every string, and roughly four characters per token on
  English prose.
- ``gpt2`` (`bpe`): OpenAI's GPT-2 BPE, fetched by tiktoken (needs network or its cache once);
  the ranks are then copied into the checkpoint, so loading it later works offline.
- ``hf`` (`huggingface`): a Hugging Face ``tokenizer.json`` served by the ``tokenizers``
  library, for imported models whose tokenizer the kinds above cannot represent.

A tokenizer is saved as plain JSON-able data (`Tokenizer.to_dict`) because it goes into
torch checkpoints that are loaded with ``weights_only=True`` and into ``tokenizer.json``.

This package must not import torch: commands that only tokenize should start quickly.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable

from janelm.config import PrepareDefaults
from janelm.errors import InputError
from janelm.tokenizer.base import Tokenizer
from janelm.tokenizer.bpe import PATTERN, BPETokenizer, load_gpt2
from janelm.tokenizer.bpe_training import _leading_sample, _splitter, _train_bpe, count_chunks, split_chunks
from janelm.tokenizer.char import CharTokenizer
from janelm.tokenizer.huggingface import HFTokenizer

__all__ = ["KINDS", "PATTERN", "BPETokenizer", "CharTokenizer", "HFTokenizer", "Tokenizer", "count_chunks",
           "load_gpt2", "split_chunks", "tokenizer_from_dict", "train_tokenizer", "_splitter"]

KINDS = ("char", "bpe", "gpt2", "hf")

# BPE vocabulary bounds. 256 byte tokens always exist, so 257 is the smallest vocabulary that
# holds a merge. Up to 65536 the ids fit in uint16 (what a token cache can store); above that
# they need a wider type. The upper bound only catches typos (an extra zero or two).
MIN_BPE_VOCAB_SIZE = 257
MAX_BPE_VOCAB_SIZE = 200_000
DEFAULT_BPE_VOCAB_SIZE = PrepareDefaults.vocab_size  # one place: the quality study's choice


def tokenizer_from_dict(data: dict) -> Tokenizer:
    """Rebuild the tokenizer that `Tokenizer.to_dict` described."""

    def malformed(detail: str) -> InputError:
        return InputError(
            f"the saved tokenizer is malformed ({detail}): retrain to write a new checkpoint "
            "or tokenizer.json"
        )

    if not isinstance(data, dict):
        raise malformed(f"expected a dict, found {type(data).__name__}")
    kind = data.get("kind")
    if kind not in KINDS:
        raise InputError(
            f"unknown tokenizer kind {kind!r} in the saved tokenizer (expected one of "
            f"{', '.join(KINDS)}): it was written by another program or a newer JaneLM; "
            "retrain with this version"
        )
    if kind == "char":
        chars = data.get("chars")
        if not isinstance(chars, str):
            raise malformed("'chars' is not a string")
        return CharTokenizer(chars)
    if kind == "hf":
        spec = data.get("tokenizer_json")
        if not isinstance(spec, str):
            raise malformed("'tokenizer_json' is not a string")
        return HFTokenizer(spec)

    pattern = data.get("pattern")
    tokens = data.get("tokens")
    special = data.get("special_tokens", {})
    if not isinstance(pattern, str):
        raise malformed("'pattern' is not a string")
    if not isinstance(tokens, list):
        raise malformed("'tokens' is not a list")
    if not isinstance(special, dict) or not all(
        isinstance(k, str) and type(v) is int for k, v in special.items()
    ):
        raise malformed("'special_tokens' is not a dict of str to int")
    decoded = []
    for index, token in enumerate(tokens):
        try:
            raw = base64.b64decode(token, validate=True)
        except (binascii.Error, TypeError, ValueError):
            raw = b""
        if not raw:
            raise malformed(f"tokens[{index}] is not non-empty base64")
        decoded.append(raw)
    return BPETokenizer(decoded, pattern=pattern, special_tokens=special, kind=kind)


def train_tokenizer(
    kind: str,
    texts: Iterable[str],
    vocab_size: int | None = None,
    progress: bool = True,
    max_chars: int | None = None,
) -> Tokenizer:
    """Build a tokenizer of `kind` for `texts`.

    `vocab_size` applies to ``bpe`` only (default `DEFAULT_BPE_VOCAB_SIZE`): the total number
    of tokens including the 256 byte tokens; training stops early, with a smaller vocabulary,
    when the corpus has no pair left to merge. It is ignored for ``char`` (the vocabulary is
    the corpus's characters) and ``gpt2`` (fixed at 50257). `max_chars` bounds the text BPE
    trains on (the same leading share of every text) to save time and memory on a huge
    corpus; the other kinds read everything. `progress` shows a progress bar on stderr.
    """
    if kind == "gpt2":
        return load_gpt2()
    if kind == "char":
        chars: set[str] = set()
        for text in texts:
            chars.update(text)
        if not chars:
            raise InputError("the corpus is empty: give at least one non-empty text")
        return CharTokenizer("".join(sorted(chars)))
    if kind == "bpe":
        if vocab_size is None:
            vocab_size = DEFAULT_BPE_VOCAB_SIZE
        if type(vocab_size) is not int or vocab_size < MIN_BPE_VOCAB_SIZE:
            raise InputError(
                f"--vocab-size must be at least {MIN_BPE_VOCAB_SIZE} for bpe (256 byte tokens "
                f"+ merges), got {vocab_size!r}"
            )
        if vocab_size > MAX_BPE_VOCAB_SIZE:
            raise InputError(
                f"--vocab-size {vocab_size} is too large for bpe: use at most "
                f"{MAX_BPE_VOCAB_SIZE} (up to 65536 keeps token ids in uint16)"
            )
        if max_chars is not None and (type(max_chars) is not int or max_chars < 1):
            raise InputError(f"max_chars must be a positive integer, got {max_chars!r}")
        texts = list(texts)
        if not any(texts):
            raise InputError("the corpus is empty: give at least one non-empty text")
        if max_chars is not None:
            texts = _leading_sample(texts, max_chars)
        chunk_counts = count_chunks(texts)
        tokens = _train_bpe(chunk_counts, vocab_size, progress)
        return BPETokenizer(tokens, pattern=PATTERN, kind="bpe")
    raise InputError(f"unknown tokenizer {kind!r}: use --tokenizer char, bpe or gpt2")

