"""The ``dedup`` step (exact and MinHash-LSH near-duplicates) and the column reading it shares with
``decontaminate``; words and n-gram hashes come from ``rlaif.steps.ngrams``. The
near-duplicate index has two backends, ours in numpy and datasketch's, picked by ``backend`` (``auto``: the faster,
as measured by bench/filters.py).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydantic import Field, field_validator

from rlaif.steps import key_index
from rlaif.steps.base import BatchResult, ParamColumn, Quarantined, Record, Step, StepContext, StepParams
from rlaif.steps.key_index import KeyIndex, LabelStore
from rlaif.steps.ngrams import flat_ngram_hashes, sequence_hashes, text_word_hashes, tokens

_CHUNK = 4096  # n-grams per (permutations x n-grams) block: fastest measured (fits in cache)


# -- text ------------------------------------------------------------------------------------------------------
def column_text(value: Any) -> str:
    """A column as text: a string, or a conversation (TRL chosen/rejected/prompt) read as its last message."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) for m in value):
        content = value[-1].get("content", "") if value else ""
        if isinstance(content, str):
            return content
    raise TypeError(f"expected text or a list of messages, got {type(value).__name__}")


@functools.lru_cache(maxsize=16)  # a grid search of ~10 ms: once per setting, not per step instance
def optimal_bands(threshold: float, num_perm: int, false_positive_weight: float = 0.1) -> tuple[int, int]:
    """(bands, rows) minimizing the weighted areas of false positives below and false negatives above ``threshold``
    under the LSH S-curve (datasketch's criterion, integrated on a grid instead of scipy.quad: microseconds).

    The default weights false negatives 9:1 because every candidate is verified on its signature: a false positive
    costs one comparison, a false negative is a kept duplicate. At 0.7 and 128 permutations this picks 20 bands of 6
    rows (P(candidate | J=0.75) = 0.98) where equal weights pick datasketch's 14 x 9 (0.67)."""
    grid = np.linspace(0.0, 1.0, 2001)
    below, above = grid <= threshold, grid >= threshold
    best, best_error = (2, 1), float("inf")
    for bands in range(2, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            collide = 1 - (1 - grid**rows) ** bands
            error = false_positive_weight * np.trapezoid(collide[below], grid[below])
            error += (1 - false_positive_weight) * np.trapezoid(1 - collide[above], grid[above])
            if error < best_error:
                best, best_error = (bands, rows), error
    return best


# -- near-duplicate indexes (backends) -------------------------------------------------------------------------
Match = tuple[int, float]  # (number of the kept doc: 0, 1, ... in the order kept, estimated Jaccard similarity)


class NearIndex(Protocol):
    """Holds the sketches of kept docs, numbered 0, 1, ... in the order kept. ``sketch`` needs no state (it may run
    in another process, on an index that never matched anything); ``match`` answers, for each of the sketched docs
    that ``rows`` picks, in order, which earlier kept doc (of this or an earlier batch) it near-duplicates, or None,
    in which case the doc is kept and indexed under the next number."""

    def sketch(self, docs: list[list[str]]) -> Any: ...

    def match(self, sketch: Any, rows: list[int]) -> list[Match | None]: ...

    def close(self) -> None: ...


class NumpyIndex:
    """Our MinHash-LSH, vectorized per batch: all n-grams x all permutations in numpy blocks, min-reduced per doc;
    band keys looked up in a KeyIndex (sorted runs in memory, then on disk, behind a Bloom filter: no Python loop per
    key, and ~4 bytes of memory per band key). Candidates are verified on the signatures; only docs with a candidate
    reach Python code.

    The permutations are multiply-add-shift hashes h(x) = ((a*x + b) mod 2^64) >> 32 of the 32-bit n-gram hash x
    (Dietzfelbinger: 2-independent, like (a*x+b) mod p, but the mod is free in uint64 and, since the shift is
    monotone, it is applied after the min). bench/filters.py times it against mod 2^61-1."""

    def __init__(
        self, threshold: float, num_perm: int, ngram: int, bands: tuple[int, int], seed: int, expected_docs: int = 0
    ) -> None:
        self.threshold, self.num_perm, self.ngram, (self.bands, self.rows) = threshold, num_perm, ngram, bands
        self._expected_keys = expected_docs * self.bands  # at most: only kept docs' band keys are indexed
        rng = np.random.default_rng(seed)
        self._a = rng.integers(1, 1 << 63, size=(num_perm, 1), dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self._b = rng.integers(0, 1 << 63, size=(num_perm, 1), dtype=np.uint64) * np.uint64(2)
        self._band_mix = rng.integers(1, 1 << 63, size=self.rows, dtype=np.uint64) | np.uint64(1)
        self._band_salt = rng.integers(0, 1 << 63, size=self.bands, dtype=np.uint64)  # one key space for all bands
        self._index: KeyIndex | None = None  # band key -> number of the kept doc (opened by the first match)
        # The kept docs' signatures (num_perm x 4 bytes each) go to an unlinked temporary file: the page cache holds
        # them, not this process, and only candidates are read back.
        self._spill: Any = None
        self._row_bytes = num_perm * 4
        self._kept = 0

    def sketch(self, docs: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        """(signatures, band keys) of ``docs``: (docs, num_perm) uint32 and (docs, bands) uint64."""
        return self.sketch_words(*text_word_hashes([" ".join(doc) for doc in docs]))

    def sketch_words(self, flat: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, ...]:
        """``sketch`` of docs given as word hashes, concatenated, and word counts (``text_word_hashes``), with the
        stable argsort of the band keys (doc-major): sorting needs no state, so it is done here, not in ``match``."""
        if not len(lengths):
            empty = np.empty(0, dtype=np.intp)
            return np.empty((0, self.num_perm), dtype=np.uint32), np.empty((0, self.bands), dtype=np.uint64), empty
        hashes, doc, _ = flat_ngram_hashes(flat, lengths, self.ngram, whole_short=True)
        signatures = self.signatures(hashes >> np.uint64(32), doc, len(lengths))
        bands = signatures[:, : self.bands * self.rows].reshape(len(lengths), self.bands, self.rows)
        keys = (bands.astype(np.uint64) * self._band_mix).sum(axis=2) ^ self._band_salt
        return signatures, keys, np.argsort(keys.ravel(), kind="stable")

    def match(self, sketch: tuple[np.ndarray, ...], rows: list[int]) -> list[Match | None]:
        if not rows:
            return []
        if self._index is None:
            self._index = KeyIndex(expected_keys=self._expected_keys)
            self._spill = tempfile.TemporaryFile(prefix="rlaif-dedup-")  # noqa: SIM115 - lives as long as the index
        picked = np.asarray(rows, dtype=np.intp)
        signatures, keys = sketch[0][picked], sketch[1][picked].ravel()  # keys doc-major
        # The picked docs' keys in key order: the batch's stable order, filtered, renumbered (= their stable argsort).
        position = np.full(len(sketch[1]), -1, dtype=np.intp)
        position[picked] = np.arange(len(picked))
        doc = position[sketch[2] // self.bands]
        entries = doc[doc >= 0] * self.bands + sketch[2][doc >= 0] % self.bands
        earlier, within = self._earlier_candidates(keys, entries), self._batch_candidates(keys, entries)
        best: list[tuple[int, int, int] | None] = [None] * len(rows)  # (agreeing permutations, earlier?, which)
        for i in sorted(earlier.keys() | within.keys()):
            # Candidates in a fixed order (earlier batches by number, then this batch's by position), so that a
            # tie goes to the first kept doc whatever order the index returned them in.
            scored = [
                (np.count_nonzero(self._signature(c) == signatures[i]), 1, c) for c in sorted(earlier.get(i, ()))
            ]
            scored += [
                (np.count_nonzero(signatures[j] == signatures[i]), 0, j) for j in within.get(i, ()) if best[j] is None
            ]  # only docs kept so far count
            top = max(scored, key=lambda entry: entry[0], default=(0, 0, 0))
            if top[0] >= self.threshold * self.num_perm:
                best[i] = top
        kept = [i for i, found in enumerate(best) if found is None]
        number = {i: self._kept + rank for rank, i in enumerate(kept)}  # this batch's kept docs, numbered in order
        self._add(np.asarray(kept, dtype=np.int64), keys, entries, signatures)
        return [
            None if found is None else (found[2] if found[1] else number[found[2]], found[0] / self.num_perm)
            for found in best
        ]

    def signatures(self, x: np.ndarray, doc: np.ndarray, count: int) -> np.ndarray:
        """(count, num_perm) uint32 MinHash signatures; ``x`` (32-bit n-gram hashes) sorted by ``doc``, every doc
        holding at least one."""
        out = np.empty((count, self.num_perm), dtype=np.uint32)
        starts = np.searchsorted(doc, np.arange(count + 1))
        first = 0
        while first < count:
            # As many whole docs as fit in one block (at least one). Permutations x n-grams: the reduce runs along
            # contiguous memory, several times faster than n-grams x permutations.
            last = int(np.searchsorted(starts, starts[first] + _CHUNK, side="right")) - 1
            last = min(max(first + 1, last), count)
            block = self._a * x[starts[first] : starts[last]]
            block += self._b
            mins = np.minimum.reduceat(block, starts[first:last] - starts[first], axis=1)
            out[first:last] = (mins >> np.uint64(32)).T
            first = last
        return out

    def _earlier_candidates(self, keys: np.ndarray, entries: np.ndarray) -> dict[int, set[int]]:
        """Doc in batch -> kept docs of earlier batches sharing a band key with it (looked up in key order)."""
        found: dict[int, set[int]] = {}
        assert self._index is not None
        at, kept = self._index.lookup(keys[entries])
        for i, number in zip((entries[at] // self.bands).tolist(), kept.tolist(), strict=True):
            found.setdefault(i, set()).add(number)
        return found

    def _batch_candidates(self, keys: np.ndarray, order: np.ndarray) -> dict[int, list[int]]:
        """Doc in batch -> earlier docs of the same batch sharing a band key with it. ``order``: the stable argsort
        of the doc-major ``keys``, so equal keys stay in doc order."""
        ordered = keys[order]
        group = np.concatenate([[0], np.cumsum(ordered[1:] != ordered[:-1])])
        shared = np.flatnonzero(np.bincount(group)[group] > 1)
        members: dict[int, list[int]] = {}
        for g, i in zip(group[shared].tolist(), (order[shared] // self.bands).tolist(), strict=True):
            members.setdefault(g, []).append(i)
        found: dict[int, list[int]] = {}
        for docs in members.values():
            for k in range(1, len(docs)):
                found.setdefault(docs[k], []).extend(docs[:k])
        return found

    def _add(self, kept: np.ndarray, keys: np.ndarray, entries: np.ndarray, signatures: np.ndarray) -> None:
        """Index the kept docs' band keys (``entries``: all keys' sorted order, so theirs need no sort here)."""
        if not len(kept):
            return
        assert self._index is not None
        os.pwrite(self._spill.fileno(), np.ascontiguousarray(signatures[kept]), self._kept * self._row_bytes)
        number = np.full(len(keys) // self.bands, -1, dtype=np.int64)
        number[kept] = np.arange(self._kept, self._kept + len(kept))
        chosen = entries[number[entries // self.bands] >= 0]
        self._index.add(keys[chosen], number[chosen // self.bands].astype(np.uint32), presorted=True)
        self._kept += len(kept)

    def _signature(self, doc: int) -> np.ndarray:
        data = os.pread(self._spill.fileno(), self._row_bytes, doc * self._row_bytes)
        return np.frombuffer(data, dtype=np.uint32)

    def close(self) -> None:
        if self._index is not None:
            self._index.close()
            self._spill.close()
        self._index = self._spill = None


class DatasketchIndex:
    """datasketch's MinHash (sha1 of each n-gram string) and MinHashLSH, with the same bands, verified the same way."""

    def __init__(
        self, threshold: float, num_perm: int, ngram: int, bands: tuple[int, int], seed: int, expected_docs: int = 0
    ) -> None:  # expected_docs: unused, datasketch's index sizes itself
        from datasketch import MinHash, MinHashLSH  # optional dependency: only this backend needs it

        self.threshold, self.num_perm, self.ngram, self.seed = threshold, num_perm, ngram, seed
        self._minhash = MinHash
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, params=bands)
        self._kept: list[Any] = []

    def sketch(self, docs: list[list[str]]) -> list[Any]:
        n = self.ngram
        shingles = [[" ".join(d[i : i + n]).encode() for i in range(max(1, len(d) - n + 1))] for d in docs]
        return list(self._minhash.bulk(shingles, num_perm=self.num_perm, seed=self.seed))

    def match(self, sketches: list[Any], rows: list[int]) -> list[Match | None]:
        matches: list[Match | None] = []
        for sketch in (sketches[row] for row in rows):
            scored = [(sketch.jaccard(self._kept[c]), -c) for c in self._lsh.query(sketch)]
            if scored and (best := max(scored))[0] >= self.threshold:  # a tie goes to the first kept
                matches.append((-best[1], float(best[0])))
                continue
            self._lsh.insert(len(self._kept), sketch, check_duplication=False)
            self._kept.append(sketch)
            matches.append(None)
        return matches

    def close(self) -> None:
        self._kept = []


NEAR_BACKENDS: dict[str, Callable[..., NearIndex]] = {"numpy": NumpyIndex, "datasketch": DatasketchIndex}
# bench/filters.py (20k records, 10% planted): numpy 3-4x the records/s of datasketch, recall 0.96 vs 0.93.
AUTO_BACKEND = "numpy"


# -- steps -----------------------------------------------------------------------------------------------------
def read_texts(records: list[Record], columns: list[str], result: BatchResult) -> list[tuple[int, list[str]]]:
    """(position, its columns as text) for every readable record; the others are quarantined as "not text".
    Column by column, so that only values that are not plain strings pay for a Python call (filters read every
    record of a run: this was a tenth of decontamination's time)."""
    readable, unreadable = text_columns(records, columns)
    result.quarantined += [Quarantined(records[position], "not text", detail) for position, detail in unreadable]
    return readable


def text_columns(
    records: list[Record], columns: list[str]
) -> tuple[list[tuple[int, list[str]]], list[tuple[int, str]]]:
    """``read_texts`` without the quarantine: (position, texts) of readable records, (position, why) of the rest."""
    values = [[record.get(column) for record in records] for column in columns]
    unreadable: dict[int, str] = {}
    for position in sorted({i for column in values for i, value in enumerate(column) if type(value) is not str}):
        try:
            for column in values:
                column[position] = column_text(column[position])
        except TypeError as exc:
            unreadable[position] = f"{columns}: {exc}"
    readable = [(i, list(texts)) for i, texts in enumerate(zip(*values, strict=True)) if i not in unreadable]
    return readable, list(unreadable.items())


class DedupParams(StepParams):
    column: str = Field("prompt", description="text column, or a conversation read as its last message")
    near: bool = Field(True, description="also drop near-duplicates (MinHash-LSH); false: exact duplicates only")
    threshold: float = Field(0.7, gt=0, le=1, description="Jaccard similarity of word n-gram sets")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations")
    ngram: int = Field(3, ge=1, le=32, description="words per shingle")
    backend: str = Field("auto", description="near-duplicate implementation: auto, numpy or datasketch")
    id_column: str | None = Field(None, description="column naming records in _duplicate_of (default: position)")
    seed: int = 1

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if value != "auto" and value not in NEAR_BACKENDS:
            raise ValueError(f"backend must be one of {['auto', *NEAR_BACKENDS]}")
        if value == "datasketch" and importlib.util.find_spec("datasketch") is None:
            raise ValueError("backend datasketch needs the datasketch package (pip install datasketch)")
        return value


@dataclass
class DedupSketch:
    """What ``Dedup.prepare`` makes of a batch, with no state: which records read as text, each one's exact-text key
    (a 64-bit hash of its normalized word sequence) and its near-duplicate sketch (None with ``near: false``)."""

    size: int  # records in the batch
    readable: list[int]  # positions of the records whose column reads as text
    unreadable: list[tuple[int, str]]  # (position, why): quarantined "not text"
    keys: np.ndarray
    near: Any
    ids: list[Any] | None  # the readable records' id_column values (None: no id_column)


@dataclass
class DedupDecision:
    """What ``Dedup.decide`` settled for a batch with its index: which readable records (by their place in
    ``readable``) are dropped, as (reason, ``_duplicate_of``, ``_similarity``); the others are kept."""

    readable: list[int]
    unreadable: list[tuple[int, str]]
    dropped: dict[int, tuple[str, Any, float]]


class Dedup(Step):
    """Drop exact and near-duplicate texts, keeping the first occurrence.

    Inputs: ``column`` (a string, or a list of messages read as its last message's text), and ``id_column`` if set.
    Outputs: the kept records, unchanged. Dropped: "duplicate (exact)" (same text after lowercasing, removing
    punctuation and collapsing whitespace) and "near-duplicate" (estimated Jaccard similarity of word n-gram sets
    >= ``threshold``: MinHash-LSH candidates verified on their signatures). Each dropped record carries
    ``_duplicate_of`` (the kept record's ``id_column`` value, or its 0-based position in this step's input) and
    ``_similarity``. Quarantined: "not text" (the column holds neither a string nor messages).

    State spans batches (the engine calls ``process`` in order on one instance; ``setup`` resets it, ``teardown``
    frees it after the last batch). The step is ``stateful``: a run resumed after a kill redoes it from its first
    batch, so the index is always complete. Memory (tests/steps/test_dedup_scale.py, bench/scale.py): the indexes
    (band keys and exact-text keys -> kept record, rlaif/steps/key_index.py) keep their newest entries in memory
    (up to 12 MB each) and the rest in sorted files, with ~2 bytes per key in memory (Bloom filter and fences): ~45
    bytes per kept record at the defaults beyond the first ~50k, plus 8 bytes for its label (any label that is not
    a position: pickled to a file). Run by the engine, the step knows how many records it reads
    (``StepContext.records_total``) and sizes its Bloom filters for all of them up front, 10 bits per key (~26 bytes
    per record read at the default 20 bands, whether kept or not), instead of growing them 1.5x at a time. The
    MinHash signatures (num_perm*4 bytes per kept record) are in a temporary file too, read back only for
    candidates. Disk: ~750 bytes per kept record, freed when the step ends.
    """

    Params = DedupParams
    inputs = (ParamColumn("column"), ParamColumn("id_column"))
    params: DedupParams
    default_batch_size = 2000  # larger blocks amortize the numpy work; memory stays small
    stateful = True
    prepares = True  # words, hashes and MinHash signatures need no index: an executor may compute them elsewhere

    def __init__(self, name: str, params: StepParams, base_dir: Path) -> None:
        super().__init__(name, params, base_dir)
        self._exact: KeyIndex | None = None  # normalized-text hash -> number of the kept record it copies
        self._labels: LabelStore | None = None  # number of a kept record -> its label
        self._index: NearIndex | None = None
        # Sketches batches for prepare(), on any instance (set up or not): sketching needs no state, so this index
        # never matches anything and opens no file.
        self._sketcher: NearIndex | None = None
        self._seen = 0

    def setup(self, ctx: StepContext) -> None:
        self.teardown()  # the indexes are made by the first decide: a copy that only prepares or finishes has none

    def _reset(self, expected: int) -> None:
        """Fresh indexes, sized for ``expected`` records (0: unknown, grown as they fill)."""
        self.teardown()
        p = self.params
        self._exact, self._labels = (
            KeyIndex(memory_keys=key_index.MEMORY_KEYS // 4, expected_keys=expected),
            LabelStore(integers=not p.id_column),
        )
        if p.near:
            self._index = self._near_index(expected)

    def _near_index(self, expected: int = 0) -> NearIndex:
        p = self.params
        backend = AUTO_BACKEND if p.backend == "auto" else p.backend
        bands = optimal_bands(p.threshold, p.num_perm)
        return NEAR_BACKENDS[backend](p.threshold, p.num_perm, p.ngram, bands, p.seed, expected_docs=expected)

    def teardown(self) -> None:
        # The indexes of a million records are tens of MB of memory and hundreds on disk: freed when the step ends.
        for state in (self._exact, self._labels, self._index):
            if state is not None:
                state.close()
        self._exact, self._labels, self._index, self._seen = None, None, None, 0

    def prepare(self, records: list[Record]) -> DedupSketch:
        readable, unreadable = text_columns(records, [self.params.column])
        index = None
        if self.params.near:
            if self._sketcher is None:
                self._sketcher = self._near_index()
            index = self._sketcher
        # Words found and hashed in numpy over the whole batch (no Python string per word): exact keys hash each doc's
        # word sequence, our MinHash takes the same word hashes; datasketch hashes n-gram strings of the words.
        texts = [texts[0] for _, texts in readable]
        flat, lengths = text_word_hashes(texts)
        keys = sequence_hashes(flat, lengths)
        if index is None:
            near = None
        elif isinstance(index, NumpyIndex):
            near = index.sketch_words(flat, lengths)
        else:
            near = index.sketch([tokens(text) for text in texts])
        id_column = self.params.id_column
        ids = [records[position].get(id_column) for position, _ in readable] if id_column else None
        return DedupSketch(len(records), [position for position, _ in readable], unreadable, keys, near, ids)

    def decide(self, prepared: DedupSketch, ctx: StepContext) -> DedupDecision:
        if self._exact is None or self._labels is None:
            self._reset(ctx.records_total or 0)
        exact, labels, sketch = self._exact, self._labels, prepared
        assert exact is not None and labels is not None
        keys = sketch.keys
        key_list = keys.tolist()  # Python ints, for the dicts below
        # Exact copies first (of an earlier batch's text, or of an earlier doc in this one); the rest go to the index.
        at, copied = exact.lookup(keys)
        copy_of = dict(zip(at.tolist(), copied.tolist(), strict=True))  # doc -> kept record its text copies
        first_in_batch: dict[int, int] = {}
        fresh = [i for i, key in enumerate(key_list) if i not in copy_of and first_in_batch.setdefault(key, i) == i]
        matches: list[Match | None] = [None] * len(fresh)
        if self._index is not None:
            matches = self._index.match(sketch.near, fresh)
        near = dict(zip(fresh, matches, strict=True))  # fresh doc -> its near match, or None: kept
        # Kept records are numbered in the order kept, as the near index numbers them.
        kept = [i for i in fresh if near[i] is None]
        number = {i: len(labels) + rank for rank, i in enumerate(kept)}
        ids = sketch.ids
        labels.append([ids[i] if ids is not None else self._seen + sketch.readable[i] for i in kept])
        target = {i: number[i] if near[i] is None else near[i][0] for i in fresh}  # type: ignore[index]
        # An exact copy points at the kept record, never at a dropped one: a near-duplicate's text at its match.
        exact.add(keys[fresh], np.array([target[i] for i in fresh], dtype=np.uint32))
        duplicate_of: dict[int, int] = {}  # dropped doc -> the kept record's number
        for i, key in enumerate(key_list):
            if i in near and near[i] is None:
                continue
            duplicate_of[i] = copy_of[i] if i in copy_of else target[first_in_batch[key]]
        label_of = dict(zip(duplicate_of, labels.get(list(duplicate_of.values())), strict=True))
        dropped: dict[int, tuple[str, Any, float]] = {}
        for i in duplicate_of:
            match = near.get(i)
            if match is not None:
                dropped[i] = ("near-duplicate", label_of[i], round(match[1], 4))
            else:
                dropped[i] = ("duplicate (exact)", label_of[i], 1.0)
        self._seen += sketch.size
        return DedupDecision(sketch.readable, sketch.unreadable, dropped)

    def finish(self, records: list[Record], decided: DedupDecision) -> BatchResult:
        result = BatchResult()
        result.quarantined += [Quarantined(records[p], "not text", why) for p, why in decided.unreadable]
        for i, position in enumerate(decided.readable):
            record = records[position]
            if i in decided.dropped:
                reason, label, similarity = decided.dropped[i]
                result.dropped.append(({**record, "_duplicate_of": label, "_similarity": similarity}, reason))
            else:
                result.records.append(record)
        return result

    def process(self, records: list[Record], ctx: StepContext) -> BatchResult:
        return self.finish(records, self.decide(self.prepare(records), ctx))
