"""Tests for janelm.tokenizer: round trips, serialisation, errors, and BPE training."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from janelm.errors import InputError
from janelm.tokenizer import (
    MAX_BPE_VOCAB_SIZE,
    PATTERN,
    BPETokenizer,
    CharTokenizer,
    _splitter,
    count_chunks,
    split_chunks,
    tokenizer_from_dict,
    train_tokenizer,
)
from janelm.tokenizer.base import _valid_unicode

# Original sentences (not Austen's) in a period style, so the BPE has English-like text.
SENTENCES = [
    "Mrs. Hartley had long believed that a sensible daughter was the greatest comfort a widow could have.",
    "Her eldest girl, however, had opinions of her own, and did not scruple to share them at dinner.",
    "“I am sure,” said Miss Hartley, “that the new curate is neither so clever nor so amiable as you suppose.”",
    "The gentleman in question had arrived at Thornbury in the spring, with two trunks and a reputation for sermons.",
    "Nobody could say who had first called him handsome; everybody, by June, agreed that he was.",
    "It’s a truth the village had learnt slowly: a man with four hundred a year is always thought agreeable.",
    "She walked to the parsonage on Tuesday, meaning only to return a book, and stayed above an hour.",
    "Her mother’s delight at this was so great, and so openly expressed, that the poor girl could hardly bear it.",
    "“You will not tease me about him,” she begged; “I have not the least intention of marrying anybody.”",
    "In 1811 the roads were bad, the letters slow, and the neighbourhood given entirely to conjecture.",
    "Colonel Ashby wrote twice that winter, both times to his sister, and neither time to any purpose.",
    "They danced at the assembly rooms until two o’clock, and talked of nothing else for a week.",
]


def english_text(n_sentences: int = 60, seed: int = 0) -> str:
    """A few KB of prose: the sentences above in a shuffled, paragraphed order."""
    rng = random.Random(seed)
    paragraphs = []
    while sum(len(p) for p in paragraphs) < n_sentences * 90:
        paragraphs.append(" ".join(rng.sample(SENTENCES, rng.randint(2, 4))))
    return "\n\n".join(paragraphs) + "\n"


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return train_tokenizer("bpe", [english_text()], vocab_size=450, progress=False)


def is_plain_data(value) -> bool:
    """Only what torch.load(weights_only=True) and JSON both accept, without tuples or bytes."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_plain_data(v) for k, v in value.items())
    if isinstance(value, list):
        return all(is_plain_data(v) for v in value)
    return type(value) in (str, int)


# --- char -----------------------------------------------------------------------------------


@given(st.text(min_size=1), st.data())
def test_char_round_trip_on_its_alphabet(corpus: str, data) -> None:
    tok = train_tokenizer("char", [corpus], progress=False)
    text = data.draw(st.text(alphabet=sorted(set(corpus))))
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    assert tok.token_bytes(ids) == text.encode("utf-8")


def test_char_vocabulary_is_sorted_characters_of_all_texts() -> None:
    tok = train_tokenizer("char", ["banana", "cab\n"], vocab_size=999, progress=False)
    assert tok.kind == "char"
    assert tok.chars == "\nabcn"
    assert tok.vocab_size == 5
    assert tok.encode("cab") == [3, 1, 2]


def test_char_unknown_characters_are_named() -> None:
    tok = CharTokenizer("abc ")
    with pytest.raises(InputError) as info:
        tok.encode("a bé zz\x00")
    message = str(info.value)
    assert "\n" not in message
    assert "never saw" in message
    assert "3 distinct character" in message and "4 occurrence" in message
    assert "'é'" in message and "'z'" in message and "'\\x00'" in message


def test_char_unknown_characters_list_is_capped() -> None:
    tok = CharTokenizer("a")
    with pytest.raises(InputError, match="25 distinct.*and 15 more"):
        tok.encode("".join(chr(ord("A") + i) for i in range(25)))


def test_char_serialisation_round_trip() -> None:
    tok = train_tokenizer("char", ["Hello, “world”!\n"], progress=False)
    data = tok.to_dict()
    assert is_plain_data(data)
    again = tokenizer_from_dict(json.loads(json.dumps(data)))
    assert isinstance(again, CharTokenizer)
    assert again.chars == tok.chars
    assert again.encode("world!") == tok.encode("world!")


