"""The ``char`` kind: one token per character seen in the training corpus."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from janelm.errors import InputError
from janelm.tokenizer.base import Tokenizer, _bad_id_error


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

