"""JaneLM tokenizers to and from the Hugging Face ``tokenizer.json`` format.

Byte-level BPE (``bpe``, ``gpt2``): tiktoken keeps only ranks (a token's id is its merge
priority) and merges any adjacent pair whose bytes form a token; a ``tokenizers`` BPE lists its
merges. Each token of more than one byte becomes one merge: the two parts tiktoken itself ends
with when it encodes the token's bytes using only lower-ranked tokens, listed in rank order.
``ignore_merges`` makes a pre-token that is a whole token one id, as tiktoken does. The
pre-tokenizer is JaneLM's split pattern (a ``Split``) followed by ``ByteLevel`` without its own
regex, so both split text identically (checked on the novels by the tests).

Characters (``char``): a word-level model over single characters, after a split into single
characters; like JaneLM, it refuses characters it never saw rather than dropping them.

Reading goes the other way: a ``tokenizer.json`` that is exactly what this module writes for some
JaneLM tokenizer becomes that tokenizer again (same ids, same fingerprint, so a corpus prepared
with the original trains the re-imported model); any other becomes the ``hf`` kind.
"""

from __future__ import annotations

import json
from typing import Any

from janelm.errors import InputError
from janelm.tokenizer import BPETokenizer, CharTokenizer, HFTokenizer, Tokenizer
from janelm.tokenizer.huggingface import HF_EXTRA, byte_level_decode, byte_level_encode

# The sections that decide which ids a text gets and what text ids give.
ESSENTIAL = ("normalizer", "pre_tokenizer", "model", "decoder", "added_tokens")
UNKNOWN_CHAR = "<unk>"  # never a single character, so a character outside the vocabulary fails


def bpe_merges(tokens: list[bytes]) -> list[tuple[int, int]]:
    """For each token of more than one byte, in rank order, the ranks of the two parts it is
    merged from: the pair tiktoken ends with on the token's own bytes when only lower ranks count."""
    ranks = {token: rank for rank, token in enumerate(tokens)}
    merges = []
    for rank, token in enumerate(tokens):
        if len(token) < 2:
            continue
        parts = [token[i : i + 1] for i in range(len(token))]
        while len(parts) > 2:
            pairs = [(ranks.get(a + b, rank), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            best, i = min(pairs)
            if best >= rank:
                break  # unreachable by merges: tiktoken only makes it from a whole pre-token
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) == 2 and ranks.get(parts[0], rank) < rank and ranks.get(parts[1], rank) < rank:
            merges.append((ranks[parts[0]], ranks[parts[1]]))
    return merges


def _library():
    try:
        import tokenizers
    except ImportError:
        raise InputError(f"Hugging Face tokenizer files need the tokenizers library: {HF_EXTRA}") from None
    return tokenizers


def to_tokenizer_json(tokenizer: Tokenizer) -> str:
    """The ``tokenizer.json`` text that gives `tokenizer`'s ids."""
    if isinstance(tokenizer, HFTokenizer):
        return tokenizer.tokenizer_json
    tk = _library()
    if isinstance(tokenizer, CharTokenizer):
        out = tk.Tokenizer(tk.models.WordLevel({c: i for i, c in enumerate(tokenizer.chars)}, unk_token=UNKNOWN_CHAR))
        out.pre_tokenizer = tk.pre_tokenizers.Split(tk.Regex(r"[\s\S]"), behavior="isolated")
        out.decoder = tk.decoders.Fuse()
        return out.to_str()
    if isinstance(tokenizer, BPETokenizer):
        strings = [byte_level_encode(t) for t in tokenizer.tokens]
        merges = [(strings[a], strings[b]) for a, b in bpe_merges(tokenizer.tokens)]
        out = tk.Tokenizer(tk.models.BPE({s: i for i, s in enumerate(strings)}, merges, ignore_merges=True))
        out.pre_tokenizer = tk.pre_tokenizers.Sequence([
            tk.pre_tokenizers.Split(tk.Regex(tokenizer.pattern), behavior="isolated"),
            tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        out.decoder = tk.decoders.ByteLevel()
        specials = sorted(tokenizer.special_tokens.items(), key=lambda item: item[1])
        out.add_special_tokens([tk.AddedToken(text, special=True, normalized=False) for text, _ in specials])
        return out.to_str()
    raise InputError(f"a {tokenizer.kind} tokenizer has no tokenizer.json form")


def from_tokenizer_json(text: str) -> Tokenizer:
    """The tokenizer a ``tokenizer.json`` describes: JaneLM's own kind where it is one of its
    exports, else the ``hf`` kind."""
    try:
        spec = json.loads(text)
    except ValueError as e:
        raise InputError(f"the tokenizer.json is not valid JSON ({str(e)[:80]}): use another tokenizer") from None
    own = _own_tokenizer(spec) if isinstance(spec, dict) else None
    if own is not None and _essential(json.loads(to_tokenizer_json(own))) == _essential(spec):
        return own
    return HFTokenizer(text)


def _own_tokenizer(spec: dict[str, Any]) -> Tokenizer | None:
    """The JaneLM tokenizer `spec` would be if it were an export; None where it cannot be one."""
    model = spec.get("model") if isinstance(spec.get("model"), dict) else {}
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or sorted(vocab.values()) != list(range(len(vocab))):
        return None
    in_order = sorted(vocab, key=vocab.get)
    try:
        if model.get("type") == "WordLevel" and all(len(c) == 1 for c in in_order):
            return CharTokenizer("".join(in_order))
        steps = (spec.get("pre_tokenizer") or {}).get("pretokenizers") or [{}]
        pattern = (steps[0].get("pattern") or {}).get("Regex")
        if model.get("type") != "BPE" or not isinstance(pattern, str):
            return None
        tokens = [byte_level_decode(s) for s in in_order]
        if None in tokens:
            return None
        specials = {a["content"]: a["id"] for a in spec.get("added_tokens") or [] if a.get("id", -1) >= len(tokens)}
        return BPETokenizer(tokens, pattern=pattern, special_tokens=specials, kind=_bpe_kind(pattern, specials))
    except (InputError, AttributeError, KeyError, TypeError):
        return None


def _bpe_kind(pattern: str, specials: dict[str, int]) -> str:
    """``gpt2`` for GPT-2's own tokenizer (its pattern and end-of-text token), else ``bpe``."""
    from tiktoken_ext.openai_public import ENDOFTEXT, r50k_pat_str

    return "gpt2" if pattern == r50k_pat_str and specials == {ENDOFTEXT: 50256} else "bpe"


def _essential(spec: dict[str, Any]) -> dict[str, Any]:
    """The sections that decide ids, with merges in one spelling (older files write "a b")."""
    out = {key: spec.get(key) for key in ESSENTIAL}
    model = dict(out["model"] or {})
    if isinstance(model.get("merges"), list):
        model["merges"] = [m.split(" ", 1) if isinstance(m, str) else list(m) for m in model["merges"]]
    out["model"] = model
    return out