def test_char_empty_corpus_is_an_input_error() -> None:
    with pytest.raises(InputError, match="empty"):
        train_tokenizer("char", ["", ""], progress=False)


def test_char_bad_ids_are_an_input_error() -> None:
    tok = CharTokenizer("ab")
    for bad in ([2], [-1]):
        with pytest.raises(InputError, match="outside the tokenizer's vocabulary"):
            tok.decode(bad)


# --- bpe ------------------------------------------------------------------------------------


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text())
def test_bpe_round_trips_any_text(bpe: BPETokenizer, text: str) -> None:
    ids = bpe.encode(text)
    assert all(0 <= i < bpe.vocab_size for i in ids)
    assert bpe.decode(ids) == text
    assert bpe.token_bytes(ids) == text.encode("utf-8")


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.sampled_from(" \n\t’'“”.,;—-eatsnohrldEATSNI0123é") | st.characters()))
@example(text="a\ud800b c")  # a lone surrogate: newer hypothesis versions draw these
def test_bpe_tokens_never_cross_pretokenization_chunks(bpe: BPETokenizer, text: str) -> None:
    # Training merges within the Python-side chunks; they are only usable if tiktoken's
    # split never joins two of them. Every chunk boundary must be a token boundary.
    chunk_ends = set()
    offset = 0
    for chunk in split_chunks(text):
        offset += len(chunk.encode("utf-8"))
        chunk_ends.add(offset)
    token_ends = set()
    offset = 0
    for i in bpe.encode(text):
        offset += len(bpe.token_bytes([i]))
        token_ends.add(offset)
    assert chunk_ends <= token_ends
    # Nothing is lost or added; a lone surrogate (no UTF-8 form) becomes U+FFFD, as in encoding.
    assert "".join(split_chunks(text)) == _valid_unicode(text)


def tiktoken_pieces(texts: list[str]) -> list[list[str]]:
    """How tiktoken itself splits each text with PATTERN.

    Every substring of every Python-side chunk becomes a token, so tiktoken's BPE merges each
    of its pieces that is such a chunk into one token; a piece it splits differently shows up
    as tokens that differ from the chunks.
    """
    tokens = {bytes([b]) for b in range(256)}
    for text in texts:
        for chunk in split_chunks(text):
            raw = chunk.encode("utf-8")
            tokens.update(raw[i:j] for i in range(len(raw)) for j in range(i + 1, len(raw) + 1))
    ordered = sorted(tokens, key=lambda t: (len(t), t))
    tok = BPETokenizer(ordered, pattern=PATTERN)
    return [[tok.token_bytes([i]).decode("utf-8") for i in tok.encode(t)] for t in texts]


