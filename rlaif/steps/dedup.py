"""The ``dedup`` step (exact and MinHash-LSH near-duplicates) and the column reading it shares with
``decontaminate``; words and n-gram hashes come from ``rlaif.steps.ngrams``. The
near-duplicate index has two backends, ours in numpy and datasketch's, picked by ``backend`` (``auto``: the faster,
as measured by bench/filters.py).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydantic import Field, field_validator

from rlaif.steps.base import BatchResult, ParamColumn, Quarantined, Record, Step, StepContext, StepParams
from rlaif.steps.ngrams import WordHasher, ngram_hashes, tokens

_CHUNK = 4096  # n-grams per (permutations x n-grams) block: fastest measured (fits in cache)
_MAX_RUN_KEYS = 1 << 22  # band keys per sorted run of the index (48 MB), beyond which runs are no longer merged


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
Match = tuple[Any, float]  # (label of the kept record, estimated Jaccard similarity)


class NearIndex(Protocol):
    """Holds the sketches of kept docs. ``match`` answers, for each doc of a batch in order, which earlier kept doc
    (of this or an earlier batch) it near-duplicates, or None, in which case the doc is kept and indexed."""

    def match(self, docs: list[list[str]], labels: list[Any]) -> list[Match | None]: ...


class NumpyIndex:
    """Our MinHash-LSH, vectorized per batch: all n-grams x all permutations in numpy blocks, min-reduced per doc;
    band keys looked up by binary search in sorted runs of the kept docs' keys (merged as they grow, like an LSM
    tree) instead of a dict per band, so lookups need no Python loop and memory is ~12 bytes per band and doc.
    Candidates are verified on the signatures; only docs with a candidate reach Python code.

    The permutations are multiply-add-shift hashes h(x) = ((a*x + b) mod 2^64) >> 32 of the 32-bit n-gram hash x
    (Dietzfelbinger: 2-independent, like (a*x+b) mod p, but the mod is free in uint64 and, since the shift is
    monotone, it is applied after the min). bench/filters.py times it against mod 2^61-1."""

    def __init__(self, threshold: float, num_perm: int, ngram: int, bands: tuple[int, int], seed: int) -> None:
        self.threshold, self.num_perm, self.ngram, (self.bands, self.rows) = threshold, num_perm, ngram, bands
        rng = np.random.default_rng(seed)
        self._a = rng.integers(1, 1 << 63, size=(num_perm, 1), dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self._b = rng.integers(0, 1 << 63, size=(num_perm, 1), dtype=np.uint64) * np.uint64(2)
        self._band_mix = rng.integers(1, 1 << 63, size=self.rows, dtype=np.uint64) | np.uint64(1)
        self._band_salt = rng.integers(0, 1 << 63, size=self.bands, dtype=np.uint64)  # one key space for all bands
        self._hasher = WordHasher()
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []  # (sorted band keys, kept-doc number of each)
        self._filter = KeyFilter(1 << 16)
        # The kept docs' signatures (num_perm x 4 bytes each, most of the index) go to an unlinked temporary file:
        # the page cache holds them, not this process, and only candidates are read back.
        self._spill = tempfile.TemporaryFile(prefix="rlaif-dedup-")  # noqa: SIM115 - lives as long as the index
        self._row_bytes = num_perm * 4
        self._labels: list[Any] = []

    def match(self, docs: list[list[str]], labels: list[Any]) -> list[Match | None]:
        if not docs:
            return []
        hashes, doc, _ = ngram_hashes(self._hasher, docs, self.ngram, whole_short=True)
        signatures = self.signatures(hashes >> np.uint64(32), doc, len(docs))
        bands = signatures[:, : self.bands * self.rows].reshape(len(docs), self.bands, self.rows)
        keys = ((bands.astype(np.uint64) * self._band_mix).sum(axis=2) ^ self._band_salt).ravel()  # doc-major
        earlier, within = self._earlier_candidates(keys), self._batch_candidates(keys)
        matches: list[Match | None] = [None] * len(docs)
        for i in sorted(earlier.keys() | within.keys()):
            scored = [
                (np.count_nonzero(self._signature(c) == signatures[i]), self._labels[c]) for c in earlier.get(i, ())
            ]
            scored += [
                (np.count_nonzero(signatures[j] == signatures[i]), labels[j])
                for j in within.get(i, ())
                if matches[j] is None
            ]  # only docs kept so far count
            best = max(scored, key=lambda pair: pair[0], default=(0, None))
            if best[0] >= self.threshold * self.num_perm:
                matches[i] = (best[1], best[0] / self.num_perm)
        kept = [i for i, m in enumerate(matches) if m is None]
        self._add(np.asarray(kept, dtype=np.int64), keys, signatures, [labels[i] for i in kept])
        return matches

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

    def _earlier_candidates(self, keys: np.ndarray) -> dict[int, set[int]]:
        """Doc in batch -> kept docs of earlier batches sharing a band key with it."""
        found: dict[int, set[int]] = {}
        # Only keys the filter cannot rule out are searched (the hits and ~1 in 10 others), in key order: numpy
        # narrows each search of ascending keys from the last one's place, so the searches walk each run forward.
        where = np.flatnonzero(self._filter.maybe(keys))
        wanted = keys[where]
        order = np.argsort(wanted)
        ordered = wanted[order]
        for run_keys, run_docs in self._runs:
            low = np.empty_like(order)
            low[order] = np.searchsorted(run_keys, ordered)
            hits = np.flatnonzero(run_keys[low.clip(max=len(run_keys) - 1)] == wanted)  # few: search "right" for them
            counts = np.searchsorted(run_keys, wanted[hits], "right") - low[hits]
            at = np.repeat(low[hits] - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
            docs = np.repeat(where[hits], counts) // self.bands
            for i, kept in zip(docs.tolist(), run_docs[at].tolist(), strict=True):
                found.setdefault(i, set()).add(kept)
        return found

    def _batch_candidates(self, keys: np.ndarray) -> dict[int, list[int]]:
        """Doc in batch -> earlier docs of the same batch sharing a band key with it."""
        order = np.argsort(keys, kind="stable")  # stable on doc-major keys: equal keys stay in doc order
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

    def _add(self, kept: np.ndarray, keys: np.ndarray, signatures: np.ndarray, labels: list[Any]) -> None:
        if not len(kept):
            return
        first = len(self._labels)
        os.pwrite(self._spill.fileno(), np.ascontiguousarray(signatures[kept]), first * self._row_bytes)
        self._labels.extend(labels)
        run_keys = keys.reshape(-1, self.bands)[kept].ravel()
        run_docs = np.repeat(np.arange(first, first + len(kept), dtype=np.uint32), self.bands)
        order = np.argsort(run_keys, kind="stable")
        self._runs.append((run_keys[order], run_docs[order]))
        self._filter.add(run_keys)
        if self._filter.full():  # rebuilt from every key kept, at 8-16 bits per key
            self._filter = KeyFilter(self._filter.count)
            for keys_of_run, _ in self._runs:
                self._filter.add(keys_of_run)
        # Merge while the newest run is at least as long as its predecessor (a binary counter): O(log n) runs to
        # search, and each key is merged O(log n) times in all. A merge holds both runs and their merge at once, so
        # runs stop growing at _MAX_RUN_KEYS: at 1M records the last merge held 2 x 200 MB; now a few runs of
        # 50-100 MB each, searched in key order (cheap), and the transient stays bounded whatever the corpus size.
        while len(self._runs) > 1 and _MAX_RUN_KEYS > len(self._runs[-2][0]) <= len(self._runs[-1][0]):
            self._runs.append(merge_runs(self._runs.pop(-2), self._runs.pop()))

    def _signature(self, doc: int) -> np.ndarray:
        data = os.pread(self._spill.fileno(), self._row_bytes, doc * self._row_bytes)
        return np.frombuffer(data, dtype=np.uint32)


class KeyFilter:
    """One bit per slot of a key's low bits, set for every key of the index: a clear bit proves a key absent, so most
    of a batch's lookups never reach the runs' binary searches (the ones that cost more as the runs grow). At least
    8 bits per key when built for ``capacity`` keys (1 absent key in 9 passes), ``full`` below 4 (1 in 4.5): 0.5 to
    2 bytes per key (16 MB for the 16M keys of 1M records)."""

    def __init__(self, capacity: int) -> None:
        slots = 1 << max(16, int(8 * capacity - 1).bit_length())
        self.bits = np.zeros(slots // 8, dtype=np.uint8)
        self.mask = np.uint64(slots - 1)
        self.count = 0

    def add(self, keys: np.ndarray) -> None:
        slots = keys & self.mask
        np.bitwise_or.at(
            self.bits, (slots >> np.uint64(3)).astype(np.intp), _BIT[(slots & np.uint64(7)).astype(np.intp)]
        )
        self.count += len(keys)

    def maybe(self, keys: np.ndarray) -> np.ndarray:
        slots = keys & self.mask
        return (self.bits[(slots >> np.uint64(3)).astype(np.intp)] & _BIT[(slots & np.uint64(7)).astype(np.intp)]) > 0

    def full(self) -> bool:
        return self.count * 4 > len(self.bits) * 8


_BIT = np.array([1 << k for k in range(8)], dtype=np.uint8)


def merge_runs(older: tuple[np.ndarray, np.ndarray], newer: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, ...]:
    """Two sorted (keys, docs) runs as one, ``older``'s entries first among equal keys (what a stable sort of the
    two, concatenated, gives). Linear: each entry of ``newer`` lands after the ``older`` keys <= it; no argsort, and
    no temporaries but the positions of ``newer`` and a mask (the sort held 3 copies of the merged run at once)."""
    (k1, d1), (k2, d2) = older, newer
    at = np.searchsorted(k1, k2, side="right") + np.arange(len(k2))
    rest = np.ones(len(k1) + len(k2), dtype=bool)
    rest[at] = False
    keys, docs = np.empty(len(rest), dtype=k1.dtype), np.empty(len(rest), dtype=d1.dtype)
    keys[at], keys[rest] = k2, k1
    docs[at], docs[rest] = d2, d1
    return keys, docs


class DatasketchIndex:
    """datasketch's MinHash (sha1 of each n-gram string) and MinHashLSH, with the same bands, verified the same way."""

    def __init__(self, threshold: float, num_perm: int, ngram: int, bands: tuple[int, int], seed: int) -> None:
        from datasketch import MinHash, MinHashLSH  # optional dependency: only this backend needs it

        self.threshold, self.num_perm, self.ngram, self.seed = threshold, num_perm, ngram, seed
        self._minhash = MinHash
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, params=bands)
        self._kept: list[Any] = []
        self._labels: list[Any] = []

    def match(self, docs: list[list[str]], labels: list[Any]) -> list[Match | None]:
        n = self.ngram
        shingles = [[" ".join(d[i : i + n]).encode() for i in range(max(1, len(d) - n + 1))] for d in docs]
        matches: list[Match | None] = []
        for sketch, label in zip(
            self._minhash.bulk(shingles, num_perm=self.num_perm, seed=self.seed), labels, strict=True
        ):
            scored = [(sketch.jaccard(self._kept[c]), c) for c in self._lsh.query(sketch)]
            if scored and (best := max(scored))[0] >= self.threshold:
                matches.append((self._labels[best[1]], float(best[0])))
                continue
            self._lsh.insert(len(self._kept), sketch, check_duplication=False)
            self._kept.append(sketch)
            self._labels.append(label)
            matches.append(None)
        return matches


