"""Tokenizers: turn text into token ids and back.

Three kinds, all behind the `Tokenizer` interface:

- ``char``: one token per character seen in the training corpus. Tiny vocabulary, long
  sequences, and it cannot encode characters it never saw.
- ``bpe``: byte-level BPE trained here on the corpus, then served by tiktoken. Lossless for
  every string, and roughly four characters per token on English prose.
- ``gpt2``: OpenAI's GPT-2 BPE, fetched by tiktoken (needs network or its cache once); the
  ranks are then copied into the checkpoint, so loading it later works offline.

A tokenizer is saved as plain JSON-able data (`Tokenizer.to_dict`) because it goes into
torch checkpoints that are loaded with ``weights_only=True`` and into ``tokenizer.json``.

This module must not import torch: commands that only tokenize should start quickly.
"""

from __future__ import annotations

import base64
import binascii
import heapq
from abc import ABC, abstractmethod
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

from janelm.config import PrepareDefaults
from janelm.errors import InputError

KINDS = ("char", "bpe", "gpt2")

# BPE vocabulary bounds. 256 byte tokens always exist, so 257 is the smallest vocabulary that
# holds a merge. Up to 65536 the ids fit in uint16 (what a token cache can store); above that
# they need a wider type. The upper bound only catches typos (an extra zero or two).
MIN_BPE_VOCAB_SIZE = 257
MAX_BPE_VOCAB_SIZE = 200_000
DEFAULT_BPE_VOCAB_SIZE = PrepareDefaults.vocab_size  # one place: the quality study's choice

# The pre-tokenization pattern, written once as a template and instantiated twice:
#
# - for serving, with Unicode property classes, as the ``pat_str`` tiktoken compiles with its
#   Rust regex engine (fancy-regex);
# - for training, with Python's ``regex`` module (installed with tiktoken, which depends on it),
#   which also knows ``\p{L}``; see `_Splitter` for how the two engines are kept in agreement.
#
# Why care: the Unicode tables of the two engines differ (in 2026 the ``regex`` module knows
# Unicode 17, tiktoken's Rust tables Unicode 16, about 4,600 letters apart), and ``re``'s
# ``\w``/``\d`` disagree with Rust's on combining marks and numerals. If training split text
# differently from serving, some learned merges would go unused (still lossless, just less
# compact). `_Splitter` makes the training split match the serving split exactly.
#
# The shape is GPT-2's: contractions; letters, digits, or other symbols, each with an optional
# leading space; whitespace, where a run of whitespace before a word leaves its last space to
# that word. Three changes for Austen: contractions accept the typographic apostrophe (U+2019,
# which the Project Gutenberg texts use); they only match when no letter follows, so that a
# word after an apostrophe or quote (’tis, ’twas, ’sdeath) is not cut after its first letter;
# and, as in tiktoken's newer encodings, whitespace ending in newlines is one chunk, so the
# paragraph break "\n\n" can become one token (GPT-2's pattern splits it into "\n", "\n").
# <L>, <N>, <S> stand for the members of a character class (letters, numbers, whitespace).
_PATTERN_TEMPLATE = (
    r"['’](?:[sdmt]|ll|ve|re)(?![<L>])"
    r"| ?[<L>]+"
    r"| ?[<N>]+"
    r"| ?[^<S><L><N>]+"
    r"|[<S>]*[\r\n]+"
    r"|[<S>]+(?![^<S>])"
    r"|[<S>]+"
)
_SERVING_CLASSES = {"<L>": r"\p{L}", "<N>": r"\p{N}", "<S>": r"\s"}


def _fill_pattern(classes: dict[str, str]) -> str:
    pattern = _PATTERN_TEMPLATE
    for placeholder, members in classes.items():
        pattern = pattern.replace(placeholder, members)
    return pattern


PATTERN = _fill_pattern(_SERVING_CLASSES)
"""The tiktoken ``pat_str`` of BPE tokenizers trained by JaneLM."""


class Tokenizer(ABC):
    """Maps text to token ids and back."""

    kind: str

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of token ids: every id is in ``range(vocab_size)``."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; bytes that are not valid UTF-8 (a cut character) become U+FFFD."""

    @abstractmethod
    def token_bytes(self, ids: Sequence[int]) -> bytes:
        """Raw UTF-8 bytes of `ids`, for streaming decoders that must not split a character."""

    @abstractmethod
    def to_dict(self) -> dict:
        """Plain data (str, int, list, dict) that `tokenizer_from_dict` turns back into this."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} kind={self.kind!r} vocab_size={self.vocab_size}>"


def _bad_id_error(token_id: Any, vocab_size: int) -> InputError:
    return InputError(
        f"token id {token_id!r} is outside the tokenizer's vocabulary (0..{vocab_size - 1}): "
        "the model and tokenizer come from different checkpoints; use a matching checkpoint"
    )


def _valid_unicode(text: str) -> str:
    """`text` with lone surrogates replaced by U+FFFD, as tiktoken does before encoding.

    Lone surrogates (from ``surrogateescape`` decoding, say) have no UTF-8 encoding; a pair
    of surrogates is joined into the character it stands for.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


