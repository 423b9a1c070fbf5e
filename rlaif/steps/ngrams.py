"""Normalized words and their n-gram hashes, shared by ``dedup`` and ``decontaminate``.

Text is compared after ``tokens()``: lowercase, punctuation turned into spaces, split on whitespace. Words are hashed
once, then every word n-gram hash of a whole batch comes from a few numpy ops: no Python loop runs per n-gram.
``text_word_hashes`` goes one step further for decontamination, where a batch is only looked up: it hashes the words
of whole texts in numpy, without making a Python string per word.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

_PUNCT = re.compile(r"[^\w\s]+")
_ASCII_PUNCT = {c: " " for c in range(128) if _PUNCT.match(chr(c))}


def tokens(text: str) -> list[str]:
    """Normalized words: lowercase, punctuation removed (as a word break), whitespace collapsed."""
    text = text.lower()
    # str.translate is ~2x faster than the regex and, built from it, gives the same result on ASCII text.
    return text.translate(_ASCII_PUNCT).split() if text.isascii() else _PUNCT.sub(" ", text).split()


def normalize_text(text: str) -> str:
    return " ".join(tokens(text))


class WordHasher:
    """Deterministic 64-bit word hashes (blake2b: stable across processes, unlike ``hash()``), cached because a
    corpus has far fewer distinct words than words. The cache is per step instance and bounded."""

    def __init__(self, max_cached: int = 2_000_000) -> None:
        self._cache: dict[str, int] = {}
        self._max = max_cached

    def __call__(self, words: list[str]) -> np.ndarray:
        cache = self._cache
        missing = [w for w in set(words) if w not in cache]
        if missing:
            if len(cache) + len(missing) > self._max:
                cache.clear()
                missing = list(set(words))
            for word in missing:
                cache[word] = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
        return np.fromiter(map(cache.__getitem__, words), dtype=np.uint64, count=len(words))


def ngram_hashes(
    hasher: WordHasher, docs: list[list[str]], n: int, whole_short: bool, prefix: int = 0
) -> tuple[np.ndarray, ...]:
    """Hashes of every word n-gram of every doc, all docs at once: (hashes, doc index of each, start word of each).

    An n-gram hash is sum_k word_hash[i+k] * BASE^k (mod 2^64) over the concatenated docs, keeping only the windows
    that do not cross a doc boundary. With ``whole_short`` a doc shorter than n (even empty) yields one n-gram of
    all its words, so short texts still get a sketch; without it they yield none (decontamination: too short).

    With ``0 < prefix < n``, three more arrays (hashes, doc, start) give the ``prefix``-word windows that fit in
    their doc: the first ``prefix`` terms of the same sum, from the same doubling passes (``_window_sums``). So the
    whole_short hash of a short text equals the hash of its own word span wherever that span occurs in a doc."""
    lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
    return flat_ngram_hashes(hasher([w for d in docs for w in d]), lengths, n, whole_short, prefix)


def flat_ngram_hashes(
    flat: np.ndarray, lengths: np.ndarray, n: int, whole_short: bool, prefix: int = 0
) -> tuple[np.ndarray, ...]:
    """``ngram_hashes`` of docs given as their word hashes, concatenated (``flat``), and word counts (``lengths``)."""
    if whole_short and (lengths < n).any():
        # Pad short docs with zero words: the n-gram formula then hashes exactly their words, once.
        padded = np.maximum(lengths, n)
        target = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        target += np.repeat(np.cumsum(padded) - padded, lengths)
        words, flat, lengths = flat, np.zeros(int(padded.sum()), dtype=np.uint64), padded
        flat[target] = words
    out: list[np.ndarray] = []
    for width, hashes in window_sums(flat, [n, prefix] if prefix else [n]).items():
        doc, start, fits = locate_windows(np.arange(len(hashes)), lengths, width)
        out += [hashes[fits], doc[fits], start[fits]]
    return tuple(out)


def locate_windows(rows: np.ndarray, lengths: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For windows of ``width`` words given by their first word's index in the concatenated docs: the doc and the
    start word of each, and whether it fits in its doc (a window that runs into the next doc is no n-gram)."""
    ends = np.cumsum(lengths)
    doc = np.searchsorted(ends, rows, side="right")
    if not len(rows):
        return doc, rows, np.zeros(0, dtype=bool)
    start = rows - (ends - lengths)[doc]  # every row is a word, so doc < len(lengths)
    return doc, start, start + width <= lengths[doc]


_BASE = 0x9E3779B97F4A7C15  # odd, so its powers are invertible mod 2^64 and never 0


def _power(k: int) -> np.uint64:
    return np.uint64(pow(_BASE, k, 1 << 64))


def window_sums(flat: np.ndarray, widths: list[int]) -> dict[int, np.ndarray]:
    """For each width w, S_w[i] = sum_{k<w} flat[i+k] * BASE^k (mod 2^64) for every i whose window fits in ``flat``
    (windows that cross from one doc into the next included: ``locate_windows`` tells them apart).

    By doubling, about 2 log2(w) array passes instead of 2w: S_2j[i] = S_j[i] + BASE^j * S_j[i+j], then S_w is the
    sum of the S_j of w's binary digits, each shifted by the words before it (13 words: 5 products instead of 13)."""
    doubled, j = {1: flat}, 1
    while 2 * j <= max(widths):
        half = doubled[j]
        doubled[2 * j] = half[j:] * _power(j)
        doubled[2 * j] += half[: max(0, len(half) - j)]
        j *= 2
    sums = {}
    for width in widths:
        count, done, total = max(0, len(flat) - width + 1), 0, None
        for j in sorted(doubled, reverse=True):
            if width - done >= j:
                piece = doubled[j][done : done + count]
                total = piece.copy() if total is None else np.add(total, piece * _power(done), out=total)
                done += j
        sums[width] = total
    return sums


