"""The ``hf`` kind: a Hugging Face ``tokenizer.json`` served by the ``tokenizers`` library.

Imported models bring their tokenizer in this format. Where it is one JaneLM can represent itself
(its own exports), `janelm.interop` turns it back into a ``bpe`` or ``char`` tokenizer; this kind
serves the rest: a byte-level BPE whose ids are not in merge order (which tiktoken cannot serve),
or one with another pre-tokenizer or normaliser. Supported are byte-level BPE models and
character-level word models (what JaneLM writes for ``char``); the bytes of every id are worked
out once, so decoding and streaming are JaneLM's own, exact to the byte.

Needs ``pip install 'janelm[hf]'``; the library is imported only when such a tokenizer is loaded.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from janelm.errors import InputError
from janelm.tokenizer.base import Tokenizer, _bad_id_error, _valid_unicode

HF_EXTRA = "pip install 'janelm[hf]'"


@lru_cache(maxsize=1)
def byte_level_alphabet() -> dict[int, str]:
    """GPT-2's map from each byte to the printable character that stands for it in byte-level
    vocabularies: printable Latin-1 bytes stand for themselves, the rest for code points from 256."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    alphabet, extra = {}, 0
    for b in range(256):
        if b in printable:
            alphabet[b] = chr(b)
        else:
            alphabet[b] = chr(256 + extra)
            extra += 1
    return alphabet


def byte_level_encode(token: bytes) -> str:
    alphabet = byte_level_alphabet()
    return "".join(alphabet[b] for b in token)


def byte_level_decode(token: str) -> bytes | None:
    """The bytes a byte-level vocabulary string stands for; None if it is not one."""
    inverse = _inverse_alphabet()
    try:
        return bytes(inverse[c] for c in token)
    except KeyError:
        return None


@lru_cache(maxsize=1)
def _inverse_alphabet() -> dict[str, int]:
    return {c: b for b, c in byte_level_alphabet().items()}


def unsupported(detail: str) -> InputError:
    return InputError(f"the tokenizer.json {detail}: JaneLM serves byte-level BPE tokenizers and its own "
                      f"character tokenizers; use a model with a byte-level BPE (GPT-2, Llama 3 and most "
                      f"recent models have one)")


def token_bytes_table(spec: dict[str, Any]) -> list[bytes]:
    """The bytes of every id of a parsed tokenizer.json; InputError for a kind not served here."""
    model = spec.get("model") if isinstance(spec.get("model"), dict) else {}
    decoder = spec.get("decoder") if isinstance(spec.get("decoder"), dict) else {}
    kind, decoding = model.get("type"), decoder.get("type")
    vocab = model.get("vocab")
    if kind not in ("BPE", "WordLevel") or not isinstance(vocab, dict):
        raise unsupported(f"holds a {kind or 'unknown'} model")
    if kind == "BPE" and decoding != "ByteLevel":
        raise unsupported(f"holds a BPE whose decoder is {decoding or 'missing'}, not ByteLevel (not a byte-level BPE)")
    if kind == "WordLevel" and decoding != "Fuse":
        raise unsupported(f"holds a word-level model whose decoder is {decoding or 'missing'}, not Fuse")
    table: dict[int, bytes] = {}
    for token, i in vocab.items():
        raw = byte_level_decode(token) if kind == "BPE" else token.encode("utf-8", "replace")
        if raw is None:
            raise unsupported(f"holds token {token[:20]!r}, which is not byte-level")
        table[i] = raw
    for added in spec.get("added_tokens") or []:
        # An added token stands for its literal text, unless it is also an ordinary token.
        table.setdefault(added.get("id"), str(added.get("content", "")).encode("utf-8", "replace"))
    if sorted(table) != list(range(len(table))):
        raise InputError("the tokenizer.json's ids are not 0, 1, 2, … without gaps: JaneLM needs every id "
                         "below the vocabulary size to stand for a token; use another tokenizer")
    return [table[i] for i in range(len(table))]


class HFTokenizer(Tokenizer):
    """A `tokenizers` tokenizer. Text is encoded without added BOS/EOS tokens, and the text of
    special tokens (``<|endoftext|>``) as plain text, as the other kinds do."""

    kind = "hf"

    def __init__(self, tokenizer_json: str) -> None:
        try:
            spec = json.loads(tokenizer_json)
            if not isinstance(spec, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            raise InputError(f"the tokenizer.json is not valid JSON ({str(e)[:80]}): use another tokenizer") from None
        self._bytes = token_bytes_table(spec)  # an unsupported kind is refused before the library is needed
        try:
            import tokenizers
        except ImportError:
            raise InputError(f"this tokenizer needs the tokenizers library: {HF_EXTRA}") from None
        try:
            self._tokenizer = tokenizers.Tokenizer.from_str(tokenizer_json)
        except Exception as e:  # noqa: BLE001 - the library reports a bad file in its own exception type
            first = (str(e).splitlines() or [type(e).__name__])[0][:100]
            raise InputError(f"the tokenizers library cannot read the tokenizer.json ({first}): use another tokenizer") from None
        self._tokenizer.encode_special_tokens = True
        self.tokenizer_json = tokenizer_json

    @property
    def vocab_size(self) -> int:
        return len(self._bytes)

    def encode(self, text: str) -> list[int]:
        try:
            return self._tokenizer.encode(_valid_unicode(text), add_special_tokens=False).ids
        except Exception as e:  # noqa: BLE001 - e.g. a character a word-level vocabulary lacks
            first = (str(e).splitlines() or [type(e).__name__])[0][:100]
            raise InputError(f"the tokenizer cannot encode the text ({first}): remove the characters it lacks") from None

    def decode(self, ids: Sequence[int]) -> str:
        return self.token_bytes(ids).decode("utf-8", errors="replace")

    def token_bytes(self, ids: Sequence[int]) -> bytes:
        table, out = self._bytes, []
        for token_id in ids:
            try:
                index = operator.index(token_id)  # ints, numpy ints; not floats or strings
            except TypeError:
                index = -1
            if not 0 <= index < len(table):  # a negative index would wrap around
                raise _bad_id_error(token_id, self.vocab_size)
            out.append(table[index])
        return b"".join(out)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "tokenizer_json": self.tokenizer_json}