class CharTokenizer(Tokenizer):
    """One token per character; ids follow the order of `chars` (sorted when trained)."""

    kind = "char"

    def __init__(self, chars: str) -> None:
        if not chars:
            raise InputError("the character vocabulary is empty: train on a non-empty corpus")
        if len(set(chars)) != len(chars):
            raise InputError(
                "the character vocabulary repeats characters: retrain the tokenizer"
            )
        self.chars = chars
        self._stoi = {c: i for i, c in enumerate(chars)}
        # A dict, not the string itself, so a negative id is an error instead of wrapping.
        self._itos = dict(enumerate(chars))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        stoi = self._stoi
        try:
            return [stoi[c] for c in text]
        except KeyError:
            pass
        # Slow path only to build the message.
        unknown = Counter(c for c in text if c not in stoi)
        shown = ", ".join(repr(c) for c in list(unknown)[:10])
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        raise InputError(
            f"the text has {len(unknown)} distinct character(s) the model never saw in training "
            f"({sum(unknown.values())} occurrence(s)): {shown}{more}; remove them, or retrain "
            "with a corpus that has them or with --tokenizer bpe"
        )

    def decode(self, ids: Sequence[int]) -> str:
        itos = self._itos
        try:
            return "".join([itos[i] for i in ids])
        except KeyError as exc:
            raise _bad_id_error(exc.args[0], self.vocab_size) from None

    def token_bytes(self, ids: Sequence[int]) -> bytes:
        # The vocabulary comes from str corpus text; a lone surrogate there has no UTF-8 form
        # and becomes "?" rather than failing mid-stream.
        return self.decode(ids).encode("utf-8", "replace")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "chars": self.chars}


class BPETokenizer(Tokenizer):
    """Byte-level BPE served by tiktoken.

    `tokens` lists each token's bytes in rank order: the id of a token is its index. All 256
    single bytes must be present, which makes encoding lossless for every string (lone
    surrogates, having no UTF-8 form, become U+FFFD, as tiktoken does). Encoding treats the
    text of special tokens (GPT-2's ``<|endoftext|>``) as plain text; their ids still decode.
    A vocabulary of at most 65536 keeps ids within uint16.
    """

    def __init__(
        self,
        tokens: Sequence[bytes],
        pattern: str = PATTERN,
        special_tokens: dict[str, int] | None = None,
        kind: str = "bpe",
    ) -> None:
        import tiktoken

        special_tokens = dict(special_tokens or {})
        ranks = {token: rank for rank, token in enumerate(tokens)}
        if len(ranks) != len(tokens):
            raise InputError("the BPE vocabulary repeats a token: retrain the tokenizer")
        missing = [b for b in range(256) if bytes([b]) not in ranks]
        if missing:
            raise InputError(
                f"the BPE vocabulary lacks {len(missing)} of the 256 single-byte tokens "
                "(so some text could not be encoded): retrain the tokenizer"
            )
        # Special ids come after the ranks, with no gaps, so range(vocab_size) is all valid.
        expected = set(range(len(tokens), len(tokens) + len(special_tokens)))
        if set(special_tokens.values()) != expected:
            raise InputError(
                f"the special token ids {sorted(special_tokens.values())} do not follow the "
                f"{len(tokens)} BPE tokens: retrain the tokenizer"
            )
        try:
            self._encoding = tiktoken.Encoding(
                name=f"janelm-{kind}-{len(tokens)}",
                pat_str=pattern,
                mergeable_ranks=ranks,
                special_tokens=special_tokens,
            )
        except ValueError as exc:  # tiktoken's Rust regex parser rejected the pattern
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(
                f"the BPE pre-tokenization pattern does not compile ({first_line}): "
                "retrain the tokenizer"
            ) from None
        self.kind = kind
        self.tokens = list(tokens)
        self.pattern = pattern
        self.special_tokens = special_tokens

    @property
    def vocab_size(self) -> int:
        return len(self.tokens) + len(self.special_tokens)

    def encode(self, text: str) -> list[int]:
        # encode_ordinary: "<|endoftext|>" in a novel is text, not a document boundary.
        return self._encoding.encode_ordinary(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.token_bytes(ids).decode("utf-8", errors="replace")

    def token_bytes(self, ids: Sequence[int]) -> bytes:
        try:
            return self._encoding.decode_bytes(ids)
        except (KeyError, OverflowError, TypeError):
            bad = next(
                (i for i in ids if not isinstance(i, int) or not 0 <= i < self.vocab_size),
                None,
            )
            if bad is None:  # not an id problem after all (e.g. numpy ints): convert
                return self._encoding.decode_bytes([int(i) for i in ids])
            raise _bad_id_error(bad, self.vocab_size) from None

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "pattern": self.pattern,
            # base64 because token bytes need not be valid UTF-8 (JSON has no bytes type).
            "tokens": [base64.b64encode(t).decode("ascii") for t in self.tokens],
            "special_tokens": dict(self.special_tokens),
        }


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