class HashLookup:
    """Sorted distinct 64-bit hashes with a payload row each (the first given for a hash). A bitmap on the low bits
    (~1/64 false hits) answers most lookups, so only its hits pay for a binary search."""

    def __init__(self, hashes: np.ndarray, payload: np.ndarray) -> None:
        self.hashes, first = np.unique(hashes, return_index=True)
        self.payload = payload[first]
        size = 1 << int(np.clip(np.ceil(np.log2(64 * max(1, len(self.hashes)))), 16, 30))
        self._maybe = np.zeros(size, dtype=bool)
        self._maybe[self.hashes & np.uint64(size - 1)] = True

    def __len__(self) -> int:
        return len(self.hashes)

    def find(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows of ``hashes`` that are in the set, and the payload of each."""
        if not len(self.hashes) or not len(hashes):
            return np.zeros(0, dtype=np.int64), self.payload[:0]
        rows = np.flatnonzero(self._maybe[hashes & np.uint64(len(self._maybe) - 1)])
        found = np.searchsorted(self.hashes, hashes[rows]).clip(max=len(self.hashes) - 1)
        hit = self.hashes[found] == hashes[rows]
        return rows[hit], self.payload[found[hit]]


# Byte -> normalized byte for ASCII text, as tokens() maps it: lowercase; every character that is neither a word
# character nor whitespace becomes a space, and so does whitespace (32 is then the only separator). Bytes >= 128 pass
# unchanged: they only occur in text that tokens() normalized already (see text_word_hashes). A bytes table, for
# bytes.translate: 5x faster than numpy's gather (measured on 1.3 MB).
_BYTE_MAP = bytes(
    c if c >= 128 or chr(c).isdigit() or chr(c).islower() or c == ord("_") else c + 32 if chr(c).isupper() else 32
    for c in range(256)
)
_LOW_BYTES = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [(1 << 64) - 1], dtype=np.uint64)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, in place: a bijection of uint64 that spreads every input bit over the output."""
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def text_word_hashes(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The 64-bit hash of every word of ``tokens(text)`` for each text, concatenated, and each text's word count.

    Equal words hash equal in every process; words of up to 8 bytes never collide (their bytes go through a
    bijection). Words are found and hashed on the bytes of the whole batch in numpy: making a Python string per word
    was most of decontamination's time (bench/filters.py). Non-ASCII text goes through tokens() first (Unicode
    lowercase and punctuation), then takes the same byte path."""
    joined = " ".join(texts)
    if joined.isascii():
        sizes = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    else:
        texts = [text if text.isascii() else " ".join(tokens(text)) for text in texts]
        sizes = np.fromiter((len(t.encode()) for t in texts), dtype=np.int64, count=len(texts))
        joined = " ".join(texts)
    # The bytes, normalized, between spaces: one before (a word can start at byte 1 at the earliest) and 8 after (room
    # for an 8-byte read at every byte; what a read takes past a word is masked off).
    padded = np.frombuffer(f" {joined}        ".encode().translate(_BYTE_MAP), dtype=np.uint8)
    # Word boundaries alternate: start, end, start... One pass for both kinds: ~3x faster than one per kind.
    word = padded != 32
    edges = np.flatnonzero(word[1:] != word[:-1]) + 1
    starts, ends = edges[0::2], edges[1::2]
    # Each byte with the 7 after it as one little-endian uint64: an overlapping, unaligned view, no copy.
    eight = np.ndarray(shape=(len(padded) - 7,), dtype="<u8", buffer=padded, strides=(1,))
    # A word's bytes are never 0, so its masked first 8 bytes also say its length (up to 8).
    size = ends - starts
    hashes = _mix(eight[starts] & _LOW_BYTES[np.minimum(size, 8)])
    longer, offset = np.flatnonzero(size > 8), 8
    while len(longer):  # the words over 8 bytes: 8 more bytes folded in per round
        chunk = eight[starts[longer] + offset] & _LOW_BYTES[np.minimum(size[longer] - offset, 8)]
        hashes[longer] = _mix(hashes[longer] ^ chunk)
        offset += 8
        longer = longer[size[longer] > offset]
    first_word = np.searchsorted(starts, np.cumsum(sizes + 1) - sizes)  # of each text (the first starts at 1)
    return hashes, np.diff(first_word, append=len(starts))


def sequence_hashes(flat: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each doc's whole word sequence, docs given as ``text_word_hashes`` gives them: equal
    sequences (equal ``tokens()``) hash equal. The sum of word hash x BASE^position (mod 2^64, from one cumulative
    sum over the batch), then splitmix with the word count: no Python loop per doc."""
    lengths = lengths.astype(np.int64)
    if not len(lengths):
        return np.zeros(0, dtype=np.uint64)
    ends = np.cumsum(lengths)
    position = np.arange(len(flat)) - np.repeat(ends - lengths, lengths)
    powers = np.cumprod(np.full(max(1, int(lengths.max())), _BASE, dtype=np.uint64))  # BASE^1 ... (wraps: mod 2^64)
    sums = np.concatenate([np.zeros(1, dtype=np.uint64), np.cumsum(flat * powers[position], dtype=np.uint64)])
    return _mix((sums[ends] - sums[ends - lengths]) ^ _mix(lengths.astype(np.uint64)))
