"""Preference pairs from scored or judged responses. Pair strategies are registered functions (DESIGN principle 10):
``strategy: best_vs_worst`` by name, or a dotted path ``my_pkg.my_strategy`` to a function with the same signature.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from pydantic import Field, field_validator, model_validator

from rlaif.formats import preference_row, prompt_text
from rlaif.registry import UnknownComponent, resolve_component
from rlaif.steps.base import BatchResult, Quarantined, Record, Step, StepContext, StepParams

# Judge provenance carried onto each pair when the input has it.
PROVENANCE = ("judge_model", "principle", "principles", "confidence")
PREFERENCES = ("A", "B", "tie")
SOFT_LABEL = "p_a"  # a judge's P(responses[0] better): constitutional_judge, pairwise_judge with logprobs


@dataclass(frozen=True)
class Candidate:
    """One scored response: its position in ``responses``, text, score and the model that wrote it."""

    index: int
    text: str
    score: float
    model: str | None = None
    judged: bool = False  # chosen by the pairwise judge's verdict, not by its score (make_pairs' hybrid mode)


class ScoreError(ValueError):
    """A record whose scores do not line up with its responses (a data error: the record is quarantined)."""


def candidates(record: Record, score_column: str, responses_column: str = "responses") -> list[Candidate]:
    """The record's responses with a usable score, in response order. Responses without a score (None, NaN: e.g. a
    rating the judge could not parse) are left out; scores that do not line up with the responses are an error."""
    responses = record.get(responses_column)
    scores = record.get(score_column)
    if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
        raise ScoreError(f"{responses_column!r} is not a list of strings")
    if not isinstance(scores, list) or len(scores) != len(responses):
        got = len(scores) if isinstance(scores, list) else type(scores).__name__
        raise ScoreError(f"{score_column!r} must hold one score per response: {len(responses)} responses, got {got}")
    models = record.get("response_models")
    models = models if isinstance(models, list) and len(models) == len(responses) else [None] * len(responses)
    found = []
    for i, (text, score, model) in enumerate(zip(responses, scores, models, strict=True)):
        if score is None or (isinstance(score, float) and math.isnan(score)):
            continue
        if isinstance(score, bool) or not isinstance(score, int | float):
            raise ScoreError(f"{score_column}[{i}] is {score!r}, not a number")
        found.append(Candidate(i, text, float(score), model))
    return found


def soft_label(record: Record) -> float | None:
    """The record's ``p_a`` as a float (None when missing or null); anything but a probability is a ScoreError."""
    value = record.get(SOFT_LABEL)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ScoreError(f"{SOFT_LABEL!r} is {value!r}; expected a probability in [0, 1] (P(responses[0] better))")
    return float(value)


def _score_at(scores: Any, index: int) -> float:
    """The score at ``index`` as a float, NaN when there is none (unverifiable, unparsed, missing)."""
    value = scores[index] if isinstance(scores, list) and index < len(scores) else None
    usable = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if usable else math.nan


def ranked(found: list[Candidate]) -> list[Candidate]:
    """Best first; equal scores keep response order, so rankings are deterministic."""
    return sorted(found, key=lambda c: (-c.score, c.index))


def _valid(chosen: Candidate, rejected: Candidate, min_margin: float) -> bool:
    # A zero-margin pair teaches nothing (and is a tie), whatever min_margin says.
    margin = chosen.score - rejected.score
    return margin > 0 and margin >= min_margin


PairStrategy = Callable[[list[Candidate], float, random.Random], list[tuple[Candidate, Candidate]]]


def best_vs_worst(found: list[Candidate], min_margin: float, rng: random.Random) -> list[tuple[Candidate, Candidate]]:
    """The highest- against the lowest-scored response (UltraFeedback-style binarization, Tunstall et al. 2023)."""
    order = ranked(found)
    return [(order[0], order[-1])] if _valid(order[0], order[-1], min_margin) else []


def best_vs_random(found: list[Candidate], min_margin: float, rng: random.Random) -> list[tuple[Candidate, Candidate]]:
    """The best against a random other response that is at least ``min_margin`` lower (Zephyr's binarization)."""
    order = ranked(found)
    others = [c for c in order[1:] if _valid(order[0], c, min_margin)]
    return [(order[0], rng.choice(others))] if others else []


def all_pairs(found: list[Candidate], min_margin: float, rng: random.Random) -> list[tuple[Candidate, Candidate]]:
    """Every ordered pair whose margin is at least ``min_margin`` (InstructGPT-style K-choose-2 comparisons)."""
    order = ranked(found)
    return [(a, b) for i, a in enumerate(order) for b in order[i + 1 :] if _valid(a, b, min_margin)]