def test_training_split_equals_tiktoken_split() -> None:
    texts = [
        english_text(20, seed=1),
        "’Tis I’LL we’ve they’re ’twas x’s 12,000 3.5% £20 naïve\u0301 Ⅻ ½ ²\u00a0\u3000a  \t\n\n b",
        "日本語のテキスト، عربى ١٢٣ ελληνικά 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 🙂👍🏽 \x1c\x1f\x85 x\u200bz",
    ]
    # Characters the Python regex module and tiktoken's Rust engine classify differently
    # (newer Unicode letters, say) must be split the Rust way.
    disagree = sorted(_splitter().disagree)
    if disagree:
        sample = disagree[:: max(1, len(disagree) // 40)]
        texts.append(" ".join(f"ab{c}cd 1{c}2 {c}{c}." for c in sample))
    assert tiktoken_pieces(texts) == [split_chunks(t) for t in texts]


def test_split_example() -> None:
    assert split_chunks("He said, “I’m sure she’s ‘right’—twice, 1813.”\n\nWell") == [
        "He", " said", ",", " “", "I", "’m", " sure", " she", "’s", " ‘", "right",
        "’—", "twice", ",", " 1813", ".”", "\n\n", "Well",
    ]


def test_bpe_compresses_english(bpe: BPETokenizer) -> None:
    text = english_text(40, seed=7)
    assert len(text) / len(bpe.encode(text)) > 2


def test_bpe_serialisation_round_trip(bpe: BPETokenizer) -> None:
    data = bpe.to_dict()
    assert data["kind"] == "bpe"
    assert is_plain_data(data)
    again = tokenizer_from_dict(json.loads(json.dumps(data)))
    assert isinstance(again, BPETokenizer) and again.kind == "bpe"
    assert again.vocab_size == bpe.vocab_size == 450
    assert again.to_dict() == data
    text = english_text(10, seed=3) + "Ünïcødé 🙂"
    assert again.encode(text) == bpe.encode(text)


def test_bpe_ids_are_ranks_bytes_then_merges(bpe: BPETokenizer) -> None:
    assert bpe.tokens[:256] == [bytes([b]) for b in range(256)]
    assert all(len(t) > 1 for t in bpe.tokens[256:])
    assert len(set(bpe.tokens)) == len(bpe.tokens)


def test_bpe_training_is_deterministic() -> None:
    texts = [english_text(20, seed=5), "short second text, with “quotes”."]
    first = train_tokenizer("bpe", texts, vocab_size=400, progress=False)
    second = train_tokenizer("bpe", list(texts), vocab_size=400, progress=False)
    assert first.tokens == second.tokens


def test_bpe_stops_early_when_pairs_run_out() -> None:
    tok = train_tokenizer("bpe", ["ab ab ab"], vocab_size=1000, progress=False)
    assert 257 <= tok.vocab_size < 1000
    assert tok.decode(tok.encode("ab ba")) == "ab ba"


def test_bpe_max_chars_trains_on_a_sample() -> None:
    texts = [english_text(30, seed=1), english_text(30, seed=2)]
    tok = train_tokenizer("bpe", texts, vocab_size=300, progress=False, max_chars=500)
    assert tok.decode(tok.encode(texts[1])) == texts[1]


@pytest.mark.parametrize("size", [0, 256, -5, 2.5, "512"])
def test_bpe_vocab_size_too_small_or_not_an_int(size) -> None:
    with pytest.raises(InputError, match="--vocab-size must be at least 257 for bpe"):
        train_tokenizer("bpe", ["some text"], vocab_size=size, progress=False)


def test_bpe_vocab_size_too_large() -> None:
    with pytest.raises(InputError, match="too large"):
        train_tokenizer("bpe", ["some text"], vocab_size=MAX_BPE_VOCAB_SIZE + 1, progress=False)


def test_bpe_empty_corpus_is_an_input_error() -> None:
    with pytest.raises(InputError, match="empty"):
        train_tokenizer("bpe", [""], vocab_size=300, progress=False)


def test_bpe_lone_surrogates_become_replacement_characters(bpe: BPETokenizer) -> None:
    assert bpe.decode(bpe.encode("a\ud800b")) == "a\ufffdb"
    assert bpe.decode(bpe.encode("\ud83d\ude00")) == "\U0001f600"  # a pair is joined


def test_bpe_partial_utf8_decodes_with_replacement(bpe: BPETokenizer) -> None:
    ids = bpe.encode("é")  # likely one token; take its bytes one at a time in any case
    raw = bpe.token_bytes(ids)
    assert raw == "é".encode()
    first_byte_id = raw[0]  # single-byte tokens have their byte value as id
    assert bpe.token_bytes([first_byte_id]) == raw[:1]
    assert bpe.decode([first_byte_id]) == "\ufffd"


def test_decode_accepts_numpy_ids(bpe: BPETokenizer) -> None:
    text = "Miss Hartley walked."
    assert bpe.decode(np.array(bpe.encode(text), dtype=np.int64)) == text
    char = CharTokenizer(" .HMaeiklrstdwy")
    assert char.decode(np.array(char.encode(text), dtype=np.uint16)) == text


def test_bpe_bad_ids_are_an_input_error(bpe: BPETokenizer) -> None:
    for bad in ([bpe.vocab_size], [-1], [2**40]):
        with pytest.raises(InputError, match="outside the tokenizer's vocabulary"):
            bpe.decode(bad)


def test_count_chunks() -> None:
    counts = count_chunks(["a cat, a cat", " a"])
    assert counts == {"a": 1, " cat": 2, ",": 1, " a": 2}


# --- gpt2 -----------------------------------------------------------------------------------


def test_gpt2_offline_error_or_self_contained_copy() -> None:
    try:
        tok = train_tokenizer("gpt2", ["ignored"], progress=False)
    except InputError as error:
        message = str(error)
        assert "\n" not in message
        assert "--tokenizer bpe" in message and "--tokenizer char" in message
        return
    # tiktoken could fetch (or had cached) the files: the copy must stand on its own.
    assert tok.kind == "gpt2" and tok.vocab_size == 50257
    again = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))
    text = "Hello world <|endoftext|>"
    assert again.kind == "gpt2"
    assert again.encode(text) == tok.encode(text) == [15496, 995, 1279, 91, 437, 1659, 5239, 91, 29]
    assert again.decode([50256]) == "<|endoftext|>"


