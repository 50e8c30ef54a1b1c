"""The `Tokenizer` interface every kind implements, and helpers they share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from janelm.errors import InputError


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