PAIR_STRATEGIES: dict[str, str] = {
    "best_vs_worst": "rlaif.steps.pairs:best_vs_worst",
    "best_vs_random": "rlaif.steps.pairs:best_vs_random",
    "all_pairs": "rlaif.steps.pairs:all_pairs",
}


def pair_strategy(name: str) -> PairStrategy:
    strategy = resolve_component(PAIR_STRATEGIES, name, "pair strategy")
    if not callable(strategy):
        raise UnknownComponent(f"pair strategy {name!r} is not a function")
    return strategy


class MakePairsParams(StepParams):
    strategy: str = Field("best_vs_worst", description=f"one of {list(PAIR_STRATEGIES)} or a dotted path")
    score_column: str | None = Field(None, description="rewards or ratings; unset: pairwise verdicts (preference)")
    preference_column: str = "preference"
    min_margin: float = Field(0.0, ge=0, description="score difference a pair needs (and always > 0)")
    seed: int = Field(0, description="for best_vs_random")
    prompt_column: str = "prompt"
    responses_column: str = "responses"
    keep_columns: list[str] = Field(default_factory=list, description="input columns copied onto every pair")
    hybrid: bool = Field(
        False, description="with score_column: where the scores give no pair, the judge's preference_column decides"
    )

    @field_validator("strategy")
    @classmethod
    def _known(cls, value: str) -> str:
        try:
            pair_strategy(value)
        except UnknownComponent as exc:
            raise ValueError(str(exc)) from exc
        return value

    @model_validator(mode="after")
    def _verdicts_have_one_pair(self) -> MakePairsParams:
        if self.score_column is None and self.strategy != "best_vs_worst":
            raise ValueError(
                "a strategy needs scores: set score_column (rewards or ratings); pairwise verdicts "
                "(preference) give exactly one pair, responses[0] vs responses[1]"
            )
        if self.hybrid and self.score_column is None:
            raise ValueError(
                "hybrid needs score_column (the verifier's scores) beside preference_column (the judge's)"
            )
        return self


