"""Human preference data as a pipeline source, and ``mix``: AI and human pairs combined with weights.

``human_preferences`` reads a published preference dataset (local files or a Hub id, through the ``load`` source's
readers) and converts each record with a converter from ``rlaif.formats.human``; malformed records are quarantined
under the converter's reason with the raw record beside it. ``mix`` samples a weighted, seeded mixture of several
sources.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from rlaif.formats.human import (
    CONVERTERS,
    HELPSTEER2_ATTRIBUTES,
    PREFERENCE_COLUMNS,
    PROVENANCE,
    FormatError,
    convert,
    converter_options,
    detect_format,
    group_by_prompt,
)
from rlaif.steps.base import BatchResult, ParamColumn, Quarantined, Record, Step, StepContext, StepParams
from rlaif.steps.sources import Load, LoadParams

log = logging.getLogger(__name__)
OPTIONS = ("strategy", "score", "weights", "min_score_ratio")  # adapter options, passed on when set


class HumanPreferencesParams(StepParams):
    format: str = Field("auto", description=f"one of {sorted(CONVERTERS)}, or auto (named by the first record's keys)")
    path: str | None = Field(None, description="local file or glob (jsonl, json, parquet, csv)")
    dataset: str | None = Field(None, description="Hub dataset id, streamed with datasets")
    split: str = "train"
    config: str | None = None
    limit: int | None = Field(None, ge=1, description="read at most this many raw records")
    strategy: Literal["best_vs_random", "best_vs_worst"] | None = Field(None, description="ultrafeedback")
    score: Literal["mean_aspects", "overall"] | None = Field(None, description="ultrafeedback")
    weights: dict[str, float] | None = Field(None, description="helpsteer2: attribute -> weight")
    min_score_ratio: float | None = Field(None, gt=0, description="shp: the SHP authors suggest 2")

    @model_validator(mode="after")
    def _check(self) -> HumanPreferencesParams:
        if (self.path is None) == (self.dataset is None):
            raise ValueError("give exactly one of path (a local file) or dataset (a Hub id)")
        if self.format != "auto" and self.format not in CONVERTERS:
            raise ValueError(f"format must be auto or one of {sorted(CONVERTERS)}, got {self.format!r}")
        if self.format != "auto":
            check_options(self.format, self.options())
        if self.weights and (unknown := set(self.weights) - set(HELPSTEER2_ATTRIBUTES)):
            raise ValueError(f"weights: unknown attribute(s) {sorted(unknown)}; known: {HELPSTEER2_ATTRIBUTES}")
        return self

    def options(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in OPTIONS if getattr(self, k) is not None}


def check_options(fmt: str, options: dict[str, Any]) -> None:
    """An option the format ignores is an error: a filter the user believes applied must not silently do nothing."""
    if unknown := set(options) - set(converter_options(fmt)):
        takes = ", ".join(converter_options(fmt)) or "no options"
        raise ValueError(f"format {fmt!r} does not use {sorted(unknown)}; it takes {takes}")


class HumanPreferences(Step):
    """Source: a human preference dataset (HH-RLHF, UltraFeedback raw or binarized, HelpSteer2, SHP, or generic TRL
    rows) as TRL conversational preference rows.

    Outputs: ``prompt`` (messages), ``chosen``/``rejected`` ([one assistant message]), ``source`` (the format name),
    and the format's provenance columns (``rlaif.formats.human.PROVENANCE``). Malformed records are quarantined with
    the converter's reason, the converter's detail and the raw record as JSON in ``raw_output``.

    HelpSteer2 rows are paired by grouping CONSECUTIVE rows with the same prompt, which is how the dataset is laid out
    (two responses per prompt, adjacent): it streams with bounded memory, from a file or the Hub. A prompt whose rows
    are not adjacent (or cut by ``limit``) yields one-row groups, quarantined as "prompt has one response".
    ``records_in`` counts raw rows: a pair made of two rows counts both (``inputs_emitted``).
    """

    Params = HumanPreferencesParams
    is_source = True
    outputs = PREFERENCE_COLUMNS
    params: HumanPreferencesParams

    def __init__(self, name: str, params: HumanPreferencesParams, base_dir: Path) -> None:
        super().__init__(name, params, base_dir)
        # Reading is the `load` source's job (file formats, globs, Hub streaming, bad JSON lines quarantined).
        origin = dict(path=params.path, dataset=params.dataset, split=params.split, config=params.config)
        self._reader = Load(name, LoadParams(**origin, limit=params.limit), base_dir)

    def files(self) -> list[Path]:
        return self._reader.files()

    def output_columns(self, available: set[str] | None) -> set[str] | None:
        fmt = self.params.format
        if fmt == "auto":
            if self.params.dataset is not None or not all(f.is_file() for f in self.files()):
                return None  # the format is known only once the first record is read (and a Hub is not asked now)
            fmt = self._format(next((r for b in self._reader.read(StepContext()) for r in b.records), None))
        return set(PREFERENCE_COLUMNS) | set(PROVENANCE[fmt])

    def _format(self, first: Record | None) -> str:
        if self.params.format != "auto":
            return self.params.format
        detected = detect_format(first) if first is not None else None
        if detected is None:
            keys = sorted(first) if first is not None else "no records"
            raise ValueError(
                f"cannot tell the preference format from the first record ({keys}); "
                f"set format: one of {sorted(CONVERTERS)}"
            )
        check_options(detected, self.params.options())
        return detected

    def read(self, ctx: StepContext) -> Iterator[BatchResult]:
        stream: Iterator[Record | Quarantined] = (
            item for batch in self._reader.read(ctx) for item in [*batch.records, *batch.quarantined]
        )
        head: list[Record | Quarantined] = []
        for item in stream:  # up to the first parseable record: `auto` names the format from it
            head.append(item)
            if not isinstance(item, Quarantined):
                break
        first = next((i for i in head if not isinstance(i, Quarantined)), None)
        fmt = self._format(first) if first is not None else self.params.format
        items: Iterator[Any] = itertools.chain(head, stream)
        if fmt == "helpsteer2":
            items = group_by_prompt(items)
        while chunk := list(itertools.islice(items, 1000)):
            result = BatchResult(inputs_emitted=0)
            for item in chunk:
                self._convert(fmt, item, result)
            yield result

    def _convert(self, fmt: str, item: Record | Quarantined, result: BatchResult) -> None:
        if isinstance(item, Quarantined):  # a line the reader could not parse
            result.quarantined.append(item)
            return
        raw_rows = item["rows"] if fmt == "helpsteer2" else [item]
        try:
            rows = convert(fmt, item, **self.params.options())
        except FormatError as err:
            for raw in raw_rows:  # each raw row is quarantined, so the counts match the file
                result.quarantined.append(Quarantined(raw, err.reason, err.detail, _dump(raw)))
            return
        result.records += rows
        result.inputs_emitted = (result.inputs_emitted or 0) + len(raw_rows)


def _dump(record: Record) -> str:
    return json.dumps(record, ensure_ascii=False, default=str)


# -- mix --------------------------------------------------------------------------------------------------------
class MixParams(StepParams):
    weights: dict[str, float] = Field(min_length=1, description="value of `column` -> share of the output")
    total: int | None = Field(None, ge=1, description="output size; default: the largest mix the data allows")
    column: str = Field("source", description="the column naming where each record comes from")
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> MixParams:
        if any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ValueError("weights must be >= 0 with a positive sum")
        return self


class Mix(Step):
    """Join: a weighted, seeded sample of several sources, e.g. ``from: [ai_pairs, human]`` with
    ``weights: {ai: 0.7, hh_rlhf: 0.3}``. Inputs: ``source`` (or ``column``). Outputs: the sampled records, unchanged.

    A join receives its upstreams as one union stream, so the origin of a record must be IN the record: weights are
    keyed by the value of its ``source`` column. ``human_preferences`` sets ``source`` to the format name; AI
    pipelines should set it too (e.g. ``make_pairs``), or add it with a plugin step. Records whose source has no weight
    are dropped as "source not in mix weights".

    Per source, the quota is ``total * weight / sum(weights)`` (largest-remainder rounding; a source with fewer records
    gives all it has). Without ``total``, the mix is the largest whose composition matches the weights: the source
    scarcest relative to its weight is kept whole. Which records fill a quota is decided by a hash of (``seed``,
    source, position within the source): deterministic, and independent of the other sources. Records not selected
    are dropped as "not sampled (mix)". Exact quotas need every record at once, so the step takes its whole input as
    one batch (``default_batch_size``); a smaller ``batch_size`` would apply the quotas per batch.
    """

    Params = MixParams
    inputs = (ParamColumn("column"),)
    params: MixParams
    default_batch_size = 2**31 - 1

    def process(self, records: list[Record], ctx: StepContext) -> BatchResult:
        result = BatchResult()
        positions: dict[str, list[int]] = {}
        for index, record in enumerate(records):
            value = record.get(self.params.column)
            if isinstance(value, str) and value in self.params.weights:
                positions.setdefault(value, []).append(index)
        quotas = mix_quotas({s: len(p) for s, p in positions.items()}, self.params.weights, self.params.total)
        keep: set[int] = set()
        for source, indices in positions.items():
            ranked = sorted(range(len(indices)), key=lambda i, s=source: _rank(self.params.seed, s, i))
            keep.update(indices[i] for i in ranked[: quotas.get(source, 0)])
        for index, record in enumerate(records):
            value = record.get(self.params.column)
            if index in keep:
                result.records.append(record)
            elif isinstance(value, str) and value in self.params.weights:
                result.dropped.append((record, "not sampled (mix)"))
            else:
                result.dropped.append((record, "source not in mix weights"))
        return result


def mix_quotas(counts: dict[str, int], weights: dict[str, float], total: int | None) -> dict[str, int]:
    """How many records of each source to keep (see ``Mix``)."""
    active = {s: w for s, w in weights.items() if w > 0 and counts.get(s, 0) > 0}
    if missing := sorted(s for s, w in weights.items() if w > 0 and s not in active):
        log.warning("mix: no records with source %s; mixing the others only", missing)
    if not active:
        return {}
    weight_sum = sum(active.values())
    if total is None:  # epsilon: count * sum / w * w / sum must not round down below count
        total = math.floor(min(counts[s] * weight_sum / w for s, w in active.items()) + 1e-9)
    targets = {s: total * w / weight_sum for s, w in active.items()}
    quotas = {s: math.floor(t + 1e-9) for s, t in targets.items()}
    by_remainder = sorted(active, key=lambda s: (quotas[s] - targets[s], s))
    for source in by_remainder[: total - sum(quotas.values())]:
        quotas[source] += 1
    for source, quota in quotas.items():
        if quota > counts[source]:
            log.warning("mix: source %r has %d records for a quota of %d", source, counts[source], quota)
            quotas[source] = counts[source]
    return quotas


def _rank(seed: int, source: str, position: int) -> bytes:
    return hashlib.sha256(f"{seed}/{source}/{position}".encode()).digest()