# --- errors ---------------------------------------------------------------------------------


def test_unknown_kind_to_train() -> None:
    with pytest.raises(InputError, match="unknown tokenizer 'word'"):
        train_tokenizer("word", ["text"], progress=False)


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        {},
        {"kind": "wordpiece"},
        {"kind": "char"},
        {"kind": "char", "chars": ""},
        {"kind": "char", "chars": "aba"},
        {"kind": "char", "chars": ["a", "b"]},
        {"kind": "bpe"},
        {"kind": "bpe", "pattern": PATTERN},
        {"kind": "bpe", "pattern": PATTERN, "tokens": "AA=="},
        {"kind": "bpe", "pattern": PATTERN, "tokens": ["!!not base64"]},
        {"kind": "bpe", "pattern": PATTERN, "tokens": [""]},
        {"kind": "bpe", "pattern": PATTERN, "tokens": [1, 2]},
        {"kind": "bpe", "pattern": PATTERN, "tokens": ["YQ=="]},  # lacks 255 byte tokens
        {"kind": "bpe", "pattern": 5, "tokens": []},
    ],
)
def test_malformed_dicts_are_input_errors(data) -> None:
    with pytest.raises(InputError) as info:
        tokenizer_from_dict(data)
    assert "\n" not in str(info.value)


def test_malformed_bpe_dicts_built_from_a_good_one(bpe: BPETokenizer) -> None:
    good = bpe.to_dict()
    broken = [
        {**good, "tokens": good["tokens"] + [good["tokens"][300]]},  # repeated token
        {**good, "pattern": "(unclosed"},
        {**good, "special_tokens": {"<|x|>": 5}},  # collides with a rank
        {**good, "special_tokens": {"<|x|>": "450"}},
        {**good, "special_tokens": ["<|x|>"]},
    ]
    for data in broken:
        with pytest.raises(InputError):
            tokenizer_from_dict(data)
    ok = tokenizer_from_dict({**good, "special_tokens": {"<|x|>": 450}})
    assert ok.vocab_size == 451 and ok.decode([450]) == "<|x|>"
    assert ok.encode("<|x|>") == bpe.encode("<|x|>")  # special text stays plain text


def test_gpt2_copies_ranks_pattern_and_special_tokens(bpe: BPETokenizer, monkeypatch) -> None:
    # Offline stand-in for tiktoken's gpt2 encoding: ranks in a shuffled order (GPT-2's byte
    # tokens are not ranked by byte value) plus <|endoftext|> after them.
    import tiktoken

    order = list(bpe.tokens)
    random.Random(0).shuffle(order)
    fake = tiktoken.Encoding(
        name="fake-gpt2",
        pat_str=r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
        mergeable_ranks={t: i for i, t in enumerate(order)},
        special_tokens={"<|endoftext|>": len(order)},
    )
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: fake)
    tok = train_tokenizer("gpt2", ["ignored"], vocab_size=300, progress=False)
    assert tok.kind == "gpt2" and tok.vocab_size == len(order) + 1
    again = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))
    text = english_text(5) + "<|endoftext|>"
    assert again.encode(text) == tok.encode(text) == fake.encode_ordinary(text)
    assert again.decode([len(order)]) == "<|endoftext|>"
