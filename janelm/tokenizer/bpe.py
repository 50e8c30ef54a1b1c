"""Byte-level BPE served by tiktoken: the ``bpe`` kind (trained here) and ``gpt2`` (OpenAI's).

Its pre-tokenization pattern is defined here; `janelm.tokenizer.bpe_training` learns the merges.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

from janelm.errors import InputError
from janelm.tokenizer.base import Tokenizer, _bad_id_error

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

