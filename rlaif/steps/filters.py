"""Record filters: ``length`` (chars, words or tokens; chosen/rejected length ratio), ``judge_filter`` (the verdict
checks of a pairwise judge). The ``expression`` filter lives with its language in ``rlaif.steps.expression``; ``dedup``
in ``rlaif.steps.dedup``; ``decontaminate`` in ``rlaif.steps.decontaminate``.

Each filter gives a verdict per record (``filter_records`` owns the bookkeeping): keep it, drop it with a short stable
reason (the run's stats count drops by reason), or quarantine a record whose fields cannot be read with a reason and a
detail, never silently keeping or dropping it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from rlaif.models import reference_problem
from rlaif.steps.base import BatchResult, Quarantine, Record, Step, StepContext, StepParams, filter_records
from rlaif.steps.dedup import column_text
from rlaif.steps.ngrams import normalize_text

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

    def setup(self, ctx: StepContext) -> None:
        self._load_tokenizer()

    def _load_tokenizer(self) -> None:
        if self.params.tokenizer is not None and self._tokenizer is None:
            from transformers import AutoTokenizer

            from rlaif.models import resolve_model

            self._tokenizer = AutoTokenizer.from_pretrained(resolve_model(self.params.tokenizer))

    def process(self, records: list[Record], ctx: StepContext) -> BatchResult:
        self._load_tokenizer()  # a no-op after setup(); lets the step run outside the engine too
        return filter_records(records, self.verdict)

    def verdict(self, record: Record) -> str | None:
        columns = self._text_columns()
        try:
            texts = [column_text(record.get(c)) for c in columns]
        except TypeError as exc:
            raise Quarantine("not text", f"{columns}: {exc}") from exc
        lengths = UNITS[self.params.unit](texts, self._tokenizer)
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
    min_confidence: float | None = Field(None, ge=0, le=1, description="drop rows whose confidence is below this")
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

    def process(self, records: list[Record], ctx: StepContext) -> BatchResult:
        return filter_records(records, self.verdict)

    def verdict(self, record: Record) -> str | None:
        try:
            return next((rule.reason for rule in self.rules() if rule.fails(record, self.params)), None)
        except InvalidField as exc:
            raise Quarantine("invalid judge field", str(exc)) from exc