class MakePairs(Step):
    """Preference pairs in TRL's conversational preference form.

    From scores (``score_column``: ``rewards`` from reward_model_score or ``ratings`` from rating_judge): the
    ``strategy`` picks (chosen, rejected) among responses with a score; a pair needs margin > 0 and >= ``min_margin``.
    From pairwise verdicts (no ``score_column``): ``preference`` "A" prefers responses[0], "B" responses[1].
    Unscored responses (a None score: a verifier could not check them, a rating the judge could not parse) are never
    chosen nor rejected. Hybrid (``hybrid: true``, with both columns): the scores (e.g. a verifier's ``rewards``)
    decide by ``strategy`` wherever they give a pair; where they do not (equal or unverifiable scores, or a margin
    below ``min_margin``) the pairwise judge's ``preference`` decides responses[0] vs responses[1]; ``decided_by``
    ("scores" | "judge") says which, and a judged pair carries the two responses' scores (None when unscored).
    Inputs: ``prompt``, ``responses``, ``response_models`` (optional), the score or preference column.
    Outputs: ``prompt`` (messages), ``chosen``, ``rejected`` (one assistant message each), ``chosen_model``,
    ``rejected_model``, ``source`` ("ai"); with scores also ``chosen_score``, ``rejected_score``, ``margin``;
    ``judge_model``, ``principle``, ``principles``, ``confidence`` when the input has them; ``keep_columns``.
    Soft labels: where the input has a judge's ``p_a`` (P(responses[0] better)), every pair the judge decided carries
    ``chosen_prob`` = P(chosen better) = ``p_a`` or ``1 - p_a`` (a 0.501 verdict stays a 0.501 pair, not a hard
    one); a pair the scores decided (hybrid) or a row without ``p_a`` gets None, a hard label. ``rlaif train rm|dpo``
    trains on it with ``train.soft_labels: true``. A ``p_a`` that is not a probability quarantines the record.
    TRL's RewardTrainer reads a ``margin`` column as the Llama 2 margin term of its loss; ``rlaif train rm`` drops
    the column (plain Bradley-Terry) unless ``train.use_margin: true``. Dropped: "fewer than 2 responses", "no pair
    above margin", "tie". Quarantined: "invalid scores", "invalid preference". One input may give several pairs
    (``all_pairs``): ``inputs_emitted`` counts inputs.
    """

    Params = MakePairsParams
    params: MakePairsParams

    def required_columns(self) -> set[str]:
        p = self.params
        judged = {p.preference_column} if p.hybrid or p.score_column is None else set()
        scored = {p.score_column} if p.score_column else set()
        return {p.prompt_column, p.responses_column, *judged, *scored, *p.keep_columns}

    def output_columns(self, available: set[str] | None) -> set[str] | None:
        if available is None:
            return None
        columns = {"prompt", "chosen", "rejected", "chosen_model", "rejected_model", "source"}
        columns |= set(self.params.keep_columns)
        if self.params.score_column is not None:
            columns |= {"chosen_score", "rejected_score", "margin"}
        if self.params.hybrid:
            columns.add("decided_by")
        if SOFT_LABEL in available and (self.params.hybrid or self.params.score_column is None):
            columns.add("chosen_prob")
        return columns | (set(PROVENANCE) & available)

    def process(self, records: list[Record], ctx: StepContext) -> BatchResult:
        result = BatchResult(inputs_emitted=0)
        strategy = pair_strategy(self.params.strategy)
        for record in records:
            try:
                pairs = self._scored(record, strategy) if self.params.score_column else self._judged(record)
            except ScoreError as exc:
                label = "invalid scores" if self.params.score_column else "invalid preference"
                result.quarantined.append(Quarantined(record, label, str(exc)))
                continue
            if isinstance(pairs, str) and self.params.hybrid:
                try:
                    pairs = self._hybrid(record)
                except ScoreError as exc:
                    result.quarantined.append(Quarantined(record, "invalid preference", str(exc)))
                    continue
            if isinstance(pairs, str):
                result.dropped.append((record, pairs))
                continue
            result.inputs_emitted = (result.inputs_emitted or 0) + 1
            result.records += [self._row(record, chosen, rejected) for chosen, rejected in pairs]
        return result

    def _scored(self, record: Record, strategy: PairStrategy) -> list[tuple[Candidate, Candidate]] | str:
        assert self.params.score_column is not None
        found = candidates(record, self.params.score_column, self.params.responses_column)
        if len(found) < 2:
            return "fewer than 2 responses"
        # Seeded by the record's content, not its position: the same record gets the same pair in any batch.
        rng = random.Random(
            f"{self.params.seed}/{prompt_text(record[self.params.prompt_column])}/{[c.text for c in found]}"
        )
        return strategy(found, self.params.min_margin, rng) or "no pair above margin"

    def _judged(self, record: Record) -> list[tuple[Candidate, Candidate]] | str:
        responses = record.get(self.params.responses_column)
        verdict = record.get(self.params.preference_column)
        if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
            raise ScoreError(f"{self.params.responses_column!r} is not a list of strings")
        if len(responses) < 2:
            return "fewer than 2 responses"
        if verdict not in PREFERENCES:
            raise ScoreError(f"{self.params.preference_column!r} is {verdict!r}; expected one of {PREFERENCES}")
        if verdict == "tie":
            return "tie"
        soft_label(record)  # a bad p_a is a data error here, before a pair is made
        models = record.get("response_models") or [None, None]
        a, b = (Candidate(i, responses[i], math.nan, models[i] if i < len(models) else None) for i in (0, 1))
        return [(a, b)] if verdict == "A" else [(b, a)]

    def _hybrid(self, record: Record) -> list[tuple[Candidate, Candidate]] | str:
        """The judge's pair where the scores gave none, each side carrying its own score (None when unscored)."""
        assert self.params.score_column is not None
        pairs = self._judged(record)
        if isinstance(pairs, str):
            return pairs
        scores = record.get(self.params.score_column)
        [(chosen, rejected)] = pairs
        return [
            (
                replace(chosen, score=_score_at(scores, chosen.index), judged=True),
                replace(rejected, score=_score_at(scores, rejected.index), judged=True),
            )
        ]

    def _row(self, record: Record, chosen: Candidate, rejected: Candidate) -> Record:
        provenance: dict[str, Any] = {"chosen_model": chosen.model, "rejected_model": rejected.model}
        if self.params.score_column is not None:
            known = not (math.isnan(chosen.score) or math.isnan(rejected.score))
            provenance |= {
                "chosen_score": None if math.isnan(chosen.score) else chosen.score,
                "rejected_score": None if math.isnan(rejected.score) else rejected.score,
                "margin": chosen.score - rejected.score if known else None,
            }
        if self.params.hybrid:
            provenance["decided_by"] = "judge" if chosen.judged else "scores"
        if SOFT_LABEL in record and (self.params.score_column is None or self.params.hybrid):
            p_a = soft_label(record) if self.params.score_column is None or chosen.judged else None
            provenance["chosen_prob"] = None if p_a is None else (p_a if chosen.index == 0 else 1.0 - p_a)
        provenance |= {k: record[k] for k in PROVENANCE if k in record}
        provenance |= {k: record.get(k) for k in self.params.keep_columns}
        return preference_row(record[self.params.prompt_column], chosen.text, rejected.text, **provenance, source="ai")
