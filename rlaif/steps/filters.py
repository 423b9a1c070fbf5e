"""Record filters: ``length`` (chars, words or tokens; chosen/rejected length ratio), ``judge_filter`` (the verdict
checks of a pairwise judge) and ``decontaminate`` (word n-gram overlap with benchmark files). The ``expression``
filter lives with its language in ``rlaif.steps.expression``; ``dedup`` in ``rlaif.steps.dedup``.

Each filter keeps a record or drops it with a short stable reason (the run's stats count drops by reason); a record
whose fields cannot be read is quarantined with a reason and a detail, never silently kept or dropped.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, field_validator, model_validator

from rlaif.models import reference_problem
from rlaif.steps.base import BatchResult, Quarantined, Record, Runtime, Step, StepParams
from rlaif.steps.dedup import HashLookup, WordHasher, column_text, ngram_hashes, normalize_text, read_texts, tokens

log = logging.getLogger(__name__)


# -- length ----------------------------------------------------------------------------------------------------
def _chars(texts: list[str], tokenizer: Any) -> list[int]:
    return [len(t) for t in texts]


def _words(texts: list[str], tokenizer: Any) -> list[int]:
    return [len(t.split()) for t in texts]


def _tokens(texts: list[str], tokenizer: Any) -> list[int]:
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


UNITS: dict[str, Callable[[list[str], Any], list[int]]] = {"chars": _chars, "words": _words, "tokens": _tokens}


class LengthParams(StepParams):
    column: str = Field("chosen", description="column bounded by min/max (text, or messages: the last one)")
    unit: str = Field("chars", description="chars, words or tokens (tokens needs `tokenizer`)")
    min: int | None = Field(None, ge=0, description="drop shorter texts (reason 'too short')")
    max: int | None = Field(None, ge=0, description="drop longer texts (reason 'too long')")
    max_ratio: float | None = Field(None, gt=0, description="drop rows with len(chosen)/len(rejected) above this")
    min_ratio: float | None = Field(None, gt=0, description="drop rows with len(chosen)/len(rejected) below this")
    chosen: str = "chosen"
    rejected: str = "rejected"
    tokenizer: str | None = Field(None, description="model reference whose tokenizer counts tokens")

    @field_validator("unit")
    @classmethod
    def _known_unit(cls, value: str) -> str:
        if value not in UNITS:
            raise ValueError(f"unit must be one of {list(UNITS)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> LengthParams:
        if all(v is None for v in (self.min, self.max, self.min_ratio, self.max_ratio)):
            raise ValueError("give at least one bound: min, max, min_ratio or max_ratio")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        if self.min_ratio is not None and self.max_ratio is not None and self.min_ratio > self.max_ratio:
            raise ValueError(f"min_ratio ({self.min_ratio}) is greater than max_ratio ({self.max_ratio})")
        if (self.unit == "tokens") != (self.tokenizer is not None):
            raise ValueError("unit: tokens needs `tokenizer:` (a model reference), and only it uses one")
        if self.tokenizer is not None and (problem := reference_problem(self.tokenizer)):
            raise ValueError(f"tokenizer: {problem}")
        return self


class Length(Step):
    """Drop texts outside [min, max] and preference rows whose chosen/rejected length ratio is outside
    [min_ratio, max_ratio] (length bias is the best-known judge bias), in chars, words or tokens.

    Inputs: ``column`` when min/max are set; ``chosen`` and ``rejected`` when a ratio is set (strings or
    conversations, read as their last message). Outputs: kept records, unchanged. Dropped: "too short", "too long",
    "length ratio" (an empty rejected makes the ratio infinite). Quarantined: "not text". The tokenizer loads in
    ``setup()``, never during validation.
    """

    Params = LengthParams
    params: LengthParams

    def __init__(self, name: str, params: StepParams, base_dir: Path) -> None:
        super().__init__(name, params, base_dir)
        self._tokenizer: Any = None

    def _bounds_column(self) -> bool:
        return self.params.min is not None or self.params.max is not None

    def _ratio(self) -> bool:
        return self.params.min_ratio is not None or self.params.max_ratio is not None

    def _text_columns(self) -> list[str]:
        p = self.params
        return ([p.column] if self._bounds_column() else []) + ([p.chosen, p.rejected] if self._ratio() else [])

    def required_columns(self) -> set[str]:
        return set(self._text_columns())

    def setup(self, runtime: Runtime) -> None:
        super().setup(runtime)
        self._load_tokenizer()

    def _load_tokenizer(self) -> None:
        if self.params.tokenizer is not None and self._tokenizer is None:
            from transformers import AutoTokenizer

            from rlaif.models import resolve_model

            self._tokenizer = AutoTokenizer.from_pretrained(resolve_model(self.params.tokenizer))

    def process(self, records: list[Record]) -> BatchResult:
        self._load_tokenizer()  # a no-op after setup(); lets the step run outside the engine too
        result, columns = BatchResult(), self._text_columns()
        readable: list[tuple[Record, list[str]]] = []
        for record in records:
            try:
                readable.append((record, [column_text(record.get(c)) for c in columns]))
            except TypeError as exc:
                result.quarantined.append(Quarantined(record, "not text", f"{columns}: {exc}"))
        flat = UNITS[self.params.unit]([t for _, texts in readable for t in texts], self._tokenizer)
        width = len(columns)
        for i, (record, _) in enumerate(readable):
            reason = self._reason(flat[i * width : (i + 1) * width])
            if reason is None:
                result.records.append(record)
            else:
                result.dropped.append((record, reason))
        return result

    def _reason(self, lengths: list[int]) -> str | None:
        p = self.params
        if self._bounds_column():
            length, lengths = lengths[0], lengths[1:]
            if p.min is not None and length < p.min:
                return "too short"
            if p.max is not None and length > p.max:
                return "too long"
        if self._ratio():
            chosen, rejected = lengths
            ratio = chosen / rejected if rejected else (math.inf if chosen else 1.0)
            if (p.max_ratio is not None and ratio > p.max_ratio) or (p.min_ratio is not None and ratio < p.min_ratio):
                return "length ratio"
        return None


# -- judge_filter ----------------------------------------------------------------------------------------------
class InvalidField(ValueError):
    """A judge field an enabled check needs is missing or of the wrong type: the record is quarantined."""


def _field(record: Record, column: str, kinds: tuple[type, ...], expected: str) -> Any:
    value = record.get(column)
    if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
        raise InvalidField(f"{column}: expected {expected}, got {value!r}")
    return value


def _number(record: Record, column: str) -> float:
    value = float(_field(record, column, (int, float), "a number"))
    if math.isnan(value):
        raise InvalidField(f"{column}: expected a number, got NaN")
    return value


@dataclass(frozen=True)
class JudgeRule:
    """One check: on when ``enabled(params)``; ``columns(params)`` are then required; ``fails`` means drop."""

    reason: str
    enabled: Callable[[JudgeFilterParams], bool]
    columns: Callable[[JudgeFilterParams], set[str]]
    fails: Callable[[Record, JudgeFilterParams], bool]


def _identical(record: Record, p: JudgeFilterParams) -> bool:
    try:
        chosen, rejected = column_text(record.get(p.chosen)), column_text(record.get(p.rejected))
    except TypeError as exc:
        raise InvalidField(f"{p.chosen}/{p.rejected}: {exc}") from exc
    return normalize_text(chosen) == normalize_text(rejected)


# Checked in this order; a record is dropped with the reason of the first rule it fails.
JUDGE_RULES: dict[str, JudgeRule] = {
    "consistent": JudgeRule(
        "position-inconsistent",
        lambda p: p.drop_inconsistent,
        lambda p: {p.consistent},
        lambda r, p: not _field(r, p.consistent, (bool,), "true or false"),
    ),
    "tie": JudgeRule(
        "tie",
        lambda p: p.drop_ties,
        lambda p: {p.preference},
        lambda r, p: str(_field(r, p.preference, (str, int, float), "a verdict")).strip().lower() == "tie",
    ),
    "confidence": JudgeRule(
        "low confidence",
        lambda p: p.min_confidence is not None,
        lambda p: {p.confidence},
        lambda r, p: _number(r, p.confidence) < p.min_confidence,
    ),
    "margin": JudgeRule(
        "low margin",
        lambda p: p.min_margin is not None,
        lambda p: {p.score_chosen, p.score_rejected},
        lambda r, p: abs(_number(r, p.score_chosen) - _number(r, p.score_rejected)) < p.min_margin,
    ),
    "identical": JudgeRule(
        "chosen == rejected", lambda p: p.drop_identical, lambda p: {p.chosen, p.rejected}, _identical
    ),
}


class JudgeFilterParams(StepParams):
    drop_inconsistent: bool = Field(False, description="drop verdicts that flip when the responses are swapped")
    drop_ties: bool = Field(False, description="drop rows whose preference is 'tie'")
    min_confidence: float | None = Field(None, description="drop rows whose confidence is below this")
    min_margin: float | None = Field(None, ge=0, description="drop rows with |score_chosen - score_rejected| below")
    drop_identical: bool = Field(False, description="drop rows whose chosen and rejected texts are the same")
    preference: str = "preference"
    confidence: str = "confidence"
    consistent: str = "consistent"
    chosen: str = "chosen"
    rejected: str = "rejected"
    score_chosen: str = "chosen_score"
    score_rejected: str = "rejected_score"

    @model_validator(mode="after")
    def _some_check(self) -> JudgeFilterParams:
        if not any(rule.enabled(self) for rule in JUDGE_RULES.values()):
            raise ValueError(
                "enable at least one check: drop_inconsistent, drop_ties, min_confidence, min_margin or drop_identical"
            )
        return self


class JudgeFilter(Step):
    """Drop unreliable pairwise-judge verdicts. Every check is off unless its parameter is set:

    - ``drop_inconsistent``: ``consistent`` is false (the verdict changed when the two responses were swapped)
      -> "position-inconsistent";
    - ``drop_ties``: ``preference`` is "tie" -> "tie";
    - ``min_confidence``: ``confidence`` < min_confidence -> "low confidence";
    - ``min_margin``: |``score_chosen`` - ``score_rejected``| < min_margin -> "low margin";
    - ``drop_identical``: ``chosen`` and ``rejected`` are the same text after normalization -> "chosen == rejected".

    Inputs: only the columns of the enabled checks (names are parameters). Outputs: kept records, unchanged.
    Quarantined: "invalid judge field" when an enabled check's field is missing or has the wrong type (e.g. a
    confidence of None), since such a verdict can be neither trusted nor rejected on this evidence.
    """

    Params = JudgeFilterParams
    params: JudgeFilterParams

    def rules(self) -> list[JudgeRule]:
        return [rule for rule in JUDGE_RULES.values() if rule.enabled(self.params)]

    def required_columns(self) -> set[str]:
        return set().union(*(rule.columns(self.params) for rule in self.rules()))

    def process(self, records: list[Record]) -> BatchResult:
        result, rules = BatchResult(), self.rules()
        for record in records:
            try:
                reason = next((rule.reason for rule in rules if rule.fails(record, self.params)), None)
            except InvalidField as exc:
                result.quarantined.append(Quarantined(record, "invalid judge field", str(exc)))
                continue
            if reason is None:
                result.records.append(record)
            else:
                result.dropped.append((record, reason))
        return result


# -- decontaminate ---------------------------------------------------------------------------------------------
def _jsonl_items(path: Path) -> Iterator[dict[str, Any]]:
    with path.open() as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: invalid JSON ({exc})") from None
            yield item if isinstance(item, dict) else {"text": item}


def _parquet_items(path: Path) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=1000):
        yield from batch.to_pylist()


def _txt_items(path: Path) -> Iterator[dict[str, Any]]:
    with path.open() as handle:
        yield from ({"text": line} for line in handle if line.strip())


BENCHMARK_READERS: dict[str, Callable[[Path], Iterator[dict[str, Any]]]] = {
    ".jsonl": _jsonl_items,
    ".parquet": _parquet_items,
    ".txt": _txt_items,
}


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
    params: DecontaminateParams
    default_batch_size = 2000

    def __init__(self, name: str, params: StepParams, base_dir: Path) -> None:
        super().__init__(name, params, base_dir)
        self._hasher = WordHasher()  # deterministic, so an index built in one process is valid in another
        self._grams: HashLookup | None = None  # benchmark n-gram hashes -> (file, item), built in setup()
        self._whole = self._starts = HashLookup(np.zeros(0, dtype=np.uint64), np.zeros((0, 3), dtype=np.int64))
        self._lengths: list[int] = []  # word counts of the short items matched inside texts
        self.contaminated: Counter[str] = Counter()

    def columns(self) -> list[str]:
        return [self.params.column] if isinstance(self.params.column, str) else list(self.params.column)

    def required_columns(self) -> set[str]:
        return set(self.columns())

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

    def setup(self, runtime: Runtime) -> None:
        super().setup(runtime)
        self.contaminated.clear()
        self._build_index()

    def _build_index(self) -> None:
        n, hashes, sources = self.params.ngram, [np.zeros(0, dtype=np.uint64)], [np.zeros((0, 2), dtype=np.int64)]
        short: list[list[str]] = []
        owners: list[tuple[int, int, int]] = []  # (file, item, words) of each short text
        for number, path in enumerate(self.files()):
            docs, items = self._read_benchmark(path)
            grams, doc, _ = ngram_hashes(self._hasher, docs, n, whole_short=False)
            hashes.append(grams)
            sources.append(np.stack([np.full(len(doc), number), np.asarray(items, dtype=np.int64)[doc]], axis=1))
            found = [
                (words, (number, item, len(words)))
                for words, item in zip(docs, items, strict=True)
                if 0 < len(words) < n
            ]
            short += [words for words, _ in found]
            owners += [owner for _, owner in found]
            if not len(grams) and not found:
                log.warning("%s: %s has no text: it can match nothing", self.name, path)
        self._grams = HashLookup(np.concatenate(hashes), np.concatenate(sources))
        # A short text's whole_short hash is the hash of its word span wherever it occurs (ngram_hashes' prefix).
        owned = np.asarray(owners, dtype=np.int64).reshape(-1, 3)
        self._whole = HashLookup(ngram_hashes(self._hasher, short, n, whole_short=True)[0], owned)
        # Items matched inside texts, keyed by their first min_words words: the candidates _short_matches checks.
        inside = [words for words in short if len(words) >= self.params.min_words]
        starts = ngram_hashes(self._hasher, [words[: self.params.min_words] for words in inside], n, True)[0]
        self._starts = HashLookup(starts, np.zeros((len(starts), 0), dtype=np.int64))
        self._lengths = sorted({len(words) for words in inside})
        log.info(
            "%s: %d distinct %d-grams and %d shorter items from %d benchmark file(s)",
            self.name,
            len(self._grams),
            n,
            len(self._whole),
            len(self.files()),
        )

    def _read_benchmark(self, path: Path) -> tuple[list[list[str]], list[int]]:
        """Words of every text field of every item, and the item each came from. A named field that no item has is
        an error: a typo must not silently turn decontamination off."""
        docs, items, seen = [], [], set()
        for item, row in enumerate(BENCHMARK_READERS[path.suffix.lower()](path)):
            seen.update(row)
            for text in item_texts(row, self.params.benchmark_columns):
                docs.append(tokens(text))
                items.append(item)
        if missing := set(self.params.benchmark_columns or ()) - seen:
            raise ValueError(f"{path}: no item has the field(s) {sorted(missing)}; its fields: {sorted(seen)}")
        return docs, items

    def process(self, records: list[Record]) -> BatchResult:
        if self._grams is None:
            self._build_index()
        assert self._grams is not None
        result, columns, n = BatchResult(), self.columns(), self.params.ngram
        readable = read_texts(records, columns, result)
        docs = [tokens(text) for _, texts in readable for text in texts]  # record i, column j -> doc i*len+j
        # The min_words-word window hashes come out of the same pass, only when some item needs them.
        prefix = self.params.min_words if len(self._starts) else 0
        hashes, doc, start, *windows = ngram_hashes(self._hasher, docs, n, whole_short=False, prefix=prefix)
        rows, sources = self._grams.find(hashes)
        # Per record, its first match (rows ascend: the earliest n-gram; else the first short item) and the count.
        # Python runs per contaminated record, never per matching n-gram.
        hit, at, counts = np.unique(doc[rows] // len(columns), return_index=True, return_counts=True)
        first: dict[int, Match] = {
            i: (int(doc[rows[k]]), int(start[rows[k]]), n, *sources[k].tolist())
            for i, k in zip(hit.tolist(), at.tolist(), strict=True)
        }
        matches = Counter(dict(zip(hit.tolist(), counts.tolist(), strict=True)))
        for match in self._short_matches(docs, *windows):
            first.setdefault(match[0] // len(columns), match)
            matches[match[0] // len(columns)] += 1
        batch: Counter[str] = Counter()
        for i, (position, _) in enumerate(readable):
            if i not in first:
                result.records.append(records[position])
                continue
            d, s, length, file, item = first[i]
            report = {
                "benchmark": self.params.benchmarks[file],
                "item": item,
                "column": columns[d % len(columns)],
                "ngram": " ".join(docs[d][s : s + length]),
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

    def _short_matches(self, docs: list[list[str]], *windows: np.ndarray) -> list[Match]:
        """Short benchmark items that a doc equals (any length) or contains (``min_words`` or more words)."""
        if not len(self._whole):
            return []
        n = self.params.ngram
        spans = {(d, 0, len(words)): None for d, words in enumerate(docs) if 0 < len(words) < n}
        if windows:
            # Candidates: windows whose first min_words words begin such an item (rare), checked at each item length.
            at, _ = self._starts.find(windows[0])
            for d, s in zip(windows[1][at].tolist(), windows[2][at].tolist(), strict=True):
                spans.update(((d, s, length), None) for length in self._lengths if s + length <= len(docs[d]))
        spans_list = list(spans)
        texts = [docs[d][s : s + length] for d, s, length in spans_list]
        rows, found = self._whole.find(ngram_hashes(self._hasher, texts, n, whole_short=True)[0])
        return [
            (*spans_list[r], f, item)
            for r, (f, item, length) in zip(rows.tolist(), found.tolist(), strict=True)
            if length == spans_list[r][2]
        ]
