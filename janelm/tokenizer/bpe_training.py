"""BPE training: pre-tokenization that matches tiktoken's exactly, and the merge loop."""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable
from functools import lru_cache

from janelm.tokenizer.base import _valid_unicode
from janelm.tokenizer.bpe import _SERVING_CLASSES, PATTERN, _fill_pattern


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
    from janelm.console import progress_bar

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

    bar = progress_bar(total=vocab_size - len(tokens), desc="training BPE", unit="merge", disable=not progress)
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