NEAR_BACKENDS: dict[str, Callable[..., NearIndex]] = {"numpy": NumpyIndex, "datasketch": DatasketchIndex}
# bench/filters.py (20k records, 10% planted): numpy 3-4x the records/s of datasketch, recall 0.96 vs 0.93.
AUTO_BACKEND = "numpy"


# -- steps -----------------------------------------------------------------------------------------------------
def read_texts(records: list[Record], columns: list[str], result: BatchResult) -> list[tuple[int, list[str]]]:
    """(position, its columns as text) for every readable record; the others are quarantined as "not text".
    Column by column, so that only values that are not plain strings pay for a Python call (filters read every
    record of a run: this was a tenth of decontamination's time)."""
    values = [[record.get(column) for record in records] for column in columns]
    unreadable = set()
    for position in sorted({i for column in values for i, value in enumerate(column) if type(value) is not str}):
        try:
            for column in values:
                column[position] = column_text(column[position])
        except TypeError as exc:
            result.quarantined.append(Quarantined(records[position], "not text", f"{columns}: {exc}"))
            unreadable.add(position)
    return [(i, list(texts)) for i, texts in enumerate(zip(*values, strict=True)) if i not in unreadable]


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
    batch, so the index is always complete. Memory (tests/steps/test_dedup_scale.py, bench/scale.py): ~410 bytes
    per kept record at the defaults — its 20 band keys in the index's sorted runs (12 bytes each) and their filter
    bits, its label and its exact-text key — plus num_perm*4 bytes of MinHash signature per kept record in a
    temporary file (disk and page cache, not the process), read back only for candidates.
    """

    Params = DedupParams
    inputs = (ParamColumn("column"), ParamColumn("id_column"))
    params: DedupParams
    default_batch_size = 2000  # larger blocks amortize the numpy work; memory stays small
    stateful = True

    def __init__(self, name: str, params: StepParams, base_dir: Path) -> None:
        super().__init__(name, params, base_dir)
        self._exact: dict[bytes, Any] | None = None  # normalized-text digest -> label; built on first use
        self._index: NearIndex | None = None
        self._seen = 0

    def setup(self, ctx: StepContext) -> None:
        self._reset()

    def _reset(self) -> None:
        p = self.params
        self._exact, self._seen, self._index = {}, 0, None
        if p.near:
            backend = AUTO_BACKEND if p.backend == "auto" else p.backend
            bands = optimal_bands(p.threshold, p.num_perm)
            self._index = NEAR_BACKENDS[backend](p.threshold, p.num_perm, p.ngram, bands, p.seed)

    def teardown(self) -> None:
        # The index of a million records is hundreds of MB: freed once the step's batches are done.
        self._exact, self._index, self._seen = None, None, 0

    def process(self, records: list[Record], ctx: StepContext) -> BatchResult:
        if self._exact is None:
            self._reset()
        assert self._exact is not None
        result = BatchResult()
        readable = read_texts(records, [self.params.column], result)
        words = [tokens(texts[0]) for _, texts in readable]
        keys = [hashlib.blake2b(" ".join(doc).encode(), digest_size=16).digest() for doc in words]
        labels = [
            records[p].get(self.params.id_column) if self.params.id_column else self._seen + p for p, _ in readable
        ]
        # Exact duplicates first (of earlier batches, or of an earlier doc in this one); the rest go to the index.
        first_in_batch: dict[bytes, int] = {}
        fresh = [i for i, key in enumerate(keys) if key not in self._exact and first_in_batch.setdefault(key, i) == i]
        matches: list[Match | None] = [None] * len(fresh)
        if self._index is not None:
            matches = self._index.match([words[i] for i in fresh], [labels[i] for i in fresh])
        near = dict(zip(fresh, matches, strict=True))  # fresh doc -> its near match, or None: kept
        for key in keys:  # exact copies point at the kept record, never at a dropped one
            if key not in self._exact:
                match = near.get(first_in_batch[key])
                self._exact[key] = match[0] if match else labels[first_in_batch[key]]
        for i, (position, _) in enumerate(readable):
            record, match = records[position], near.get(i)
            if match is not None:
                result.dropped.append(
                    ({**record, "_duplicate_of": match[0], "_similarity": round(match[1], 4)}, "near-duplicate")
                )
            elif i in near:
                result.records.append(record)
            else:
                dropped = {**record, "_duplicate_of": self._exact[keys[i]], "_similarity": 1.0}
                result.dropped.append((dropped, "duplicate (exact)"))
        self._seen += len(records)
        return result