def load_gpt2() -> BPETokenizer:
    """GPT-2's tokenizer as a `BPETokenizer` of kind ``gpt2``, its ranks copied out of tiktoken.

    tiktoken downloads the files on first use and caches them (``TIKTOKEN_CACHE_DIR`` picks
    the folder); once loaded, the copy in a checkpoint needs neither.
    """
    import tiktoken

    try:
        encoding = tiktoken.get_encoding("gpt2")
    except Exception:  # requests, OSError, a bad hash (ValueError)...: all mean "not available"
        raise InputError(
            "the gpt2 tokenizer needs tiktoken to download its files, which failed (no "
            "network?): use --tokenizer bpe (a BPE trained on your corpus) or --tokenizer char"
        ) from None
    ranks = encoding._mergeable_ranks
    tokens = [b""] * len(ranks)
    for token, rank in ranks.items():
        tokens[rank] = token
    return BPETokenizer(
        tokens,
        pattern=encoding._pat_str,
        special_tokens=dict(encoding._special_tokens),
        kind="gpt2",
    )


def _leading_sample(texts: list[str], max_chars: int) -> list[str]:
    """The same leading share of every text, about `max_chars` characters in all."""
    total = sum(len(t) for t in texts)
    if total <= max_chars:
        return texts
    share = max_chars / total
    return [t[: max(1, int(len(t) * share))] for t in texts if t]


# --- pre-tokenization for training ---------------------------------------------------------


class _Splitter:
    """Splits text exactly as tiktoken's Rust regex engine splits it with `PATTERN`.

    Python's ``regex`` module (installed with tiktoken, which depends on it) runs the same
    pattern, but its Unicode tables can differ from the Rust engine's (a newer Unicode
    version, in 2026 about 4,600 letters apart). So each class is probed in the Rust engine:
    tiktoken skips text its pattern does not match, so letting it match ``[\\p{L}]+`` against
    every code point and decoding the output yields exactly the class's members. Text with
    none of the code points where the two engines disagree (nearly all text) is split by
    ``regex`` with the same Unicode classes, which is fast; other text by a pattern spelling
    out the Rust classes as explicit ranges, which is exact but about ten times slower.
    Probing takes about half a second, once per process.
    """

    def __init__(self) -> None:
        import regex

        self.fast = regex.compile(PATTERN)
        everything = _all_code_points()
        disagree: set[str] = set()
        self._exact_classes = {}
        for placeholder, members in _SERVING_CLASSES.items():
            rust = _rust_class_members(members)
            python = "".join(regex.findall(f"[{members}]", everything))
            disagree.update(set(rust) ^ set(python))
            self._exact_classes[placeholder] = _ranges_class_body(sorted(map(ord, rust)))
        self.disagree = frozenset(disagree)
        self._exact = None

    @property
    def exact(self):
        """The slow pattern with the Rust engine's classes as explicit ranges."""
        if self._exact is None:
            import regex

            self._exact = regex.compile(_fill_pattern(self._exact_classes))
        return self._exact

    def split(self, text: str) -> list[str]:
        text = _valid_unicode(text)
        if self.disagree.isdisjoint(text):
            return self.fast.findall(text)
        return self.exact.findall(text)


@lru_cache(maxsize=1)
def _splitter() -> _Splitter:
    return _Splitter()


def _all_code_points() -> str:
    # Not cached: 4 MB, needed only while probing. Surrogates excluded: they never reach the splitter (see `_valid_unicode`).
    return "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)


