"""The ``decontaminate`` filter: drop records that share a word n-gram with a benchmark item (or hold a short item
whole), so a model is not trained on the test. Words are normalized as ``rlaif.steps.ngrams.tokens`` does; the
benchmark's n-gram hashes sit in a sorted lookup table built once, and a batch's n-grams are hashed and looked up in
numpy (``text_word_hashes``): Python runs per contaminated record, never per word or n-gram.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from rlaif.steps.base import BatchResult, ParamColumn, Record, Step, StepContext, StepParams
from rlaif.steps.dedup import column_text, read_texts
from rlaif.steps.item_files import ITEM_READERS as BENCHMARK_READERS
from rlaif.steps.ngrams import HashLookup, flat_ngram_hashes, locate_windows, text_word_hashes, tokens, window_sums

log = logging.getLogger(__name__)


def item_texts(item: dict[str, Any], fields: list[str] | None) -> list[str]:
    """The text fields of a benchmark item: ``fields`` or every string (and conversation) value it holds."""
    texts = []
    for key in fields if fields is not None else list(item):
        value = item.get(key)
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            texts.extend(value)  # e.g. multiple-choice options
            continue
        try:
            texts.append(column_text(value))
        except TypeError:
            continue  # numbers, labels, ids: not text a model could have memorized as a passage
    return texts


class DecontaminateParams(StepParams):
    benchmarks: list[str] = Field(min_length=1, description="benchmark files (.jsonl, .parquet, .txt lines)")
    benchmark_columns: list[str] | None = Field(None, description="item fields to index (default: all text)")
    column: str | list[str] = Field("prompt", description="column(s) checked; conversations read as last message")
    ngram: int = Field(13, ge=1, le=64, description="words per n-gram")
    min_words: int = Field(8, ge=1, le=64, description="shortest item (under ngram words) matched inside a text")

    @field_validator("benchmarks")
    @classmethod
    def _known_format(cls, paths: list[str]) -> list[str]:
        for path in paths:
            if Path(path).suffix.lower() not in BENCHMARK_READERS:
                raise ValueError(f"{path}: benchmark files must end in one of {sorted(BENCHMARK_READERS)}")
        return paths


Match = tuple[int, int, int, int, int]  # (doc, start word, words, benchmark file, item)


class Decontaminate(Step):
    """Drop records that share a word n-gram (13 by default, after normalization) with a benchmark item, or hold a
    shorter benchmark item whole.

    Inputs: ``column`` (one or several; strings or conversations). References: ``benchmarks`` files, resolved
    against the pipeline file, hashed into the cache key. Outputs: the clean records, unchanged. Dropped:
    "contaminated", carrying ``_contamination`` = {benchmark, item (0-based), column, ngram (the first matching
    n-gram, else the short item matched, normalized), matches (how many of the record's n-grams and short items
    occur in the benchmarks)}; a summary per batch is logged. Quarantined: "not text".
    An item field shorter than ``ngram`` words is indexed whole, as one "gram" of all its words: with ``min_words``
    or more words (8: GPT-3's floor for its n-gram size against spurious collisions, Brown et al. 2020, app. C) it
    matches any text that contains its word sequence; a shorter one (an answer "72", an option "Paris") only a text
    equal to it, since inside longer texts such words are ordinary language. A text shorter than ``ngram`` words has
    no n-gram: only the short items can flag it.
    """

    Params = DecontaminateParams
    inputs = (ParamColumn("column"),)
    params: DecontaminateParams
    default_batch_size = 2000

    def __init__(self, name: str, params: StepParams, base_dir: Path) -> None:
        super().__init__(name, params, base_dir)
        self._grams: HashLookup | None = None  # benchmark n-gram hashes -> (file, item), built in setup()
        self._whole = self._starts = HashLookup(np.zeros(0, dtype=np.uint64), np.zeros((0, 3), dtype=np.int64))
        self._lengths: list[int] = []  # word counts of the short items matched inside texts
        self.contaminated: Counter[str] = Counter()

    def columns(self) -> list[str]:
        return [self.params.column] if isinstance(self.params.column, str) else list(self.params.column)

    def files(self) -> list[Path]:
        return [self.resolve(p) for p in self.params.benchmarks]

    def output_columns(self, available: set[str] | None) -> set[str] | None:
        # Planning hook, so `rlaif validate` reports a misspelt benchmark field (checked on each file's first item).
        for path in self.files():
            first = next(BENCHMARK_READERS[path.suffix.lower()](path), None) if path.is_file() else None
            if first is not None and (missing := set(self.params.benchmark_columns or ()) - set(first)):
                raise ValueError(
                    f"{path.name}: the first item has no field(s) {sorted(missing)}; it has {sorted(first)}"
                )
        return super().output_columns(available)

    def setup(self, ctx: StepContext) -> None:
        self.contaminated.clear()
        self._build_index()

    def teardown(self) -> None:
        self._grams = None  # rebuilt by process() if it is called again

    def _build_index(self) -> None:
        n, min_words = self.params.ngram, self.params.min_words
        hashes, sources = [np.zeros(0, dtype=np.uint64)], [np.zeros((0, 2), dtype=np.int64)]
        whole, owners = [np.zeros(0, dtype=np.uint64)], [np.zeros((0, 3), dtype=np.int64)]
        starts, lengths_inside = [np.zeros(0, dtype=np.uint64)], set()
        for number, path in enumerate(self.files()):
            texts, items = self._read_benchmark(path)
            flat, lengths = text_word_hashes(texts)
            grams, doc, _ = flat_ngram_hashes(flat, lengths, n, whole_short=False)
            hashes.append(grams)
            sources.append(np.stack([np.full(len(doc), number), items[doc]], axis=1))
            # Items under n words are indexed whole (their whole_short hash); those of min_words or more are also
            # keyed by their first min_words words, the candidates _short_matches checks inside longer texts.
            first_word = np.cumsum(lengths) - lengths
            short = np.flatnonzero((lengths > 0) & (lengths < n))
            whole.append(span_hashes(flat, first_word[short], lengths[short], n))
            owners.append(np.stack([np.full(len(short), number), items[short], lengths[short]], axis=1))
            inside = short[lengths[short] >= min_words]
            starts.append(span_hashes(flat, first_word[inside], np.full(len(inside), min_words), n))
            lengths_inside.update(lengths[inside].tolist())
            if not len(grams) and not len(short):
                log.warning("%s: %s has no text: it can match nothing", self.name, path)
        self._grams = HashLookup(np.concatenate(hashes), np.concatenate(sources))
        self._whole = HashLookup(np.concatenate(whole), np.concatenate(owners))
        self._starts = HashLookup(np.concatenate(starts), np.zeros((sum(map(len, starts)), 0), dtype=np.int64))
        self._lengths = sorted(lengths_inside)
        log.info(
            "%s: %d distinct %d-grams and %d shorter items from %d benchmark file(s)",
            self.name,
            len(self._grams),
            n,
            len(self._whole),
            len(self.files()),
        )

    def _read_benchmark(self, path: Path) -> tuple[list[str], np.ndarray]:
        """Every text field of every item, and the item each came from. A named field that no item has is an error:
        a typo must not silently turn decontamination off."""
        texts, items, seen = [], [], set()
        for item, row in enumerate(BENCHMARK_READERS[path.suffix.lower()](path)):
            seen.update(row)
            for text in item_texts(row, self.params.benchmark_columns):
                texts.append(text)
                items.append(item)
        if missing := set(self.params.benchmark_columns or ()) - seen:
            raise ValueError(f"{path}: no item has the field(s) {sorted(missing)}; its fields: {sorted(seen)}")
        return texts, np.asarray(items, dtype=np.int64)

    def process(self, records: list[Record], ctx: StepContext) -> BatchResult:
        if self._grams is None:
            self._build_index()
        assert self._grams is not None
        result, columns, n = BatchResult(), self.columns(), self.params.ngram
        readable = read_texts(records, columns, result)
        texts = [text for _, record_texts in readable for text in record_texts]  # record i, column j -> doc i*len+j
        flat, lengths = text_word_hashes(texts)
        # The min_words-word window hashes come out of the same passes, only when some item needs them.
        widths = [n, self.params.min_words] if len(self._starts) else [n]
        sums = window_sums(flat, widths)
        rows, sources = self._grams.find(sums[n])
        doc, start, fits = locate_windows(rows, lengths, n)  # only for the hits: most windows never reach Python
        doc, start, sources = doc[fits], start[fits], sources[fits]
        # Per record, its first match (rows ascend: the earliest n-gram; else the first short item) and the count.
        hit, at, counts = np.unique(doc // len(columns), return_index=True, return_counts=True)
        first: dict[int, Match] = {
            i: (int(doc[k]), int(start[k]), n, *sources[k].tolist())
            for i, k in zip(hit.tolist(), at.tolist(), strict=True)
        }
        matches = Counter(dict(zip(hit.tolist(), counts.tolist(), strict=True)))
        for match in self._short_matches(flat, lengths, sums.get(self.params.min_words)):
            first.setdefault(match[0] // len(columns), match)
            matches[match[0] // len(columns)] += 1
        result.records = [records[position] for i, (position, _) in enumerate(readable) if i not in first]
        batch: Counter[str] = Counter()
        for i, (d, s, length, file, item) in sorted(first.items()):
            position = readable[i][0]
            report = {
                "benchmark": self.params.benchmarks[file],
                "item": item,
                "column": columns[d % len(columns)],
                "ngram": " ".join(tokens(texts[d])[s : s + length]),
                "matches": matches[i],
            }
            result.dropped.append(({**records[position], "_contamination": report}, "contaminated"))
            batch[report["benchmark"]] += 1
        if batch:
            self.contaminated.update(batch)
            log.info(
                "%s: %d contaminated record(s) in this batch %s; so far %s",
                self.name,
                sum(batch.values()),
                dict(batch),
                dict(self.contaminated),
            )
        return result

    def _short_matches(self, flat: np.ndarray, lengths: np.ndarray, prefixes: np.ndarray | None) -> list[Match]:
        """Short benchmark items that a doc equals (any length) or contains (``min_words`` or more words): docs
        given as their word hashes (``flat``) and word counts, ``prefixes`` the hashes of their min_words windows."""
        if not len(self._whole):
            return []
        n = self.params.ngram
        short = np.flatnonzero((lengths > 0) & (lengths < n))
        spans = [np.stack([short, np.zeros_like(short), lengths[short]], axis=1)]
        if prefixes is not None:
            # Candidates: windows whose first min_words words begin such an item (rare), checked at each item length.
            at, _ = self._starts.find(prefixes)
            doc, start, fits = locate_windows(at, lengths, self.params.min_words)
            doc, start = doc[fits], start[fits]
            for length in self._lengths:
                fits = start + length <= lengths[doc]
                spans.append(np.stack([doc[fits], start[fits], np.full(np.count_nonzero(fits), length)], axis=1))
        # Each span once (a short doc is also a candidate of itself), in the order found.
        candidates = np.concatenate(spans)
        if not len(candidates):
            return []
        candidates = candidates[np.sort(np.unique(candidates, axis=0, return_index=True)[1])]
        d, s, length = candidates.T
        rows, found = self._whole.find(span_hashes(flat, (np.cumsum(lengths) - lengths)[d] + s, length, n))
        return [
            (*candidates[r].tolist(), f, item)
            for r, (f, item, words) in zip(rows.tolist(), found.tolist(), strict=True)
            if words == length[r]
        ]


def span_hashes(flat: np.ndarray, first: np.ndarray, lengths: np.ndarray, n: int) -> np.ndarray:
    """The hash of each span of ``lengths`` words (under ``n``) of ``flat`` from word ``first``: the whole_short
    hash that ``flat_ngram_hashes`` gives a doc of just those words, so an item and its occurrence in a text agree."""
    within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return flat_ngram_hashes(flat[np.repeat(first, lengths) + within], lengths, n, whole_short=True)[0]