def _rust_class_members(members: str) -> str:
    """The characters that tiktoken's regex engine puts in the class ``[members]``."""
    import tiktoken

    probe = tiktoken.Encoding(
        name="janelm-class-probe",
        pat_str=f"[{members}]+",
        mergeable_ranks={bytes([b]): b for b in range(256)},
        special_tokens={},
    )
    return probe.decode_bytes(probe.encode_ordinary(_all_code_points())).decode("utf-8")


def _ranges_class_body(code_points: list[int]) -> str:
    """A regex character-class body (no brackets) matching exactly `code_points` (sorted)."""
    parts = []
    start = prev = None
    for cp in code_points + [None]:  # None flushes the last range
        if cp is not None and prev is not None and cp == prev + 1:
            prev = cp
            continue
        if start is not None:
            parts.append(
                f"\\U{start:08x}" if start == prev else f"\\U{start:08x}-\\U{prev:08x}"
            )
        start = prev = cp
    return "".join(parts)


def split_chunks(text: str) -> list[str]:
    """Split `text` into the pieces tiktoken's BPE encodes separately (tokens never cross them)."""
    return _splitter().split(text)


def count_chunks(texts: Iterable[str]) -> Counter[str]:
    """How often each pre-tokenization chunk occurs in `texts`."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(split_chunks(text))
    return counts


# --- BPE training --------------------------------------------------------------------------


def _train_bpe(chunk_counts: dict[str, int], vocab_size: int, progress: bool) -> list[bytes]:
    """Byte-level BPE merges learned from chunk frequencies; returns tokens in rank order.

    Merges run over unique chunks weighted by their counts (tens of thousands of words,
    not millions of positions). Pair counts are updated incrementally, an index from each
    pair to the chunks holding it means a merge only touches those chunks, and a heap with
    lazy deletion finds the most frequent pair. Ties go to the smallest (left id, right id),
    so the same corpus always gives the same vocabulary.
    """
    from tqdm import tqdm

    tokens: list[bytes] = [bytes([b]) for b in range(256)]
    id_of: dict[bytes, int] = {t: i for i, t in enumerate(tokens)}

    words: list[list[int]] = []
    freqs: list[int] = []
    for chunk, count in chunk_counts.items():
        raw = chunk.encode("utf-8")
        if len(raw) > 1:  # a single byte has no pair to merge
            words.append(list(raw))
            freqs.append(count)

    pair_counts: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)
    for w, (symbols, count) in enumerate(zip(words, freqs)):
        for pair in zip(symbols, symbols[1:]):
            pair_counts[pair] += count
            where[pair].add(w)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    bar = tqdm(
        total=vocab_size - len(tokens), desc="training BPE", unit="merge", disable=not progress
    )
    try:
        while len(tokens) < vocab_size and heap:
            neg_count, pair = heapq.heappop(heap)
            if pair_counts.get(pair, 0) != -neg_count:
                continue  # stale: the count changed and a fresher entry is in the heap
            left, right = pair
            merged_bytes = tokens[left] + tokens[right]
            # Two different pairs can spell the same bytes ("ab"+"c", "a"+"bc"): one token.
            new = id_of.get(merged_bytes)
            if new is None:
                new = len(tokens)
                tokens.append(merged_bytes)
                id_of[merged_bytes] = new
                bar.update(1)

            delta: dict[tuple[int, int], int] = defaultdict(int)
            for w in where.pop(pair):
                old = words[w]
                merged = _merge(old, left, right, new)
                words[w] = merged
                count = freqs[w]
                old_pairs = list(zip(old, old[1:]))
                new_pairs = list(zip(merged, merged[1:]))
                for p in old_pairs:
                    delta[p] -= count
                for p in new_pairs:
                    delta[p] += count
                new_set = set(new_pairs)
                for p in set(old_pairs) - new_set:
                    if p != pair:
                        where[p].discard(w)
                for p in new_set:
                    where[p].add(w)
            for p, d in delta.items():
                if d == 0:
                    continue
                count = pair_counts[p] + d
                if count > 0:
                    pair_counts[p] = count
                    heapq.heappush(heap, (-count, p))
                else:
                    del pair_counts[p]
                    where.pop(p, None)
    finally:
        bar.close()
    return tokens


def _merge(symbols: list[int], left: int, right: int, new: int) -> list[int]:
    """`symbols` with each non-overlapping (left, right), read left to right, replaced by `new`."""
    out = []
    i = 0
    n = len(symbols)
    while i < n:
        if i + 1 < n and symbols[i] == left and symbols[i + 1] == right:
            out.append(new)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out
